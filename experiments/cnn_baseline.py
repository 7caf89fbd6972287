r"""Choosing the CNN baseline: small ResNets on Fashion-MNIST at equal time.

The tuning behind configs/cnn_quickstart.py, the CNN that
experiments/vit_vs_resnet.py sets against the ViT. Every candidate trains with
the ViT quickstart's data, augmentation, optimizer and schedule
(`common.fashion_mnist_training`), for the same wall-clock budget on this
machine, so a slower network pays with fewer steps: first each architecture at
the ViT's learning rate, then one architecture at other learning rates. The
test split is the ViT's too, so this chooses on the numbers the comparison
reports; the same was done for the ViT quickstart. Writes OUT.md (the table)
and OUT.png (the curves), from these runs only:

  python -m experiments.cnn_baseline --out=docs/cnn_baseline --seconds=150
"""

import dataclasses
from typing import Dict, List, Tuple

import ml_collections

from experiments import budget
from experiments import cli
from experiments import report
from experiments import study
from vit_flax import errors
from vit_flax.configs import common
from vit_flax.models import presets

# Name -> (stem, units per stage, width factor, GroupNorm groups). The
# ImageNet stem (7x7/2 conv, 3x3/2 max-pool) runs the stages at 7, 4 and
# 2 px; the CIFAR stem (one 3x3/1 conv) at 28, 14 and 7 px.
ARCHITECTURES: Dict[str, Tuple[str, Tuple[int, ...], float, int]] = {
    'imagenet_111_x0.5': ('imagenet', (1, 1, 1), 0.5, 32),
    'imagenet_111_x0.5_gn8': ('imagenet', (1, 1, 1), 0.5, 8),
    'imagenet_111_x0.75': ('imagenet', (1, 1, 1), 0.75, 16),
    'imagenet_222_x0.5': ('imagenet', (2, 2, 2), 0.5, 32),
    'cifar_111_x0.25': ('cifar', (1, 1, 1), 0.25, 8),
    'cifar_112_x0.25': ('cifar', (1, 1, 2), 0.25, 8),
}


def cnn_config(architecture: str,
               base_lr: float = 0.0) -> ml_collections.ConfigDict:
  """The ViT quickstart's training with the CNN `architecture`."""
  if architecture not in ARCHITECTURES:
    raise errors.UserError(
        f'Unknown CNN architecture {architecture!r}; choose from '
        f'{", ".join(ARCHITECTURES)}.')
  stem, units, width_factor, groups = ARCHITECTURES[architecture]
  config = common.fashion_mnist_training()
  with config.unlocked():
    config.model_type = 'resnet'
    config.model = presets.resnet_config(
        f'ResNet-{architecture}', num_layers=units, bottleneck=False,
        width_factor=width_factor, stem=stem, norm_groups=groups)
    if base_lr:
      config.base_lr = base_lr
  return config


@dataclasses.dataclass(frozen=True)
class Options(cli.StudyOptions):
  out: str = cli.out_option('docs/cnn_baseline')
  workdir: str = cli.workdir_option('/tmp/cnn_baseline')
  architectures: Tuple[str, ...] = cli.option(
      tuple(ARCHITECTURES), 'Architectures, each trained at the quickstart\'s '
      f'learning rate; from: {", ".join(ARCHITECTURES)}.')
  lr_architecture: str = cli.option(
      'imagenet_111_x0.5', 'The architecture also trained at --lrs.')
  lrs: Tuple[float, ...] = cli.option(
      (1e-3, 4e-3), 'Further peak learning rates for --lr_architecture.')
  train_split: str = cli.option('train', 'The training examples (TFDS '
                                'split), e.g. train[:10%].')
  seconds: float = cli.option(150.0, 'Wall-clock budget of every run.')
  calibration_steps: int = cli.option(
      60, 'Steps of the run that times each candidate.')
  train_eval_split: str = cli.train_eval_split_option()


def variants(options: Options) -> List[study.Variant]:
  if not options.architectures:
    raise errors.UserError('--architectures is empty: give e.g. '
                           f'{",".join(list(ARCHITECTURES)[:2])}.')
  default_lr = common.fashion_mnist_training().base_lr
  runs_wanted = [(a, default_lr) for a in options.architectures]
  runs_wanted += [(options.lr_architecture, lr) for lr in options.lrs
                  if lr != default_lr]
  result = []
  for architecture, lr in runs_wanted:
    config = options.with_data(cnn_config(architecture, lr))
    config.pp.train = options.train_split
    stem, units, width_factor, groups = ARCHITECTURES[architecture]
    result.append(study.Variant(
        f'{architecture}_lr{lr:g}', f'{architecture}, lr {lr:g}', config,
        {'architecture': architecture, 'stem': stem,
         'units': '-'.join(map(str, units)),
         'widths': '-'.join(str(int(64 * width_factor) * 2**i)
                            for i in range(len(units))),
         'groups': groups, 'base_lr': lr},
        options.train_eval_split))
  return result


def budgets(options: Options) -> List[budget.Budget]:
  return budget.budgets_of(0, options.seconds, options.calibration_steps)


COLUMNS = [
    report.Column('stem', 'Stem'),
    report.Column('units', 'Units per stage'),
    report.Column('widths', 'Widths'),
    report.Column('groups', 'GN groups', str),
    report.Column('base_lr', 'Peak lr', lambda x: f'{x:g}'),
    report.PARAMS,
    report.FLOPS,
    *report.RUN_COLUMNS,
]


def best_row(rows):
  return max(rows, key=lambda r: r['test_accuracy'])


def write_report(options: Options, results: study.StudyResults):
  rows = sorted(results.rows, key=lambda r: -r['test_accuracy'])
  best = best_row(rows)
  first = common.fashion_mnist_training()
  lines = results.header('Choosing the CNN baseline') + [
      '',
      f'Small BiT-style ResNets (basic units, GroupNorm, weight-standardised '
      f'convs) trained on `{options.train_split}` of Fashion-MNIST with the '
      f'ViT quickstart\'s data, augmentation ({first.pp.augment}, random '
      f'erasing {first.pp.random_erase}), optimizer ({first.optimizer}, '
      f'weight decay {first.weight_decay}, batch {first.batch}) and schedule '
      f'shape, each for {options.seconds:.0f} s of wall clock on this '
      'machine. Best first.',
      '',
      report.markdown_table(rows, COLUMNS),
      f'Best: {best["architecture"]} at peak learning rate '
      f'{best["base_lr"]:g}, {report.format_percent(best["test_accuracy"])}.',
      '',
      '- Every run gets the budget in all (data, compilation, training, '
      f'evaluations); its steps are set from a {options.calibration_steps}-'
      'step calibration run so that its whole warm-up + decay schedule ends '
      'within it.',
      f'- Train acc.: `{options.train_eval_split}` evaluated after training '
      'as the test set is; the test accuracy is over the whole test split.',
      *report.off_budget_notes(results.rows),
      *report.cost_notes(first.pp.crop),
  ]
  panels = [panel for b in results.budgets
            for panel in report.budget_panels(b, results.runs_at(b))]
  report.write_report(options.out, lines, panels, ncols=2)


STUDY = study.Study('experiments.cnn_baseline', Options, variants, budgets,
                    write_report)


if __name__ == '__main__':
  STUDY.run_as_command()
