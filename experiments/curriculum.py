r"""Resolution curriculum on vs off for the ViT, at one wall-clock budget.

Trains the ViT of configs/quickstart_patchify.py for the same wall-clock time
twice: at 28 px throughout, and with a curriculum of 14, 21 and 28 px images
(equal thirds of the steps; with 7 px patches, grids of 2x2, 3x3 and 4x4),
which buys more steps with cheaper early ones. Both end at Fashion-MNIST's
native 28 px and are tested there. Writes OUT.md (a table of the measured
numbers and the method) and OUT.png (the curves), from these runs only:

  python -m experiments.curriculum --out=docs/curriculum --seconds=400

Each schedule's step count is fitted to the budget from a short calibration
run of that same schedule (`budget.calibrate`): every image size's step time
is measured on its own, so the curriculum's mixture of cheap and dear steps
is costed as it will run.
"""

import copy
import dataclasses
from typing import Dict, List, Tuple

import ml_collections

from experiments import budget
from experiments import cli
from experiments import report
from experiments import study
from vit_flax import errors
from vit_flax.configs import quickstart_patchify
from vit_flax.data import curriculum as curriculum_lib


@dataclasses.dataclass(frozen=True)
class Options(cli.StudyOptions):
  out: str = cli.out_option('docs/curriculum')
  workdir: str = cli.workdir_option('/tmp/curriculum')
  sizes: Tuple[int, ...] = cli.option(
      (14, 21, 28), 'Image sizes of the curriculum, each for an equal share '
      'of the steps; multiples of the patch size (7). The last is also the '
      'size of the run without a curriculum and of every evaluation.')
  seconds: float = cli.option(
      400.0, "Wall-clock budget of each schedule's run (data, compilation, "
      'training and evaluations).')
  calibration_steps: int = cli.option(
      150, 'Steps of the run that times each schedule.')
  calibration_progress_every: int = cli.option(
      5, 'The calibration runs log every so many steps: a window of steps '
      'within one phase times a step at that size.')
  train_eval_split: str = cli.train_eval_split_option()


def schedule_configs(options: Options) -> Dict[str, ml_collections.ConfigDict]:
  """'fixed' and 'curriculum' configs, before they are fitted to the budget.

  Both train and evaluate at the last of `options.sizes`; the curriculum
  splits the steps into equal phases, one per size, in steps so that it
  scales with the step count the budget allows.
  """
  base = options.with_data(quickstart_patchify.get_config())
  patch = base.model.patches.size[0]
  sizes = tuple(options.sizes)
  bad = [s for s in sizes if s < patch or s % patch]
  if len(sizes) < 2 or bad:
    raise errors.ConfigError(
        f'--sizes={",".join(map(str, sizes))}: a curriculum needs at least '
        f'two image sizes, each a multiple of the patch size {patch} (e.g. '
        f'14,21,28 or 28,42,56){f"; {bad} are not" if bad else ""}.')
  base.pp.crop = sizes[-1]
  curriculum = copy.deepcopy(base)
  total = base.total_steps
  curriculum.pp.curriculum = tuple(
      (round(i * total / len(sizes)), size) for i, size in enumerate(sizes))
  curriculum.pp.curriculum_unit = 'steps'
  return {'fixed': base, 'curriculum': curriculum}


def phases_of(config: ml_collections.ConfigDict):
  """The image-size phases of a config's whole run."""
  return curriculum_lib.curriculum_phases(
      config.pp.curriculum, config.pp.curriculum_unit, config.total_steps,
      config.pp.crop, steps_per_epoch=1.0)


def describe_phases(config: ml_collections.ConfigDict) -> str:
  """'14/21/28 px: 100/100/101 steps' or '28 px'."""
  phases = phases_of(config)
  if len(phases) == 1:
    return f'{phases[0].image_size} px'
  return (' / '.join(str(p.image_size) for p in phases) + ' px: ' +
          ' / '.join(str(p.end_step - p.start_step) for p in phases) +
          ' steps')


def format_step_times(size_step_seconds) -> str:
  return ', '.join(f'{size} px: {1e3 * seconds:.0f}'
                   for size, seconds in size_step_seconds)


def variants(options: Options) -> List[study.Variant]:
  return [study.Variant(name, name, config, {'schedule': name},
                        options.train_eval_split)
          for name, config in schedule_configs(options).items()]


def budgets(options: Options) -> List[budget.Budget]:
  return [budget.same_wall_clock(options.seconds, options.calibration_steps,
                                 options.calibration_progress_every)]


COLUMNS = [
    report.Column('schedule', 'Schedule'),
    report.Column('phases', 'Image sizes'),
    report.PARAMS,
    report.Column('size_step_seconds', 'Step time (ms)', format_step_times),
    report.Column('step_seconds', 'Mean step (ms)',
                  lambda x: f'{1e3 * x:.0f}'),
    report.STEPS,
    report.EPOCHS,
    report.WALL,
    report.TEST_ACCURACY,
    report.TRAIN_ACCURACY,
    report.TEST_LOSS,
]


def panels(options, runs):
  def curves(tag, x):
    return [(name, *run.curve(tag, x)) for name, run in runs.items()]

  marks = (('budget', options.seconds),)
  seconds = report.X_LABELS['seconds']
  return [
      report.Panel('test accuracy', seconds, 'test accuracy',
                   curves('eval_accuracy', 'seconds'), marks),
      report.Panel('training loss', seconds, 'training objective (batch '
                   'mean)', curves('loss', 'seconds'), marks),
      report.Panel('training image size', seconds, 'pixels',
                   curves('image_size', 'seconds'), marks),
      report.Panel('test accuracy by step', 'step', 'test accuracy',
                   curves('eval_accuracy', 'step')),
  ]


def write_report(options: Options, results: study.StudyResults):
  runs = results.runs_at()
  # The phases each schedule ran, once fitted to the budget.
  rows = [dict(result.row, phases=describe_phases(result.run.config))
          for result in results.results]
  first = next(iter(runs.values())).config
  sizes = options.sizes
  grids = ', '.join(f'{s // first.model.patches.size[0]}' for s in sizes)
  lines = results.header(
      'Resolution curriculum on vs off, same wall clock, Fashion-MNIST') + [
      '',
      f'The ViT of configs/quickstart_patchify.py '
      f'({first.model.transformer.num_layers} blocks of width '
      f'{first.model.hidden_size}, {first.model.patches.size[0]}px patches) '
      f'trained for {options.seconds:.0f} s in all, at {sizes[-1]} px '
      'throughout (*fixed*) or with a curriculum of '
      f'{", ".join(map(str, sizes))} px images for equal shares of its steps '
      f'(patch grids of side {grids}; the position embeddings are resized '
      f'in the model). Both are tested at {sizes[-1]} px on the whole test '
      'split. Same data, optimiser, batch and schedule shape.',
      '',
      report.markdown_table(rows, COLUMNS),
      *report.off_budget_notes(rows),
      '- How each run is fitted to the budget: a calibration run trains '
      f'the same schedule shrunk to {options.calibration_steps} steps (so '
      'each image size gets the same share of the steps as in the real '
      f'run), logging every {options.calibration_progress_every} steps. '
      'The logging windows that lie within one phase time a step at that '
      'phase\'s size ("Step time": the median over them, which a passing '
      'stall does not skew). Left out are the windows where a phase '
      'starts, which hold its compilation, and those just before, where '
      "its input pipeline starts (batches are fetched ahead). The schedule's "
      'mean step time weights the sizes by their steps ("Mean step"); the '
      'rest of the calibration run (data set-up, init, the compilation of '
      'every size) is overhead, and one test evaluation is timed after the '
      'last step. The step count is the largest whose overhead + steps x '
      f'mean step + {options.num_evals} evaluations fits the budget; the '
      'whole schedule (warm-up, cosine decay, phase starts) is then '
      'stretched to it, so both runs finish their schedules.',
      f'- Batch {first.batch}, {first.optimizer}, peak learning rate '
      f'{first.base_lr}, warm-up '
      f'{100 * first.warmup_steps / first.total_steps:.0f}% of the steps, '
      f'then {first.decay_type}.',
      f'- Train acc.: `{options.train_eval_split}` evaluated after training '
      'exactly as the test set is (no label smoothing).',
      '- Wall time: the whole run, from data set-up to the last evaluation; '
      'the calibration runs are not counted.',
  ]
  report.write_report(options.out, lines, panels(options, runs), ncols=2)


# One model in both schedules, and no FLOPs: they change with the image size.
STUDY = study.Study('experiments.curriculum', Options, variants, budgets,
                    write_report, measures=('params',))


if __name__ == '__main__':
  STUDY.run_as_command()
