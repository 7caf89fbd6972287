r"""Staged vs constant-width ("tower") ViT on Fashion-MNIST, at equal budgets.

Trains configs/vit_tower_quickstart.py and configs/vit_staged_quickstart.py
(pool and linear transitions), whose parameter counts match, twice: for the
same number of steps, and for the same wall-clock time. Writes OUT.md (a
table of the measured numbers and how they were taken) and OUT.png (the
curves), from these runs only:

  python -m experiments.staged_vs_tower --out=docs/staged_vs_tower \
      --steps=4000 --seconds=300

A wall-clock budget covers the whole run (data, compilation, training and
the evaluations). A short calibration run of each model times its steps and
overhead; its step count is then set so that the full warm-up + cosine
schedule ends within the budget, rather than cutting a schedule short.
"""

import dataclasses
from typing import Dict, List, Tuple

import ml_collections

from experiments import budget
from experiments import cli
from experiments import report
from experiments import study
from vit_flax import errors
from vit_flax.configs import vit_staged_quickstart
from vit_flax.configs import vit_tower_quickstart


def model_configs() -> Dict[str, Tuple[ml_collections.ConfigDict, str]]:
  """Name -> (config, description) of every model this study can train."""
  tower = vit_tower_quickstart.get_config()
  pool = vit_staged_quickstart.get_config()
  linear = vit_staged_quickstart.get_config()
  linear.model.transition = 'linear'
  widths = ' then '.join(f'{s["num_layers"]} blocks of width '
                         f'{s["hidden_size"]}' for s in pool.model.stages)
  return {
      'tower': (tower, 'configs/vit_tower_quickstart.py: '
                f'{tower.model.transformer.num_layers} blocks of width '
                f'{tower.model.hidden_size}'),
      'staged_pool': (pool, f'configs/vit_staged_quickstart.py: {widths}, '
                      'joined by a PiT pool (patch grid halved per side)'),
      'staged_linear': (linear, 'the same with transition=linear (every '
                        'token projected to the next width, grid kept)'),
  }


MODELS = tuple(model_configs())


@dataclasses.dataclass(frozen=True)
class Options(cli.StudyOptions):
  out: str = cli.out_option('docs/staged_vs_tower')
  workdir: str = cli.workdir_option('/tmp/staged_vs_tower')
  models: Tuple[str, ...] = cli.option(
      MODELS, f'Models to compare, from: {", ".join(MODELS)}.')
  steps: int = cli.option(4000, 'Step budget of every model (0: skip).')
  seconds: float = cli.option(
      300.0, "Wall-clock budget of every model's run (0: skip).")
  calibration_steps: int = cli.option(
      100, 'Steps of the run that times each model.')
  num_evals: int = cli.option(
      5, 'Test-set evaluations per run (the last at the end).')
  train_split: str = cli.option(
      'train[:10000]', 'Training examples whose loss, after training, is '
      'compared with the test loss.')


def chosen_models(options: Options
                  ) -> Dict[str, Tuple[ml_collections.ConfigDict, str]]:
  """`model_configs()` of `options.models`, in their order, read as given."""
  available = model_configs()
  unknown = sorted(set(options.models) - set(available))
  if unknown or not options.models:
    raise errors.UserError(f'Unknown --models {unknown}; choose from '
                           f'{sorted(available)}.')
  return {name: (options.with_data(available[name][0]), available[name][1])
          for name in options.models}


def variants(options: Options) -> List[study.Variant]:
  return [study.Variant(name, name, config, {'model': name},
                        options.train_split)
          for name, (config, _) in chosen_models(options).items()]


def budgets(options: Options) -> List[budget.Budget]:
  return budget.budgets_of(options.steps, options.seconds,
                           options.calibration_steps)


COLUMNS = [
    report.Column('budget', 'Budget'),
    report.Column('model', 'Model'),
    report.PARAMS,
    report.FLOPS,
    report.IMG_PER_SEC,
    report.STEPS,
    report.EPOCHS,
    report.WALL,
    report.TEST_ACCURACY,
    report.TRAIN_ACCURACY,
    report.TEST_LOSS,
    report.TRAIN_LOSS,
    report.LOSS_GAP,
]

CURVES = (report.TEST_ACCURACY_CURVE, report.TEST_LOSS_CURVE,
          report.TRAIN_LOSS_CURVE)


def write_report(options: Options, results: study.StudyResults):
  panels = [panel for b in results.budgets
            for panel in report.budget_panels(b, results.runs_at(b), CURVES)]
  descriptions = chosen_models(options)
  # The schedule as configured, before it was fitted to a budget.
  first = results.results[0].variant.config
  lines = results.header('Staged vs tower ViT on Fashion-MNIST') + [
      '',
      'Models (same data, optimiser, batch, augmentation and schedule shape; '
      'only the model differs):',
      '',
  ] + [f'- `{name}`: {text}' for name, (_, text) in descriptions.items()] + [
      '',
      report.markdown_table(results.rows, COLUMNS),
      *report.off_budget_notes(results.rows),
      f'- Budgets: *same steps* gives every model {options.steps} steps; '
      f'*same wall clock* gives every run {options.seconds:.0f} s in all '
      '(data, compilation, training, evaluations), its steps set from a '
      f'{options.calibration_steps}-step calibration run so that the warm-up '
      f'({100 * first.warmup_steps / first.total_steps:.0f}% of the steps) '
      f'+ {first.decay_type} schedule ends within the budget. Batch '
      f'{first.batch}, {first.optimizer}, peak learning rate '
      f'{first.base_lr}.',
      f'- Train loss / accuracy: `{options.train_split}` evaluated after '
      'training exactly as the test set is (no dropout, no label '
      'smoothing). The gap, test minus train loss, is the overfitting '
      'figure: larger means more overfitting.',
      *report.cost_notes(first.pp.crop),
  ]
  report.write_report(options.out, lines, panels)


STUDY = study.Study('experiments.staged_vs_tower', Options, variants,
                    budgets, write_report)


if __name__ == '__main__':
  STUDY.run_as_command()
