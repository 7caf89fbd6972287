"""Shared helpers of the experiment commands: train, time, measure, report.

A study builds configs, fits each to a step or wall-clock budget
(`with_total_steps`; `calibrate` and `fit_to_seconds`), trains it with
`train.train_and_evaluate` in a fresh workdir (`run_training`,
`train_and_measure`), reads back the TensorBoard scalars the run wrote
(`read_scalars`), measures the model (`count_params`, `flops_per_image`,
`evaluate_split`) and writes what the runs measured as a markdown table
(`report_header`, `markdown_table` with the shared columns) and a plot
(`plot_panels`), stamped with the machine (`host.describe_machine`). A study's
options are a dataclass extending `StudyOptions`, whose fields become its
flags (`define_flags`, `options_from_flags`) and the command written into
its report (`options_command`); `run_command` is the body of its `main`.
"""

import copy
import dataclasses
import datetime
import math
import os
import shlex
import shutil
import sys
import time
import typing
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from absl import app
from absl import flags
from absl import logging
import jax
from jax.sharding import NamedSharding, PartitionSpec as P
from matplotlib.backends import backend_agg
import matplotlib.figure
import ml_collections
import numpy as np

from vit_flax import errors
from vit_flax import host
from vit_flax import input_pipeline
from vit_flax import metrics
from vit_flax import model_configs
from vit_flax import train

# Flags that `define_flags` defines belong to the calling study, so that its
# --help lists them.
flags.disclaim_key_flags()

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
    f.write('Made by experiments.common; deleted at the next run here.\n')
  return path


def with_total_steps(config: ml_collections.ConfigDict, total_steps: int,
                     num_evals: int = 4,
                     num_train_points: int = 40) -> ml_collections.ConfigDict:
  """A copy of `config` stretched or shrunk to `total_steps`.

  The schedule keeps its shape: the warm-up and any step-based curriculum
  scale with the step count. The test set is evaluated about `num_evals`
  times (always at the end), train metrics written about `num_train_points`
  times, and neither checkpoints nor evaluation figures are written (they
  would cost wall time).
  """
  if total_steps < 1:
    raise errors.ConfigError(f'total_steps={total_steps} must be >= 1.')
  config = copy.deepcopy(config)
  scale = total_steps / config.total_steps
  config.warmup_steps = min(int(round(config.warmup_steps * scale)),
                            total_steps - 1)
  pp = config.pp
  if pp.get('curriculum') and pp.get('curriculum_unit', 'steps') == 'steps':
    phases = {}
    for start, size in pp.curriculum:
      phases[int(round(start * scale))] = size  # A later phase wins a tie.
    pp.curriculum = tuple((start, size) for start, size in
                          sorted(phases.items()) if start < total_steps)
  config.total_steps = total_steps
  config.eval_every = max(1, math.ceil(total_steps / max(num_evals, 1)))
  config.progress_every = max(1, total_steps // max(num_train_points, 1))
  config.checkpoint_every = 0
  config.eval_figures = False  # Drawing them would count as training time.
  return config


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
  state = train.train_and_evaluate(config, workdir)
  params = jax.device_get(state.params)
  wall_seconds = time.time() - start
  logging.info('%s: done in %.0f s.', name, wall_seconds)
  return Run(name=name, config=config, workdir=workdir, start_time=start,
             wall_seconds=wall_seconds, scalars=read_scalars(workdir),
             params=params)


@dataclasses.dataclass(frozen=True)
class Timing:
  """What a run of one config costs on this machine, from a short run."""

  # One training step after compilation; for a curriculum, the mean over its
  # phases weighted by their steps.
  step_seconds: float
  overhead_seconds: float  # Data, init and compilations: once per run.
  eval_seconds: float  # One evaluation of the test split.
  # ((image size, seconds per step at that size), ...), by size.
  size_step_seconds: Tuple[Tuple[int, float], ...] = ()

  def steps_within(self, seconds: float, num_evals: int) -> int:
    """Steps whose whole run, `num_evals` evaluations included, fits."""
    left = seconds - self.overhead_seconds - num_evals * self.eval_seconds
    return int(left // self.step_seconds)


def steady_step_seconds(loss: Sequence[Scalar],
                        image_size: Sequence[Scalar]) -> Dict[int, float]:
  """Seconds per training step at each image size, compilations left out.

  `loss` and `image_size` are a run's scalars of those tags, written at the
  end of each logging window. Only windows inside a curriculum phase count:
  the run's first window and the one where a phase begins hold a
  compilation, and the one before a phase begins holds the start of that
  phase's input pipeline (the batches are fetched `config.prefetch` steps
  ahead, fewer than a window). So each phase needs 3 writes (the last
  phase 2). The median over a size's windows is its step time, so that a
  passing stall on a shared machine does not skew it.
  """
  sizes = [int(size_at.value) for size_at in image_size]
  if [p.step for p in image_size] != [p.step for p in loss]:
    raise ValueError('loss and image_size must be written at the same steps.')
  per_step = {}  # size -> [seconds per step of each window]
  for i in range(1, len(loss)):
    size = sizes[i]
    if sizes[i - 1] != size or sizes[min(i + 1, len(loss) - 1)] != size:
      continue
    per_step.setdefault(size, []).append(
        (loss[i].wall_time - loss[i - 1].wall_time) /
        (loss[i].step - loss[i - 1].step))
  return {size: float(np.median(times)) for size, times in per_step.items()}


def calibrate(name: str, config: ml_collections.ConfigDict, workdir: str,
              steps: int, progress_every: Optional[int] = None) -> Timing:
  """Times a `steps`-step run of `config` (one evaluation, at the end).

  Train metrics are written every `progress_every` steps (by default 4
  times). A step-based curriculum shrinks with the run, so the calibration
  trains each image size for the same share of its steps as the full run
  does; every size is timed on its own (`steady_step_seconds`), the step
  time is their mean weighted by the phases' steps, and each phase's
  compilation counts as overhead.
  """
  if steps < 8:
    raise errors.ConfigError(
        f'A calibration of {steps} steps is too short to time a step after '
        'compilation; use at least 8.')
  pp = config.pp
  if pp.get('curriculum') and pp.get('curriculum_unit', 'steps') != 'steps':
    raise errors.ConfigError(
        f'curriculum_unit={pp.curriculum_unit!r}: a calibration can only '
        "time a curriculum in 'steps', whose phases shrink with the run; "
        'give the phase starts in steps.')
  short = with_total_steps(config, steps, num_evals=1, num_train_points=4)
  if progress_every:
    short.progress_every = progress_every
  run = run_training(f'{name} (calibration)', short, workdir)
  size_seconds = steady_step_seconds(run.scalars['loss'],
                                     run.scalars['image_size'])
  phases = input_pipeline.curriculum_phases(
      short.pp.curriculum, 'steps', steps, short.pp.crop, steps_per_epoch=1.0)
  untimed = sorted({p.image_size for p in phases} - set(size_seconds))
  if untimed:
    raise errors.UserError(
        f'The {steps}-step calibration of {name} wrote train metrics every '
        f'{short.progress_every} steps, too rarely to time a step at '
        f'{untimed} px (each phase needs 3 writes, the last phase 2); use '
        'more calibration steps.')
  train_seconds = sum((p.end_step - p.start_step) * size_seconds[p.image_size]
                      for p in phases)
  # The one evaluation runs after the last train scalars are written.
  last = run.scalars['loss'][-1]
  eval_seconds = max(run.scalars['eval_loss'][-1].wall_time - last.wall_time,
                     0.0)
  overhead = max(run.wall_seconds - train_seconds - eval_seconds, 0.0)
  timing = Timing(train_seconds / steps, overhead, eval_seconds,
                  tuple(sorted(size_seconds.items())))
  logging.info('%s: %s', name, timing)
  return timing


def steps_for_budget(name: str, timing: Timing, seconds: float,
                     num_evals: int) -> int:
  """The step count whose run fits `seconds`, or a clear error."""
  steps = timing.steps_within(seconds, num_evals)
  if steps < 10:
    raise errors.UserError(
        f'A {seconds:.0f} s budget leaves {name} {max(steps, 0)} training '
        f'steps: setup and compilation take {timing.overhead_seconds:.0f} s, '
        f'each of {num_evals} evaluations {timing.eval_seconds:.1f} s and a '
        f'step {timing.step_seconds * 1e3:.0f} ms. Give a larger budget or '
        'fewer evaluations.')
  return steps


def fit_to_seconds(name: str, config: ml_collections.ConfigDict,
                   workdir: str, seconds: float, num_evals: int,
                   calibration_steps: int,
                   progress_every: Optional[int] = None
                   ) -> Tuple[ml_collections.ConfigDict, Timing]:
  """`config` with the most steps whose whole run fits `seconds`.

  A `calibration_steps` run in `workdir` times it (`calibrate`); the whole
  schedule (warm-up, decay, curriculum) is then fitted to the step count,
  rather than cut short when the time is up.
  """
  timing = calibrate(name, config, workdir, calibration_steps, progress_every)
  steps = steps_for_budget(name, timing, seconds, num_evals)
  return with_total_steps(config, steps, num_evals), timing


def num_classes_of(config: ml_collections.ConfigDict) -> int:
  return input_pipeline.source_of(config).num_classes


def num_train_examples(config: ml_collections.ConfigDict) -> int:
  return input_pipeline.source_of(config).num_examples(config.pp.train)


def evaluate_split(config: ml_collections.ConfigDict, params,
                   split: str) -> Dict[str, float]:
  """`eval_loss`, `eval_accuracy` of `params` on `split`, as for the test set.

  Cross-entropy without label smoothing, no dropout, evaluation
  preprocessing: on a training split this is the train loss to compare with
  the test loss.
  """
  config = copy.deepcopy(config)
  config.pp.test = split
  pipeline = input_pipeline.Pipeline(config, jax.process_index(),
                                     jax.process_count())
  model = model_configs.create_model_for(config, pipeline.num_classes)
  mesh = train.create_mesh()
  eval_step = train.make_eval_step(model, pipeline.num_classes, mesh)
  params = jax.device_put(params, NamedSharding(mesh, P()))
  return train.evaluate(eval_step, params, pipeline,
                        train.batch_sharding(mesh))


@dataclasses.dataclass(frozen=True)
class Column:
  """A table column: the row key, its header and how to format a value."""

  key: str
  header: str
  fmt: Callable[[Any], str] = str


def markdown_table(rows: Sequence[Mapping[str, Any]],
                   columns: Sequence[Column]) -> str:
  """A GitHub markdown table; a row lacking a key shows an empty cell."""
  lines = ['| ' + ' | '.join(c.header for c in columns) + ' |',
           '|' + '|'.join('---' for _ in columns) + '|']
  for row in rows:
    cells = [c.fmt(row[c.key]) if row.get(c.key) is not None else ''
             for c in columns]
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


@dataclasses.dataclass
class Panel:
  """One plot: a title, axis labels and labelled (x, y) lines."""

  title: str
  xlabel: str
  ylabel: str
  lines: List[Tuple[str, np.ndarray, np.ndarray]]
  vlines: Sequence[Tuple[str, float]] = ()  # Labelled dashed x markers.


def plot_panels(panels: Sequence[Panel], path: str, ncols: int = 3,
                panel_size: Tuple[float, float] = (4.2, 3.2)):
  """Writes `panels` as a grid of line plots to the PNG at `path`."""
  nrows = max(1, math.ceil(len(panels) / ncols))
  ncols = min(ncols, len(panels))
  figure = matplotlib.figure.Figure(
      figsize=(panel_size[0] * ncols, panel_size[1] * nrows),
      layout='constrained')
  backend_agg.FigureCanvasAgg(figure)
  for i, panel in enumerate(panels):
    axes = figure.add_subplot(nrows, ncols, i + 1)
    for label, xs, ys in panel.lines:
      axes.plot(xs, ys, marker='.' if len(xs) < 20 else None, label=label)
    for label, x in panel.vlines:
      axes.axvline(x, color='gray', linestyle='--', linewidth=1, label=label)
    axes.set_title(panel.title, fontsize=10)
    axes.set_xlabel(panel.xlabel)
    axes.set_ylabel(panel.ylabel)
    axes.grid(alpha=0.3)
    if panel.lines or panel.vlines:
      axes.legend(fontsize=8)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  figure.savefig(path, dpi=110)


def format_count(n: float) -> str:
  """1234567 -> '1.23M', 353674 -> '354k'."""
  if n >= 1e6:
    return f'{n / 1e6:.2f}M'
  if n >= 1e3:
    return f'{n / 1e3:.0f}k'
  return f'{n:.0f}'


def format_percent(x: float) -> str:
  """0.91234 -> '91.23%'."""
  return f'{100 * x:.2f}%'


# Columns every study reports, under the same headers and formats.
PARAMS = Column('params', 'Params', format_count)
FLOPS = Column('flops', 'MFLOPs / image', lambda x: f'{x / 1e6:.1f}')
IMG_PER_SEC = Column('img_per_sec', 'Train img/s', lambda x: f'{x:.0f}')
STEPS = Column('steps', 'Steps', str)
EPOCHS = Column('epochs', 'Epochs', lambda x: f'{x:.1f}')
WALL = Column('wall', 'Wall time (s)', lambda x: f'{x:.0f}')
TEST_ACCURACY = Column('test_accuracy', 'Test acc.', format_percent)
TRAIN_ACCURACY = Column('train_accuracy', 'Train acc.', format_percent)
TEST_LOSS = Column('test_loss', 'Test loss', lambda x: f'{x:.4f}')
TRAIN_LOSS = Column('train_loss', 'Train loss', lambda x: f'{x:.4f}')


def run_row(run: Run, train_examples: int) -> Dict[str, Any]:
  """What every study reports of a finished run, keyed as the columns."""
  config = run.config
  return dict(
      steps=config.total_steps,
      epochs=config.total_steps * config.batch / train_examples,
      img_per_sec=run.train_img_per_sec(), wall=run.wall_seconds,
      test_accuracy=run.final('eval_accuracy'),
      test_loss=run.final('eval_loss'))


def train_and_measure(name: str, config: ml_collections.ConfigDict,
                      workdir: str, train_examples: int,
                      train_split: Optional[str] = None
                      ) -> Tuple[Dict[str, Any], Run]:
  """Trains `config`; returns its `run_row` and its run.

  With `train_split`, the row also holds `train_accuracy` and `train_loss`:
  that split evaluated after training exactly as the test set is.
  """
  run = run_training(name, config, workdir)
  row = run_row(run, train_examples)
  if train_split:
    train_metrics = evaluate_split(config, run.params, train_split)
    row.update(train_accuracy=train_metrics['eval_accuracy'],
               train_loss=train_metrics['eval_loss'])
  return row, run


def over_budget_note(name: str, wall: float, seconds: float) -> List[str]:
  """A warning line if a wall-clock run overran its budget by over 10%."""
  if wall <= 1.1 * seconds:
    return []
  return [f'- **{name} took {wall:.0f} s of its {seconds:.0f} s budget**: '
          'the machine ran slower than during its calibration (other '
          'load?); its steps were set for the budget.']


def command_line(module: str, args: Sequence[str]) -> str:
  """The shell command that ran `python -m module` with `args`."""
  return ' '.join([f'python -m {module}'] + [shlex.quote(a) for a in args])


def report_header(title: str, command: str, started: datetime.datetime,
                  machine: Mapping[str, str]) -> List[str]:
  """Markdown lines: the title, the command and the machine table."""
  return [
      f'# {title}',
      '',
      f'Written by `{command}`, started {started:%Y-%m-%d %H:%M}; every '
      'number below comes from the runs it made.',
      '',
      '| Machine | |', '|---|---|',
  ] + [f'| {k} | {v} |' for k, v in machine.items()]


def write_text(path: str, lines: Sequence[str]):
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'w') as f:
    f.write('\n'.join(lines))


def cost_notes(image_size: int) -> List[str]:
  """How a report's FLOPs, img/s and wall-time columns were measured."""
  return [
      "- FLOPs: XLA's cost analysis of the jitted forward pass of one "
      f'{image_size}px image (a multiply-add counts 2).',
      '- Train img/s: median over the logging windows after the first '
      '(which holds the compilation); wall time includes data loading, '
      'compilation and the evaluations.',
  ]


def write_report(out_md: str, out_png: str, lines: Sequence[str]):
  """Writes a study's report: `lines`, then its figure of curves."""
  write_text(out_md, [*lines, '', f'![Curves]({os.path.basename(out_png)})',
                      ''])
  logging.info('Wrote %s and %s.', out_md, out_png)


def option(default: Any, help_text: str) -> Any:
  """A field of a study's options: its default and its --flag's help."""
  return dataclasses.field(default=default, metadata={'help': help_text})


@dataclasses.dataclass(frozen=True)
class StudyOptions:
  """Options every study takes; a study's own options extend these."""

  num_evals: int = option(4, 'Test-set evaluations per run (the last at '
                          'the end).')
  fashion_mnist_dir: Optional[str] = option(
      None, "Folder of Fashion-MNIST's four IDX files (default: "
      f'{input_pipeline.FASHION_MNIST_DIR}).')

  def with_data(self, config: ml_collections.ConfigDict
                ) -> ml_collections.ConfigDict:
    """A copy of `config` reading Fashion-MNIST from `fashion_mnist_dir`."""
    config = copy.deepcopy(config)
    if self.fashion_mnist_dir:
      config.tfds_manual_dir = self.fashion_mnist_dir
    return config


def define_flags(options_type: type, flag_values=flags.FLAGS):
  """Defines a --flag per field of the `options_type` dataclass.

  Tuples become comma-separated lists. Studies call this only when run as
  a command, so that tests can import several studies at once (absl
  refuses a flag name defined by two modules).
  """
  hints = typing.get_type_hints(options_type)
  for field in dataclasses.fields(options_type):
    kind, help_text = hints[field.name], field.metadata['help']
    if typing.get_origin(kind) is tuple:
      flags.DEFINE_list(field.name, [str(v) for v in field.default],
                        help_text, flag_values=flag_values)
    else:
      define = {int: flags.DEFINE_integer,
                float: flags.DEFINE_float}.get(kind, flags.DEFINE_string)
      define(field.name, field.default, help_text, flag_values=flag_values)


def options_from_flags(options_type: type, flag_values=flags.FLAGS):
  """An `options_type` holding the parsed values of its --flags."""
  hints = typing.get_type_hints(options_type)
  values = {}
  for field in dataclasses.fields(options_type):
    value = flag_values[field.name].value
    kind = hints[field.name]
    if typing.get_origin(kind) is tuple:
      item = typing.get_args(kind)[0]
      try:
        value = tuple(item(v) for v in value)
      except ValueError as e:
        raise errors.ConfigError(
            f'--{field.name}={",".join(value)}: expected a comma-separated '
            f'list of {item.__name__} values.') from e
    values[field.name] = value
  return options_type(**values)


def options_command(module: str, options) -> str:
  """The command that runs `module` with `options`, every flag spelt out.

  The study's own flags come first, those of every study last.
  """
  shared = {field.name for field in dataclasses.fields(StudyOptions)}
  args = []
  for field in sorted(dataclasses.fields(options),
                      key=lambda field: field.name in shared):
    value = getattr(options, field.name)
    if value is None:
      continue
    if isinstance(value, tuple):
      value = ','.join(str(v) for v in value)
    args.append(f'--{field.name}={value}')
  return command_line(module, args)


def run_command(study: Callable[[], None], argv: Sequence[str]):
  """The body of a study's `main`: runs it, turning bad input into a message.

  """
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  host.hide_gpus_from_tensorflow()
  try:
    study()
  except errors.UserError as e:
    logging.error('%s', e)
    sys.exit(f'Error: {e}')
