"""Training one run of a study and measuring what it reached.

`run_training` trains a config from scratch in a fresh workdir and reads
back the TensorBoard scalars it wrote (`Run`); `train_and_measure` adds
what every study reports of it (`run_row`: steps, epochs, img/s, wall time,
test accuracy and loss) and, given a training split, that split evaluated
as the test set is, with the train-minus-test gaps.
"""

import copy
import dataclasses
import os
import shutil
import time
from typing import Any, Dict, List, Optional, Tuple

from absl import logging
import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import ml_collections
import numpy as np

from vit_flax import errors
from vit_flax.data import datasets
from vit_flax.data import pipeline as pipeline_lib
from vit_flax.models import presets
from vit_flax.training import loop
from vit_flax.training import mesh as mesh_lib
from vit_flax.training import metrics
from vit_flax.training import step as step_lib

# Marks a workdir as made by `fresh_workdir`, so only those are ever deleted.
_MARKER = '.experiment_workdir'


@dataclasses.dataclass(frozen=True)
class Scalar:
  step: int
  wall_time: float  # Seconds since the epoch when it was written.
  value: float


@dataclasses.dataclass
class Run:
  """One finished training: its config, timing, scalars and final params."""

  name: str
  config: ml_collections.ConfigDict
  workdir: str
  start_time: float  # Seconds since the epoch, just before training began.
  wall_seconds: float  # Setup, compilation, training and evaluations.
  scalars: Dict[str, List[Scalar]]
  params: Any
  ema_params: Any = None  # With config.ema_decay: the EMA of `params`.

  @property
  def has_ema(self) -> bool:
    return self.ema_params is not None

  def evaluated_params(self):
    """What a user of the run evaluates: the EMA when there is one."""
    return self.ema_params if self.has_ema else self.params

  def final(self, tag: str) -> float:
    """The last value written under `tag`."""
    if not self.scalars.get(tag):
      raise errors.UserError(
          f'Run {self.name} ({self.workdir}) wrote no {tag!r} scalars; it '
          f'wrote {sorted(self.scalars)}.')
    return self.scalars[tag][-1].value

  def curve(self, tag: str, x: str = 'step') -> Tuple[np.ndarray, np.ndarray]:
    """(x, values) of `tag`; x is 'step' or 'seconds' since the run began."""
    points = self.scalars.get(tag, [])
    if x == 'step':
      xs = [p.step for p in points]
    elif x == 'seconds':
      xs = [p.wall_time - self.start_time for p in points]
    else:
      raise ValueError(f"x must be 'step' or 'seconds', not {x!r}.")
    return np.asarray(xs, float), np.asarray([p.value for p in points])

  def train_img_per_sec(self) -> float:
    """Median training throughput, all devices, after compilation.

    The first logging window holds the compilation, so it is left out when
    there are later ones.
    """
    windows = [p.value for p in self.scalars.get('img_per_sec_per_device', [])]
    if not windows:
      raise errors.UserError(
          f'Run {self.name} wrote no img_per_sec_per_device scalars.')
    steady = windows[1:] or windows
    return float(np.median(steady)) * jax.device_count()


def fresh_workdir(path: str) -> str:
  """Makes `path` an empty directory; deletes only workdirs made here."""
  if os.path.exists(path):
    if os.listdir(path) and not os.path.exists(os.path.join(path, _MARKER)):
      raise errors.UserError(
          f'{path} exists and was not made by an experiment, so it is left '
          'alone; choose another --workdir or delete it yourself.')
    shutil.rmtree(path)
  os.makedirs(path)
  with open(os.path.join(path, _MARKER), 'w') as f:
    f.write('Made by experiments.runs; deleted at the next run here.\n')
  return path


def read_scalars(workdir: str) -> Dict[str, List[Scalar]]:
  """Every scalar in the TensorBoard event files of `workdir`, by tag."""
  scalars = metrics.read_scalar_events(workdir)
  if not scalars:
    raise errors.UserError(f'{workdir} holds no TensorBoard scalars.')
  return {tag: sorted((Scalar(step, wall_time, value)
                       for step, wall_time, value in points),
                      key=lambda p: (p.step, p.wall_time))
          for tag, points in scalars.items()}


def run_training(name: str, config: ml_collections.ConfigDict,
                 workdir: str) -> Run:
  """Trains `config` from scratch in a fresh `workdir` and times it."""
  fresh_workdir(workdir)
  logging.info('%s: training %d steps in %s.', name, config.total_steps,
               workdir)
  start = time.time()
  state = loop.train_and_evaluate(config, workdir)
  wall_seconds = time.time() - start
  logging.info('%s: done in %.0f s.', name, wall_seconds)
  return Run(name=name, config=config, workdir=workdir, start_time=start,
             wall_seconds=wall_seconds, scalars=read_scalars(workdir),
             params=jax.device_get(state.params),
             ema_params=jax.device_get(state.ema_params))


def num_classes_of(config: ml_collections.ConfigDict) -> int:
  return datasets.source_of(config).num_classes


def num_train_examples(config: ml_collections.ConfigDict) -> int:
  return datasets.source_of(config).num_examples(config.pp.train)


def evaluate_split(config: ml_collections.ConfigDict, params,
                   split: str) -> Dict[str, float]:
  """`eval_loss`, `eval_accuracy` of `params` on `split`, as for the test set.

  Cross-entropy without label smoothing, no dropout, evaluation
  preprocessing: on a training split this is the train loss to compare with
  the test loss.
  """
  config = copy.deepcopy(config)
  config.pp.test = split
  pipeline = pipeline_lib.Pipeline(config, jax.process_index(),
                                   jax.process_count())
  model = presets.create_model_for(config, pipeline.num_classes)
  mesh = mesh_lib.create_mesh()
  eval_step = step_lib.make_eval_step(model, pipeline.num_classes, mesh)
  params = jax.device_put(params, NamedSharding(mesh, P()))
  return loop.evaluate(eval_step, params, pipeline,
                       mesh_lib.batch_sharding(mesh))


def run_row(run: Run, train_examples: int) -> Dict[str, Any]:
  """What every study reports of a finished run, keyed as the columns.

  For a run with an EMA of its params, the test accuracy and loss are the
  EMA's (what its best checkpoint and export hold), and `params_accuracy`
  is that of the trained params.
  """
  config = run.config
  prefix = 'eval_ema_' if run.has_ema else 'eval_'
  row = dict(
      steps=config.total_steps,
      epochs=config.total_steps * config.batch / train_examples,
      img_per_sec=run.train_img_per_sec(), wall=run.wall_seconds,
      test_accuracy=run.final(prefix + 'accuracy'),
      test_loss=run.final(prefix + 'loss'))
  if run.has_ema:
    row['params_accuracy'] = run.final('eval_accuracy')
  return row


def train_and_measure(name: str, config: ml_collections.ConfigDict,
                      workdir: str, train_examples: int,
                      train_split: Optional[str] = None
                      ) -> Tuple[Dict[str, Any], Run]:
  """Trains `config`; returns its `run_row` and its run.

  With `train_split`, the row also holds `train_accuracy` and `train_loss`
  (that split evaluated after training exactly as the test set is) and the
  overfitting gaps: `accuracy_gap` (train minus test accuracy) and
  `loss_gap` (test minus train loss), both positive when it overfits.
  """
  run = run_training(name, config, workdir)
  row = run_row(run, train_examples)
  if train_split:
    train_metrics = evaluate_split(config, run.evaluated_params(),
                                   train_split)
    row.update(train_accuracy=train_metrics['eval_accuracy'],
               train_loss=train_metrics['eval_loss'])
    row.update(accuracy_gap=row['train_accuracy'] - row['test_accuracy'],
               loss_gap=row['test_loss'] - row['train_loss'])
  return row, run
