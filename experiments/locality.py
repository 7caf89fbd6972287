r"""Locality in the ViT's MLP on vs off, on Fashion-MNIST, at one step budget.

Trains the ViT of configs/quickstart.py twice for the same steps, with
`model.locality=False` and `True` (the config's own setting), a 3x3 depthwise conv over the patch grid
between the two dense layers of every MLP block (arXiv 2211.05187; the
class token passes by it). Writes OUT.md (a table of the measured numbers)
and OUT.png (the curves), from these runs only:

  python -m experiments.locality --out=docs/locality --steps=2500
"""

import dataclasses
import datetime
import os
from typing import Dict

from absl import app
import ml_collections

from configs import quickstart
from experiments import common
from vit_flax import host
from vit_flax import model_stats

SETTINGS = {'off': False, 'on': True}  # Table name -> model.locality.


@dataclasses.dataclass(frozen=True)
class Options(common.StudyOptions):
  out: str = common.option('docs/locality', 'Output path without extension: '
                           'writes OUT.md, OUT.png.')
  workdir: str = common.option('/tmp/locality', "Root of the runs' workdirs "
                               '(TensorBoard metrics); its run folders are '
                               'replaced.')
  steps: int = common.option(2500, 'Steps of both runs.')
  train_split: str = common.option(
      'train', "Training data, TFDS slicing allowed (e.g. 'train[:10%]').")
  train_eval_split: str = common.option(
      'train[:10000]', 'Training examples whose accuracy, after training, is '
      'compared with the test accuracy.')


def study_configs(options: Options) -> Dict[str, ml_collections.ConfigDict]:
  """Setting ('off', 'on') -> the config of that run, fitted to the budget."""
  base = options.with_data(quickstart.get_config())
  configs = {}
  for name, locality in SETTINGS.items():
    config = common.with_total_steps(base, options.steps, options.num_evals)
    config.pp.train = options.train_split
    config.model.locality = locality
    configs[name] = config
  return configs


COLUMNS = [
    common.Column('setting', 'Locality'),
    common.PARAMS,
    common.FLOPS,
    common.IMG_PER_SEC,
    common.STEPS,
    common.EPOCHS,
    common.WALL,
    common.TEST_ACCURACY,
    common.TRAIN_ACCURACY,
    common.TEST_LOSS,
    common.TRAIN_LOSS,
]


def panels(runs):
  def curves(tag, x='step'):
    return [(f'locality {name}', *run.curve(tag, x))
            for name, run in runs.items()]

  return [
      common.Panel('test accuracy', 'step', 'test accuracy',
                   curves('eval_accuracy')),
      common.Panel('test accuracy against time', 'wall-clock seconds since '
                   'the start', 'test accuracy',
                   curves('eval_accuracy', 'seconds')),
      common.Panel('training loss', 'step', 'training objective (batch mean)',
                   curves('loss')),
  ]


def write_report(options, rows, runs, machine, started):
  out_md, out_png = options.out + '.md', options.out + '.png'
  common.plot_panels(panels(runs), out_png)
  first = next(iter(runs.values())).config
  command = common.options_command('experiments.locality', options)
  lines = common.report_header('Locality in the ViT MLP on Fashion-MNIST',
                               command, started, machine) + [
      '',
      f'The ViT of configs/quickstart.py ({first.model.transformer.num_layers}'
      f' blocks of width {first.model.hidden_size}, '
      f'{first.model.patches.size[0]}px patches), without and with '
      '`model.locality=True`: a 3x3 depthwise conv (and GELU) over the patch '
      'grid between the two dense layers of every MLP block. Same data, '
      'optimiser, batch, schedule and step count.',
      '',
      common.markdown_table(rows, COLUMNS),
      f'- Both runs train {options.steps} steps of batch {first.batch} on '
      f'`{options.train_split}` ({first.optimizer}, peak learning rate '
      f'{first.base_lr}, {first.warmup_steps}-step warm-up, then '
      f'{first.decay_type}); the test accuracy is over the whole test '
      'split.',
      f'- Train acc. / loss: `{options.train_eval_split}` evaluated after '
      'training exactly as the test set is (no label smoothing).',
      *common.cost_notes(first.pp.crop),
  ]
  common.write_report(out_md, out_png, lines)


def run_study(options: Options):
  started = datetime.datetime.now()
  machine = host.describe_machine()
  rows, runs = [], {}
  for name, config in study_configs(options).items():
    num_classes = common.num_classes_of(config)
    row, run = common.train_and_measure(
        f'locality {name}', config,
        os.path.join(options.workdir, f'locality_{name}'),
        common.num_train_examples(config), options.train_eval_split)
    row.update(setting=name,
               params=model_stats.config_params(config, num_classes),
               flops=model_stats.config_flops(config, num_classes))
    rows.append(row)
    runs[name] = run
  write_report(options, rows, runs, machine, started)


def main(argv):
  common.run_command(
      lambda: run_study(common.options_from_flags(Options)), argv)


if __name__ == '__main__':
  common.define_flags(Options)
  app.run(main)
