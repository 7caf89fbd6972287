r"""ViT vs ResNet on 10%, 30% and 100% of Fashion-MNIST, at one step budget.

Trains the ViT of configs/quickstart.py and the ResNet-8 of
configs/resnet8_quickstart.py (compute per image of the same order) on the
first 10%, 30% and all of the training set: every run the same steps and
batch, so a smaller subset is seen for more epochs. All are tested on the
whole test split. Writes OUT.md (a table of the measured numbers) and OUT.png
(the curves), from these runs only:

  python -m experiments.vit_vs_resnet --out=docs/vit_vs_resnet --steps=600
"""

import dataclasses
from typing import Dict, List, Tuple

import ml_collections

from configs import quickstart
from configs import resnet8_quickstart
from experiments import budget
from experiments import cli
from experiments import report
from experiments import study
from vit_flax import errors


def describe_vit(config: ml_collections.ConfigDict) -> str:
  model, size = config.model, config.pp.crop
  patch = model.patches.size[0]
  return (f'configs/quickstart.py: {model.transformer.num_layers} blocks of '
          f'width {model.hidden_size}, {patch}x{patch} patches (a '
          f'{size // patch}x{size // patch} grid)')


def describe_resnet(config: ml_collections.ConfigDict) -> str:
  del config  # Its description holds for the config file as it is.
  return ('configs/resnet8_quickstart.py: BiT units at half width (32, 64, '
          '128 channels at 7, 4, 2 px) after the ImageNet stem')


# Name -> (table name, config, description of a config).
MODELS = {
    'vit': ('ViT', quickstart.get_config, describe_vit),
    'resnet': ('ResNet-8', resnet8_quickstart.get_config, describe_resnet),
}


@dataclasses.dataclass(frozen=True)
class Options(cli.StudyOptions):
  out: str = cli.out_option('docs/vit_vs_resnet')
  workdir: str = cli.workdir_option('/tmp/vit_vs_resnet')
  models: Tuple[str, ...] = cli.option(
      ('vit', 'resnet'), f'Models to compare, from: {", ".join(MODELS)}.')
  percents: Tuple[int, ...] = cli.option(
      (10, 30, 100), 'Training subsets: the first so many percent of the '
      'training set.')
  steps: int = cli.option(600, 'Steps of every run, whatever its subset.')
  train_eval_percent: int = cli.option(
      10, 'Train accuracy is measured on the first min(this, subset) '
      'percent of the training set: examples every run trained on.')


def subset_split(percent: int) -> str:
  """The TFDS split of the first `percent`% of the training set."""
  if not 0 < percent <= 100:
    raise errors.ConfigError(
        f'A training subset of {percent}% is not in (0, 100]; give '
        'percentages such as 10,30,100.')
  return 'train' if percent == 100 else f'train[:{percent}%]'


def study_configs(options: Options
                  ) -> Dict[Tuple[str, int], ml_collections.ConfigDict]:
  """(model, percent) -> the config of that run, fitted to the budget."""
  unknown = sorted(set(options.models) - set(MODELS))
  if unknown or not options.models:
    raise errors.UserError(f'Unknown --models {unknown}; choose from '
                           f'{sorted(MODELS)}.')
  if not options.percents:
    raise errors.UserError('--percents is empty: give e.g. 10,30,100.')
  configs = {}
  for model in options.models:
    base = options.with_data(MODELS[model][1]())
    for percent in options.percents:
      config = budget.with_total_steps(base, options.steps,
                                       options.num_evals)
      config.pp.train = subset_split(percent)
      configs[model, percent] = config
  return configs


def variants(options: Options) -> List[study.Variant]:
  """A run per (model, subset); train accuracy on data all of them saw."""
  return [study.Variant(
      f'{model}_{percent}', f'{MODELS[model][0]} {percent}%', config,
      {'model': MODELS[model][0], 'percent': percent},
      subset_split(min(percent, options.train_eval_percent)))
          for (model, percent), config in study_configs(options).items()]


def budgets(options: Options) -> List[budget.Budget]:
  return [budget.same_steps(options.steps)]


COLUMNS = [
    report.Column('model', 'Model'),
    report.Column('percent', 'Train data', lambda x: f'{x}%'),
    report.Column('train_examples', 'Examples', str),
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


def panels(options, rows, runs):
  """Accuracy and overfitting against the subset, then every run's curves."""
  by_model = {}
  for row in rows:
    by_model.setdefault(row['model'], []).append(row)

  def against_subset(key):
    return [(name, [r['percent'] for r in model_rows],
             [r[key] for r in model_rows])
            for name, model_rows in by_model.items()]

  def curves(tag):
    return [(name, *run.curve(tag)) for name, run in runs.items()]

  return [
      report.Panel(f'test accuracy after {options.steps} steps',
                   'training data (%)', 'test accuracy',
                   against_subset('test_accuracy')),
      report.Panel('overfitting', 'training data (%)',
                   'train minus test accuracy',
                   against_subset('accuracy_gap')),
      report.Panel('test accuracy', 'step', 'test accuracy',
                   curves('eval_accuracy')),
      report.Panel('training loss', 'step', 'training objective (batch mean)',
                   curves('loss')),
  ]


def write_report(options: Options, results: study.StudyResults):
  runs = results.runs_at()
  first = next(iter(runs.values())).config
  descriptions = [f'- {name}, {describe(get_config())}'
                  for name, get_config, describe in (MODELS[m]
                                                     for m in options.models)]
  lines = results.header('ViT vs ResNet on subsets of Fashion-MNIST') + [
      '',
      'Models (same data, optimiser, batch, schedule and step count; only '
      'the model and the training subset differ):',
      '',
      *descriptions,
      '',
      report.markdown_table(results.rows, COLUMNS),
      f'- Every run trains {options.steps} steps of batch {first.batch} '
      f'({first.optimizer}, peak learning rate {first.base_lr}, '
      f'{first.warmup_steps}-step warm-up, then {first.decay_type}), so '
      'the smaller subsets are seen for more epochs. Subsets are the first '
      'examples of the training set (TFDS slicing, e.g. `train[:10%]`); '
      'the test accuracy is over the whole test split.',
      '- Train acc.: the first min(subset, '
      f'{options.train_eval_percent}%) of the training set, which every run '
      'trained on, evaluated after training exactly as the test set is (no '
      'label smoothing): the gap to the test accuracy shows overfitting.',
      *report.cost_notes(first.pp.crop),
  ]
  report.write_report(options.out, lines,
                      panels(options, results.rows, runs), ncols=2)


STUDY = study.Study('experiments.vit_vs_resnet', Options, variants, budgets,
                    write_report)


if __name__ == '__main__':
  STUDY.run_as_command()
