r"""Locality in the ViT's MLP on vs off, on Fashion-MNIST, at one step budget.

Trains the ViT of configs/quickstart_patchify.py twice for the same steps,
with `model.locality=False` and `True` (the config's own setting): a 3x3
depthwise conv over the patch grid between the two dense layers of every
MLP block (arXiv 2211.05187; a class token passes by it). Writes OUT.md (a
table of the measured numbers) and OUT.png (the curves), from these runs only:

  python -m experiments.locality --out=docs/locality --steps=2500
"""

import dataclasses
from typing import Dict, List

import ml_collections

from experiments import budget
from experiments import cli
from experiments import report
from experiments import study
from vit_flax.configs import quickstart_patchify

SETTINGS = {'off': False, 'on': True}  # Table name -> model.locality.


@dataclasses.dataclass(frozen=True)
class Options(cli.StudyOptions):
  out: str = cli.out_option('docs/locality')
  workdir: str = cli.workdir_option('/tmp/locality')
  steps: int = cli.option(2500, 'Steps of both runs.')
  train_split: str = cli.option(
      'train', "Training data, TFDS slicing allowed (e.g. 'train[:10%]').")
  train_eval_split: str = cli.train_eval_split_option()


def study_configs(options: Options) -> Dict[str, ml_collections.ConfigDict]:
  """Setting ('off', 'on') -> the config of that run, fitted to the budget."""
  base = options.with_data(quickstart_patchify.get_config())
  configs = {}
  for name, locality in SETTINGS.items():
    config = budget.with_total_steps(base, options.steps, options.num_evals)
    config.pp.train = options.train_split
    config.model.locality = locality
    configs[name] = config
  return configs


def variants(options: Options) -> List[study.Variant]:
  return [study.Variant(name, f'locality {name}', config, {'setting': name},
                        options.train_eval_split)
          for name, config in study_configs(options).items()]


def budgets(options: Options) -> List[budget.Budget]:
  return [budget.same_steps(options.steps)]


COLUMNS = [
    report.Column('setting', 'Locality'),
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
]


def panels(runs):
  def curves(tag, x='step'):
    return [(name, *run.curve(tag, x)) for name, run in runs.items()]

  return [
      report.Panel('test accuracy', 'step', 'test accuracy',
                   curves('eval_accuracy')),
      report.Panel('test accuracy against time', report.X_LABELS['seconds'],
                   'test accuracy', curves('eval_accuracy', 'seconds')),
      report.Panel('training loss', 'step', 'training objective (batch mean)',
                   curves('loss')),
  ]


def write_report(options: Options, results: study.StudyResults):
  runs = results.runs_at()
  first = next(iter(runs.values())).config
  lines = results.header('Locality in the ViT MLP on Fashion-MNIST') + [
      '',
      f'The ViT of configs/quickstart_patchify.py '
      f'({first.model.transformer.num_layers} blocks of width '
      f'{first.model.hidden_size}, '
      f'{first.model.patches.size[0]}px patches), without and with '
      '`model.locality=True`: a 3x3 depthwise conv (and GELU) over the patch '
      'grid between the two dense layers of every MLP block. Same data, '
      'optimiser, batch, schedule and step count.',
      '',
      report.markdown_table(results.rows, COLUMNS),
      f'- Both runs train {options.steps} steps of batch {first.batch} on '
      f'`{options.train_split}` ({first.optimizer}, peak learning rate '
      f'{first.base_lr}, {first.warmup_steps}-step warm-up, then '
      f'{first.decay_type}); the test accuracy is over the whole test '
      'split.',
      f'- Train acc. / loss: `{options.train_eval_split}` evaluated after '
      'training exactly as the test set is (no label smoothing).',
      *report.cost_notes(first.pp.crop),
  ]
  report.write_report(options.out, lines, panels(runs))


STUDY = study.Study('experiments.locality', Options, variants, budgets,
                    write_report)


if __name__ == '__main__':
  STUDY.run_as_command()
