r"""Patch size 4 vs 7 for the ViT on 28x28 Fashion-MNIST.

Trains the ViT of configs/quickstart_patchify.py with 7x7 patches (a 4x4 grid:
16 patch tokens) and with 4x4 patches (7x7: 49) for the same number of steps,
and again for the same wall-clock time. Only the patch embedding and the
position-embedding table change with the patch; the blocks are the same. Writes
OUT.md (a table of the measured numbers, training img/s included) and OUT.png
(the curves), from these runs only:

  python -m experiments.patch_size --out=docs/patch_size --steps=1000 \
      --seconds=150
"""

import dataclasses
from typing import Dict, List, Tuple

import ml_collections

from experiments import budget
from experiments import cli
from experiments import report
from experiments import study
from vit_flax import errors
from vit_flax.configs import quickstart_patchify
from vit_flax.models import vit


@dataclasses.dataclass(frozen=True)
class Options(cli.StudyOptions):
  out: str = cli.out_option('docs/patch_size')
  workdir: str = cli.workdir_option('/tmp/patch_size')
  patches: Tuple[int, ...] = cli.option(
      (7, 4), 'Patch sizes to compare; each must divide the image size.')
  steps: int = cli.option(1000, 'Step budget of every patch size (0: skip).')
  seconds: float = cli.option(
      150.0, "Wall-clock budget of every patch size's run (0: skip).")
  calibration_steps: int = cli.option(
      40, 'Steps of the run that times each patch size for --seconds.')
  train_eval_split: str = cli.train_eval_split_option()


def patch_config(options: Options, patch: int) -> ml_collections.ConfigDict:
  """The quickstart ViT with `patch`x`patch` patches."""
  config = options.with_data(quickstart_patchify.get_config())
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
  return {patch: patch_config(options, patch) for patch in options.patches}


def num_tokens(config: ml_collections.ConfigDict) -> int:
  """Tokens the blocks see: the patches, and a class token if it has one."""
  grid = config.pp.crop // config.model.patches.size[0]
  return grid**2 + vit.num_prefix_tokens(config.model.classifier)


def variants(options: Options) -> List[study.Variant]:
  return [study.Variant(f'patch{patch}', f'patch {patch}', config,
                        {'patch': patch, 'tokens': num_tokens(config)},
                        options.train_eval_split)
          for patch, config in study_configs(options).items()]


def budgets(options: Options) -> List[budget.Budget]:
  return budget.budgets_of(options.steps, options.seconds,
                           options.calibration_steps)


COLUMNS = [
    report.Column('budget', 'Budget'),
    report.Column('patch', 'Patch', lambda x: f'{x}x{x}'),
    report.Column('tokens', 'Tokens', str),
    report.PARAMS,
    report.FLOPS,
    report.IMG_PER_SEC,
    report.STEPS,
    report.EPOCHS,
    report.WALL,
    report.TEST_ACCURACY,
    report.TRAIN_ACCURACY,
    report.TEST_LOSS,
]


def write_report(options: Options, results: study.StudyResults):
  panels = [panel for b in results.budgets
            for panel in report.budget_panels(b, results.runs_at(b))]
  first = results.results[0].run.config
  if vit.num_prefix_tokens(first.model.classifier):
    tokens = 'tokens = patches + the class token'
  else:
    tokens = (f'tokens = patches (the {first.model.classifier} classifier '
              'adds no class token)')
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
    notes += report.off_budget_notes(results.rows)
  lines = results.header('Patch size 4 vs 7 on 28x28 Fashion-MNIST') + [
      '',
      f'The ViT of configs/quickstart_patchify.py '
      f'({first.model.transformer.num_layers} blocks of width '
      f'{first.model.hidden_size}) on {first.pp.crop}px '
      f'images, with each patch size: {tokens}. Only the patch embedding and '
      'the position embeddings change; same data, optimiser, batch and '
      'schedule shape.',
      '',
      report.markdown_table(results.rows, COLUMNS),
  ] + notes + [
      f'- Batch {first.batch}, {first.optimizer}, peak learning rate '
      f'{first.base_lr}, warm-up '
      f'{100 * first.warmup_steps / first.total_steps:.0f}% of the steps, '
      f'then {first.decay_type}; the test accuracy is over the whole test '
      'split.',
      f'- Train acc.: `{options.train_eval_split}` evaluated after training '
      'exactly as the test set is (no label smoothing).',
      *report.cost_notes(first.pp.crop),
  ]
  report.write_report(options.out, lines, panels, ncols=2)


STUDY = study.Study('experiments.patch_size', Options, variants, budgets,
                    write_report)


if __name__ == '__main__':
  STUDY.run_as_command()
