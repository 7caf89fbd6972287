"""Fitting a training config to a step or wall-clock budget.

A study gives every run the same `Budget`: a step count
(`with_total_steps` stretches or shrinks the whole schedule to it), or
wall-clock seconds for the whole run, data, compilation and evaluations
included. For the latter, a short run of the same config on this machine
(`calibrate`) times a step, the overhead and an evaluation (`Timing`); the
step count is then the largest whose run fits (`steps_for_budget`), and the
schedule is fitted to it (`fit_to_seconds`), so that every run finishes its
warm-up and decay rather than being cut short.
"""

import copy
import dataclasses
import math
from typing import Dict, List, Optional, Sequence, Tuple

from absl import logging
import ml_collections
import numpy as np

from experiments import runs
from vit_flax import errors
from vit_flax.data import curriculum

STEPS, SECONDS = 'steps', 'seconds'  # The kinds of budget.


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


def steady_step_seconds(loss: Sequence[runs.Scalar],
                        image_size: Sequence[runs.Scalar]) -> Dict[int, float]:
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
  run = runs.run_training(f'{name} (calibration)', short, workdir)
  size_seconds = steady_step_seconds(run.scalars['loss'],
                                     run.scalars['image_size'])
  phases = curriculum.curriculum_phases(
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


@dataclasses.dataclass(frozen=True)
class Budget:
  """What every run of a comparison gets: `amount` steps or seconds.

  Seconds cover the whole run (data, compilation, training, evaluations);
  a `calibration_steps` run of each config, writing train metrics every
  `calibration_progress_every` steps (by default 4 times), times it.
  """

  kind: str  # STEPS or SECONDS.
  amount: float
  calibration_steps: int = 0
  calibration_progress_every: Optional[int] = None

  def __post_init__(self):
    if self.kind not in (STEPS, SECONDS):
      raise ValueError(f'kind must be {STEPS!r} or {SECONDS!r}, not '
                       f'{self.kind!r}.')
    if not self.amount > 0:
      raise errors.ConfigError(
          f'--{self.kind}={self.amount}: a budget must be more than 0 '
          f'{self.kind}.')

  @property
  def label(self) -> str:
    """'same steps (1000)' or 'same wall clock (150 s)'."""
    if self.kind == STEPS:
      return f'same steps ({int(self.amount)})'
    return f'same wall clock ({self.amount:.0f} s)'

  @property
  def x(self) -> str:
    """The x axis on which runs of this budget meet: 'step' or 'seconds'."""
    return 'step' if self.kind == STEPS else 'seconds'

  def fit(self, name: str, config: ml_collections.ConfigDict,
          calibration_workdir: str, num_evals: int
          ) -> Tuple[ml_collections.ConfigDict, Optional[Timing]]:
    """`config` fitted to this budget, and its calibration (seconds only)."""
    if self.kind == STEPS:
      return with_total_steps(config, int(self.amount), num_evals), None
    return fit_to_seconds(name, config, calibration_workdir, self.amount,
                          num_evals, self.calibration_steps,
                          self.calibration_progress_every)


def same_steps(steps: int) -> Budget:
  return Budget(STEPS, steps)


def same_wall_clock(seconds: float, calibration_steps: int,
                    calibration_progress_every: Optional[int] = None
                    ) -> Budget:
  return Budget(SECONDS, seconds, calibration_steps,
                calibration_progress_every)


def budgets_of(steps: int, seconds: float, calibration_steps: int,
               calibration_progress_every: Optional[int] = None
               ) -> List[Budget]:
  """A same-steps and a same-wall-clock budget; a 0 leaves that one out."""
  if not steps and not seconds:
    raise errors.UserError('Both --steps and --seconds are 0: nothing to run.')
  budgets = []
  if steps:
    budgets.append(same_steps(steps))
  if seconds:
    budgets.append(same_wall_clock(seconds, calibration_steps,
                                   calibration_progress_every))
  return budgets
