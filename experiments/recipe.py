r"""What each ingredient of the data-efficient recipe is worth, at equal time.

An ablation in the style of DeiT's (arXiv 2012.12877, Table 8) on
Fashion-MNIST, every run given the same wall-clock budget on this machine: the
first quickstart (configs/quickstart_patchify.py, the baseline), then that
baseline with one ingredient added (mixup, CutMix, RandAugment,
TrivialAugment-wide, stochastic depth, an EMA of the weights), then the
combination of configs/quickstart_recipe.py. Each run's step count is fitted to
the budget after a short calibration run, so a costlier ingredient pays with
fewer steps. Writes OUT.md (a table of the measured numbers) and OUT.png (the
curves), from these runs only:

  python -m experiments.recipe --out=docs/recipe --seconds=600
"""

import dataclasses
from typing import Any, Callable, Dict, List, Tuple

import ml_collections

from experiments import budget
from experiments import cli
from experiments import report
from experiments import study
from vit_flax import errors
from vit_flax.configs import quickstart_patchify
from vit_flax.configs import quickstart_recipe
from vit_flax.models import presets


def baseline_config() -> ml_collections.ConfigDict:
  """The first quickstart (configs/quickstart_patchify.py), its fields
  spelled out: what the ingredients join."""
  config = quickstart_patchify.get_config()
  with config.unlocked():
    config.model = presets.vit_config(
        'quickstart_baseline', patch=7, hidden_size=96, mlp_dim=192,
        num_heads=4, num_layers=4, classifier='gap')
    config.model.locality = True
    config.pp.augment = 'flip'
    config.pp.random_erase = 0.5
    config.pp.randaugment = ()
    config.pp.trivial_augment = False
    config.mixup = config.cutmix = 0.0
    config.ema_decay = 0.0
    config.base_lr = 2e-3
    config.weight_decay = 0.05
    config.label_smoothing = 0.1
    config.batch = 256
    config.total_steps = 5_000
    config.warmup_steps = 250
  return config


def _set(**fields) -> Callable[[ml_collections.ConfigDict], None]:
  """A change of `fields` (dotted names) to a config."""
  def change(config):
    for name, value in fields.items():
      node = config
      *parents, last = name.split('.')
      for key in parents:
        node = node[key]
      node[last] = value
  return change


# Name -> (what is added, the change to the baseline).
INGREDIENTS: Dict[str, Tuple[str, Callable[[Any], None]]] = {
    'mixup': ('mixup, alpha 0.8', _set(mixup=0.8)),
    'cutmix': ('CutMix, alpha 1.0', _set(cutmix=1.0)),
    'mixup_cutmix': ('mixup 0.8 or CutMix 1.0 (switch 0.5, as DeiT)',
                     _set(mixup=0.8, cutmix=1.0)),
    'randaugment': ('RandAugment (2 ops, magnitude 9)',
                    _set(**{'pp.randaugment': (2, 9)})),
    'trivial_augment': ('TrivialAugment-wide',
                        _set(**{'pp.trivial_augment': True})),
    'stochastic_depth': ('stochastic depth 0.1',
                         _set(**{'model.transformer.stochastic_depth': 0.1})),
    'ema': ('EMA of the weights, decay 0.999',
            _set(ema_decay=0.999)),
}


@dataclasses.dataclass(frozen=True)
class Options(cli.StudyOptions):
  out: str = cli.out_option('docs/recipe')
  workdir: str = cli.workdir_option('/tmp/recipe')
  ingredients: Tuple[str, ...] = cli.option(
      tuple(INGREDIENTS), 'Ingredients added one at a time to the baseline, '
      f'from: {", ".join(INGREDIENTS)}.')
  seconds: float = cli.option(600.0, 'Wall-clock budget of every run.')
  calibration_steps: int = cli.option(
      120, 'Steps of the run that times each variant.')
  train_eval_split: str = cli.train_eval_split_option()


def variants(options: Options) -> List[study.Variant]:
  unknown = sorted(set(options.ingredients) - set(INGREDIENTS))
  if unknown:
    raise errors.UserError(f'Unknown --ingredients {unknown}; choose from '
                           f'{", ".join(INGREDIENTS)}.')
  baseline = options.with_data(baseline_config())
  result = [study.Variant('baseline', 'baseline', baseline,
                          {'variant':
                               'baseline (configs/quickstart_patchify.py)'},
                          options.train_eval_split)]
  for name in options.ingredients:
    what, change = INGREDIENTS[name]
    config = ml_collections.ConfigDict(baseline.to_dict())
    change(config)
    result.append(study.Variant(name, f'+ {name}', config,
                                {'variant': f'+ {what}'},
                                options.train_eval_split))
  result.append(study.Variant(
      'recipe', 'recipe', options.with_data(quickstart_recipe.get_config()),
      {'variant': 'the combination (configs/quickstart_recipe.py)'},
      options.train_eval_split))
  return result


def budgets(options: Options) -> List[budget.Budget]:
  return [budget.same_wall_clock(options.seconds, options.calibration_steps)]


DELTA = report.Column('delta', 'vs baseline (points)', report.format_points)
COLUMNS = [report.Column('variant', 'Variant'), report.PARAMS, report.FLOPS,
           *report.RUN_COLUMNS, DELTA]


def quickstart_changes() -> List[str]:
  """How configs/quickstart_recipe.py differs from the baseline, field by
  field."""
  flat_base = _flatten(baseline_config().to_dict())
  flat_now = _flatten(quickstart_recipe.get_config().to_dict())
  changed = sorted(k for k in set(flat_base) | set(flat_now)
                   if flat_base.get(k) != flat_now.get(k)
                   and not k.endswith('model_name'))
  return [f'`{k}`: {flat_base.get(k)!r} -> {flat_now.get(k)!r}'
          for k in changed]


def _flatten(tree, prefix=''):
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


def write_report(options: Options, results: study.StudyResults):
  rows = results.rows
  base = next(r for r in rows if r['label'] == 'baseline')
  for row in rows:
    row['delta'] = row['test_accuracy'] - base['test_accuracy']
  (the_budget,) = results.budgets
  runs = results.runs_at(the_budget)
  lines = results.header(
      'The data-efficient recipe on Fashion-MNIST, one ingredient at a time')
  lines += [
      '',
      f'Every run had the same wall-clock budget, {options.seconds:.0f} s on '
      'this machine (data, compilation, training and the evaluations); its '
      'steps were fitted to the budget after a '
      f'{options.calibration_steps}-step calibration run, with the whole '
      'warm-up + cosine schedule kept, so a costlier ingredient trains for '
      'fewer steps.',
      '',
      report.markdown_table(rows, COLUMNS),
      '- Baseline: configs/quickstart_patchify.py (a ViT '
      'of 4 blocks of width 96 on 7x7 patches with locality and a '
      'mean-pooled head; AdamW, label smoothing 0.1, flips and random '
      'erasing 0.5). Each "+" row adds one ingredient to it; the last row is '
      'configs/quickstart_recipe.py, which differs from the baseline in: '
      + '; '.join(quickstart_changes()) + '.',
      '- Test acc.: the last evaluation, over the 10,000 test images; for '
      'runs with an EMA of the weights it is the EMA\'s (what their best '
      'checkpoint and export hold). Train acc.: the first '
      f'{options.train_eval_split} examples, evaluated after training as the '
      'test set is; the gap (train minus test) shows overfitting.',
      *report.off_budget_notes(rows),
      *report.cost_notes(baseline_config().pp.crop),
  ]
  report.write_report(options.out, lines,
                      report.budget_panels(the_budget, runs), ncols=2)


STUDY = study.Study('experiments.recipe', Options, variants, budgets,
                    write_report)


if __name__ == '__main__':
  STUDY.run_as_command()
