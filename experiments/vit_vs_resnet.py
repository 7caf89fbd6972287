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
import datetime
import os
from typing import Dict, Tuple

from absl import app
import ml_collections

from configs import quickstart
from configs import resnet8_quickstart
from experiments import common
from vit_flax import errors
from vit_flax import host
from vit_flax import model_stats

MODELS = {
    'vit': ('ViT', quickstart.get_config,
            'configs/quickstart.py: 4 blocks of width 64, 7x7 patches '
            '(a 4x4 grid)'),
    'resnet': ('ResNet-8', resnet8_quickstart.get_config,
               'configs/resnet8_quickstart.py: BiT units at half width '
               '(32, 64, 128 channels at 7, 4, 2 px) after the ImageNet '
               'stem'),
}


@dataclasses.dataclass(frozen=True)
class Options(common.StudyOptions):
  out: str = common.option('docs/vit_vs_resnet',
                           'Output path without extension: writes OUT.md, '
                           'OUT.png.')
  workdir: str = common.option('/tmp/vit_vs_resnet',
                               "Root of the runs' workdirs (TensorBoard "
                               'metrics); its run folders are replaced.')
  models: Tuple[str, ...] = common.option(
      ('vit', 'resnet'), f'Models to compare, from: {", ".join(MODELS)}.')
  percents: Tuple[int, ...] = common.option(
      (10, 30, 100), 'Training subsets: the first so many percent of the '
      'training set.')
  steps: int = common.option(600, 'Steps of every run, whatever its subset.')
  train_eval_percent: int = common.option(
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
      config = common.with_total_steps(base, options.steps,
                                       options.num_evals)
      config.pp.train = subset_split(percent)
      configs[model, percent] = config
  return configs


COLUMNS = [
    common.Column('model', 'Model'),
    common.Column('percent', 'Train data', lambda x: f'{x}%'),
    common.Column('train_examples', 'Examples', str),
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


def panels(options, rows, runs):
  """Accuracy and overfitting against the subset, then every run's curves."""
  by_model = {}
  for row in rows:
    by_model.setdefault(row['model'], []).append(row)

  def against_subset(value):
    return [(name, [r['percent'] for r in model_rows],
             [value(r) for r in model_rows])
            for name, model_rows in by_model.items()]

  def curves(tag):
    return [(name, *run.curve(tag)) for name, run in runs.items()]

  return [
      common.Panel(f'test accuracy after {options.steps} steps',
                   'training data (%)', 'test accuracy',
                   against_subset(lambda r: r['test_accuracy'])),
      common.Panel('overfitting', 'training data (%)',
                   'train minus test accuracy',
                   against_subset(
                       lambda r: r['train_accuracy'] - r['test_accuracy'])),
      common.Panel('test accuracy', 'step', 'test accuracy',
                   curves('eval_accuracy')),
      common.Panel('training loss', 'step', 'training objective (batch mean)',
                   curves('loss')),
  ]


def write_report(options, rows, runs, machine, started):
  out_md, out_png = options.out + '.md', options.out + '.png'
  common.plot_panels(panels(options, rows, runs), out_png, ncols=2)
  first = next(iter(runs.values())).config
  command = common.options_command('experiments.vit_vs_resnet', options)
  lines = common.report_header('ViT vs ResNet on subsets of Fashion-MNIST',
                               command, started, machine) + [
      '',
      'Models (same data, optimiser, batch, schedule and step count; only '
      'the model and the training subset differ):',
      '',
  ] + [f'- {MODELS[m][0]}, {MODELS[m][2]}' for m in options.models] + [
      '',
      common.markdown_table(rows, COLUMNS),
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
      *common.cost_notes(first.pp.crop),
  ]
  common.write_report(out_md, out_png, lines)


def run_study(options: Options):
  started = datetime.datetime.now()
  machine = host.describe_machine()
  configs = study_configs(options)
  measures = {}
  for model in options.models:
    config = options.with_data(MODELS[model][1]())
    num_classes = common.num_classes_of(config)
    measures[model] = {'params': model_stats.config_params(config, num_classes),
                       'flops': model_stats.config_flops(config, num_classes)}
  rows, runs = [], {}
  for (model, percent), config in configs.items():
    name = f'{MODELS[model][0]} {percent}%'
    train_examples = common.num_train_examples(config)
    row, run = common.train_and_measure(
        name, config, os.path.join(options.workdir, f'{model}_{percent}'),
        train_examples,
        subset_split(min(percent, options.train_eval_percent)))
    row.update(measures[model], model=MODELS[model][0], percent=percent,
               train_examples=train_examples)
    rows.append(row)
    runs[name] = run
  write_report(options, rows, runs, machine, started)


def main(argv):
  common.run_command(
      lambda: run_study(common.options_from_flags(Options)), argv)


if __name__ == '__main__':
  common.define_flags(Options)
  app.run(main)
