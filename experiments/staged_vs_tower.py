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

import datetime
import os
import sys

from absl import app
from absl import flags

from configs import vit_staged_quickstart
from configs import vit_tower_quickstart
from experiments import common
from vit_flax import errors
from vit_flax import host
from vit_flax import model_stats

FLAGS = flags.FLAGS
flags.DEFINE_string('out', 'docs/staged_vs_tower',
                    'Output path without extension: writes OUT.md, OUT.png.')
flags.DEFINE_string('workdir', '/tmp/staged_vs_tower',
                    'Root of the runs\' workdirs (TensorBoard metrics); its '
                    'run folders are replaced.')
flags.DEFINE_list('models', ['tower', 'staged_pool', 'staged_linear'],
                  'Models to compare, from: tower, staged_pool, staged_linear.')
flags.DEFINE_integer('steps', 4000, 'Step budget of every model (0: skip).')
flags.DEFINE_float('seconds', 300.0,
                   'Wall-clock budget of every model\'s run (0: skip).')
flags.DEFINE_integer('calibration_steps', 100,
                     'Steps of the run that times each model.')
flags.DEFINE_integer('num_evals', 5,
                     'Test-set evaluations per run (the last at the end).')
flags.DEFINE_string('train_split', 'train[:10000]',
                    'Training examples whose loss, after training, is '
                    'compared with the test loss.')


def model_configs():
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


def train_and_measure(name, config, budget, workdir, measures):
  """Trains `config`; returns its table row and its run."""
  measured, run = common.train_and_measure(
      f'{name} ({budget})', config, workdir, measures['train_examples'],
      FLAGS.train_split)
  row = dict(measures)
  row.update(measured)
  row.update(budget=budget, model=name,
             gap=row['test_loss'] - row['train_loss'])
  return row, run


COLUMNS = [
    common.Column('budget', 'Budget'),
    common.Column('model', 'Model'),
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
    common.Column('gap', 'Gap (test - train loss)', lambda x: f'{x:+.4f}'),
]


def curve_panels(runs_by_budget):
  """Test accuracy, test loss and training loss against steps or seconds."""
  panels = []
  for budget, runs in runs_by_budget.items():
    by_steps = budget.startswith('same steps')
    x = 'step' if by_steps else 'seconds'
    xlabel = 'step' if by_steps else 'wall-clock seconds since the start'
    vlines = () if by_steps else (('budget', FLAGS.seconds),)
    for tag, title, ylabel in (
        ('eval_accuracy', 'test accuracy', 'test accuracy'),
        ('eval_loss', 'test loss', 'test loss'),
        ('loss', 'training loss', 'training objective (batch mean)')):
      panels.append(common.Panel(
          title=f'{budget}: {title}', xlabel=xlabel, ylabel=ylabel,
          lines=[(name, *run.curve(tag, x)) for name, run in runs.items()],
          vlines=vlines))
  return panels


def over_budget_notes(rows):
  """A warning per wall-clock run that overran its budget by over 10%."""
  return [line for row in rows if row['budget'].startswith('same wall clock')
          for line in common.over_budget_note(row['model'], row['wall'],
                                              FLAGS.seconds)]


def write_report(rows, runs_by_budget, descriptions, machine, started):
  out_md, out_png = FLAGS.out + '.md', FLAGS.out + '.png'
  common.plot_panels(curve_panels(runs_by_budget), out_png)
  first = next(iter(descriptions.values()))[0]
  command = common.command_line('experiments.staged_vs_tower', sys.argv[1:])
  lines = common.report_header(
      'Staged vs tower ViT on Fashion-MNIST', command, started, machine) + [
      '',
      'Models (same data, optimiser, batch, augmentation and schedule shape; '
      'only the model differs):',
      '',
  ] + [f'- `{name}`: {text}' for name, (_, text) in descriptions.items()] + [
      '',
      common.markdown_table(rows, COLUMNS),
  ] + over_budget_notes(rows) + [
      f'- Budgets: *same steps* gives every model {FLAGS.steps} steps; '
      f'*same wall clock* gives every run {FLAGS.seconds:.0f} s in all '
      '(data, compilation, training, evaluations), its steps set from a '
      f'{FLAGS.calibration_steps}-step calibration run so that the warm-up '
      f'({100 * first.warmup_steps / first.total_steps:.0f}% of the steps) '
      f'+ {first.decay_type} schedule ends within the budget. Batch '
      f'{first.batch}, {first.optimizer}, peak learning rate '
      f'{first.base_lr}.',
      f'- Train loss / accuracy: `{FLAGS.train_split}` evaluated after '
      'training exactly as the test set is (no dropout, no label '
      'smoothing). The gap, test minus train loss, is the overfitting '
      'figure: larger means more overfitting.',
      *common.cost_notes(first.pp.crop),
  ]
  common.write_report(out_md, out_png, lines)


def run_study():
  started = datetime.datetime.now()
  machine = host.describe_machine()
  available = model_configs()
  unknown = sorted(set(FLAGS.models) - set(available))
  if unknown or not FLAGS.models:
    raise errors.UserError(f'Unknown --models {unknown}; choose from '
                           f'{sorted(available)}.')
  if not FLAGS.steps and not FLAGS.seconds:
    raise errors.UserError('Both --steps and --seconds are 0: nothing to run.')
  descriptions = {name: available[name] for name in FLAGS.models}
  measures = {}
  for name, (config, _) in descriptions.items():
    num_classes = common.num_classes_of(config)
    measures[name] = {
        'params': model_stats.config_params(config, num_classes),
        'flops': model_stats.config_flops(config, num_classes),
        'train_examples': common.num_train_examples(config)}

  rows, runs_by_budget = [], {}
  if FLAGS.steps:
    budget = f'same steps ({FLAGS.steps})'
    runs_by_budget[budget] = {}
    for name, (config, _) in descriptions.items():
      config = common.with_total_steps(config, FLAGS.steps, FLAGS.num_evals)
      row, run = train_and_measure(
          name, config, budget, os.path.join(FLAGS.workdir, f'steps_{name}'),
          measures[name])
      rows.append(row)
      runs_by_budget[budget][name] = run
  if FLAGS.seconds:
    budget = f'same wall clock ({FLAGS.seconds:.0f} s)'
    runs_by_budget[budget] = {}
    for name, (config, _) in descriptions.items():
      config, _ = common.fit_to_seconds(
          name, config, os.path.join(FLAGS.workdir, f'calibrate_{name}'),
          FLAGS.seconds, FLAGS.num_evals, FLAGS.calibration_steps)
      row, run = train_and_measure(
          name, config, budget,
          os.path.join(FLAGS.workdir, f'seconds_{name}'), measures[name])
      rows.append(row)
      runs_by_budget[budget][name] = run
  write_report(rows, runs_by_budget, descriptions, machine, started)


def main(argv):
  common.run_command(run_study, argv)


if __name__ == '__main__':
  app.run(main)
