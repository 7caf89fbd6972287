r"""Patch size 4 vs 7 for the ViT on 28x28 Fashion-MNIST.

Trains the ViT of configs/quickstart.py with 7x7 patches (a 4x4 grid: 16
tokens and the class token) and with 4x4 patches (7x7: 49 tokens) for the
same number of steps, and again for the same wall-clock time. Only the patch
embedding and the position-embedding table change with the patch; the blocks
are the same. Writes OUT.md (a table of the measured numbers, training img/s
included) and OUT.png (the curves), from these runs only:

  python -m experiments.patch_size --out=docs/patch_size --steps=1000 \
      --seconds=150
"""

import dataclasses
import datetime
import os
from typing import Dict, Tuple

from absl import app
import ml_collections

from configs import quickstart
from experiments import common
from vit_flax import errors
from vit_flax import host
from vit_flax import model_stats


@dataclasses.dataclass(frozen=True)
class Options(common.StudyOptions):
  out: str = common.option('docs/patch_size', 'Output path without '
                           'extension: writes OUT.md, OUT.png.')
  workdir: str = common.option('/tmp/patch_size', "Root of the runs' "
                               'workdirs (TensorBoard metrics); its run '
                               'folders are replaced.')
  patches: Tuple[int, ...] = common.option(
      (7, 4), 'Patch sizes to compare; each must divide the image size.')
  steps: int = common.option(1000, 'Step budget of every patch size (0: '
                             'skip).')
  seconds: float = common.option(
      150.0, "Wall-clock budget of every patch size's run (0: skip).")
  calibration_steps: int = common.option(
      40, 'Steps of the run that times each patch size for --seconds.')
  train_eval_split: str = common.option(
      'train[:10000]', 'Training examples whose accuracy, after training, is '
      'compared with the test accuracy.')


def patch_config(options: Options, patch: int) -> ml_collections.ConfigDict:
  """The quickstart ViT with `patch`x`patch` patches."""
  config = options.with_data(quickstart.get_config())
  size = config.pp.crop
  if patch < 1 or size % patch:
    raise errors.ConfigError(
        f'Patch size {patch} does not divide the {size}px images; use one '
        f'of {[p for p in range(1, size + 1) if size % p == 0]}.')
  config.model.patches.size = (patch, patch)
  return config


def study_configs(options: Options) -> Dict[int, ml_collections.ConfigDict]:
  """Patch size -> its config (at the configured steps, not yet fitted)."""
  if not options.patches:
    raise errors.UserError('--patches is empty: give e.g. 7,4.')
  if not options.steps and not options.seconds:
    raise errors.UserError('Both --steps and --seconds are 0: nothing to run.')
  return {patch: patch_config(options, patch) for patch in options.patches}


COLUMNS = [
    common.Column('budget', 'Budget'),
    common.Column('patch', 'Patch', lambda x: f'{x}x{x}'),
    common.Column('tokens', 'Tokens', str),
    common.PARAMS,
    common.FLOPS,
    common.IMG_PER_SEC,
    common.STEPS,
    common.EPOCHS,
    common.WALL,
    common.TEST_ACCURACY,
    common.TRAIN_ACCURACY,
    common.TEST_LOSS,
]


def panels(options, runs_by_budget):
  """Test accuracy and training loss per budget, against steps or seconds."""
  result = []
  for budget, runs in runs_by_budget.items():
    by_steps = budget.startswith('same steps')
    x = 'step' if by_steps else 'seconds'
    xlabel = 'step' if by_steps else 'wall-clock seconds since the start'
    vlines = () if by_steps else (('budget', options.seconds),)
    for tag, title, ylabel in (
        ('eval_accuracy', 'test accuracy', 'test accuracy'),
        ('loss', 'training loss', 'training objective (batch mean)')):
      result.append(common.Panel(
          f'{budget}: {title}', xlabel, ylabel,
          [(name, *run.curve(tag, x)) for name, run in runs.items()],
          vlines))
  return result


def write_report(options, rows, runs_by_budget, machine, started):
  out_md, out_png = options.out + '.md', options.out + '.png'
  common.plot_panels(panels(options, runs_by_budget), out_png, ncols=2)
  first = next(iter(next(iter(runs_by_budget.values())).values())).config
  command = common.options_command('experiments.patch_size', options)
  notes = []
  if options.steps:
    notes.append(f'- *Same steps*: every patch size trains {options.steps} '
                 'steps.')
  if options.seconds:
    notes.append(
        f'- *Same wall clock*: every run gets {options.seconds:.0f} s in all '
        '(data, compilation, training, evaluations); its steps are set from '
        f'a {options.calibration_steps}-step calibration run so that its '
        'whole warm-up + decay schedule ends within the budget.')
    notes += [line for row in rows if row['budget'].startswith('same wall')
              for line in common.over_budget_note(
                  f'patch {row["patch"]}', row['wall'], options.seconds)]
  lines = common.report_header('Patch size 4 vs 7 on 28x28 Fashion-MNIST',
                               command, started, machine) + [
      '',
      f'The ViT of configs/quickstart.py ({first.model.transformer.num_layers}'
      f' blocks of width {first.model.hidden_size}) on {first.pp.crop}px '
      'images, with each patch size: tokens = patches + the class token. '
      'Only the patch embedding and the position embeddings change; same '
      'data, optimiser, batch and schedule shape.',
      '',
      common.markdown_table(rows, COLUMNS),
  ] + notes + [
      f'- Batch {first.batch}, {first.optimizer}, peak learning rate '
      f'{first.base_lr}, warm-up '
      f'{100 * first.warmup_steps / first.total_steps:.0f}% of the steps, '
      f'then {first.decay_type}; the test accuracy is over the whole test '
      'split.',
      f'- Train acc.: `{options.train_eval_split}` evaluated after training '
      'exactly as the test set is (no label smoothing).',
      *common.cost_notes(first.pp.crop),
  ]
  common.write_report(out_md, out_png, lines)


def run_study(options: Options):
  started = datetime.datetime.now()
  machine = host.describe_machine()
  configs = study_configs(options)
  measures = {}
  for patch, config in configs.items():
    num_classes = common.num_classes_of(config)
    measures[patch] = {
        'patch': patch, 'tokens': (config.pp.crop // patch)**2 + 1,
        'params': model_stats.config_params(config, num_classes),
        'flops': model_stats.config_flops(config, num_classes)}
  train_examples = common.num_train_examples(next(iter(configs.values())))

  budgets = []  # (kind, name)
  if options.steps:
    budgets.append(('steps', f'same steps ({options.steps})'))
  if options.seconds:
    budgets.append(('seconds', f'same wall clock ({options.seconds:.0f} s)'))
  rows, runs_by_budget = [], {}
  for kind, budget in budgets:
    runs_by_budget[budget] = {}
    for patch, config in configs.items():
      if kind == 'steps':
        config = common.with_total_steps(config, options.steps,
                                         options.num_evals)
      else:
        config, _ = common.fit_to_seconds(
            f'patch {patch}', config,
            os.path.join(options.workdir, f'calibrate_patch{patch}'),
            options.seconds, options.num_evals, options.calibration_steps)
      row, run = common.train_and_measure(
          f'patch {patch} ({budget})', config,
          os.path.join(options.workdir, f'{kind}_patch{patch}'),
          train_examples, options.train_eval_split)
      row.update(measures[patch], budget=budget)
      rows.append(row)
      runs_by_budget[budget][f'patch {patch}'] = run
  write_report(options, rows, runs_by_budget, machine, started)


def main(argv):
  common.run_command(
      lambda: run_study(common.options_from_flags(Options)), argv)


if __name__ == '__main__':
  common.define_flags(Options)
  app.run(main)
