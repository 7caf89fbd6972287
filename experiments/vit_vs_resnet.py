r"""ViT or CNN on small data? Fashion-MNIST subsets at equal wall clock.

Trains, on the first 10%, 30% and all of the training set, each at the same
wall-clock budget on this machine and, beside it, for the same number of
steps:

- cnn: the CNN baseline, configs/cnn_quickstart.py (a small ResNet with
  the ViT's data, augmentation, optimizer and schedule, chosen at equal
  wall clock by experiments/cnn_baseline.py);
- vit_baseline: the first ViT quickstart (configs/quickstart_patchify.py,
  which is experiments/recipe.py's baseline);
- vit_recipe: the same ViT with the data-efficient recipe
  (configs/quickstart_recipe.py);
- vit_spt_lsa: the same with Shifted Patch Tokenization and Locality
  Self-Attention (arXiv 2112.13492);
- vit_distill: the recipe ViT with DeiT's distillation token, distilled
  (hard, DeiT's default) from the cnn run of the same subset and budget,
  whose training time the report states beside it;
- vit_plain_spt_lsa, vit_plain_distill: SPT/LSA and distillation on the
  quickstart ViT without the recipe (not run by default);
- vit_conv_stem: the first quickstart with an early-convolution stem in
  place of its patchify conv (arXiv 2106.14881);
- cct: CCT-2/3x2 (configs/cct_fashion_mnist.py: CCT's tokenizer, CCT's
  blocks, SeqPool);
- hybrid: convolution stages, then transformer blocks
  (configs/hybrid_fashion_mnist.py);
- quickstart: configs/quickstart.py, the transformer this study chose;
- quickstart_* and cnn_* variants (QUICKSTART_VARIANTS, CNN_VARIANTS;
  --help lists them): the quickstart with SeqPool, 3 blocks or batch 128
  or 64, and both it and the CNN at batch 128, without random erasing or
  with padded random crops besides the flips: the sweep of these at 150 s;
  and the CNN wider or with two units per stage, for longer budgets.

A model given as `name@lr` (e.g. `vit_baseline@0.004`) trains at that
peak learning rate instead of its config's, so one command can tune a
model's learning rate at the budget beside the others, as
experiments/cnn_baseline.py tuned the CNN's; `name+muon` (also
`name+muon@lr`) trains it with Muon on its hidden matrices.

Every run is tested on the whole test split. Writes OUT.md (tables of the
measured numbers) and OUT.png (the curves), from these runs only:

  python -m experiments.vit_vs_resnet --out=docs/vit_vs_resnet \
      --seconds=150 --steps=400 --calibration_steps=60
"""

import dataclasses
import os
from typing import Any, Callable, Dict, List, Optional, Tuple

import ml_collections

from experiments import budget as budget_lib
from experiments import cli
from experiments import recipe
from experiments import report
from experiments import study
from vit_flax import errors
from vit_flax.configs import cct_fashion_mnist
from vit_flax.configs import cnn_quickstart
from vit_flax.configs import common
from vit_flax.configs import hybrid_fashion_mnist
from vit_flax.configs import quickstart
from vit_flax.configs import quickstart_recipe
from vit_flax.models import patch_embed


def with_spt_lsa(
    config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  with config.unlocked():
    config.model.patch_embedding = 'spt'
    config.model.transformer.attention = 'lsa'
  return config


def with_distillation(
    config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  with config.unlocked():
    config.model.classifier = 'token_distill'
  return config


def spt_lsa_config() -> ml_collections.ConfigDict:
  return with_spt_lsa(quickstart_recipe.get_config())


def distill_config() -> ml_collections.ConfigDict:
  return with_distillation(quickstart_recipe.get_config())


def plain_spt_lsa_config() -> ml_collections.ConfigDict:
  """SPT/LSA on the quickstart without the recipe, whose stronger
  regularisation needs more steps than a short budget gives."""
  return with_spt_lsa(recipe.baseline_config())


def plain_distill_config() -> ml_collections.ConfigDict:
  return with_distillation(recipe.baseline_config())


def patch4_config() -> ml_collections.ConfigDict:
  """The quickstart on a 7x7 grid of 4x4 patches: three times the tokens,
  narrowed to width 64 to keep the step time within about 2.5x."""
  config = recipe.baseline_config()
  with config.unlocked():
    config.model.model_name = 'quickstart_patch4'
    config.model.patches.size = (4, 4)
    config.model.hidden_size = 64
    config.model.transformer.mlp_dim = 128
  return config


def conv_stem_config() -> ml_collections.ConfigDict:
  """The first quickstart with the early-convolution stem of arXiv
  2106.14881 in place of its 7x7 patchify conv: three stride-2 3x3 convs
  (24, 48, 96 channels, GroupNorm, ReLU) and a 1x1 conv make the same 4x4
  grid of tokens."""
  config = recipe.baseline_config()
  with config.unlocked():
    config.model.model_name = 'quickstart_conv_stem'
    config.model.patch_embedding = 'conv_stem'
    config.model.tokenizer.layers = 3
    config.model.tokenizer.width = 24
  return config


def with_changes(make_config: Callable[[], ml_collections.ConfigDict],
                 changes: Dict[str, Any], model_name: Optional[str] = None
                 ) -> Callable[[], ml_collections.ConfigDict]:
  """`make_config` with the dotted fields of `changes` set, and renamed."""
  def make():
    config = make_config().unlock()
    if model_name:
      config.model.model_name = model_name
    config.update_from_flattened_dict(changes)
    return config.lock()
  return make


def describe(config: ml_collections.ConfigDict) -> str:
  """The model of a config in a few words."""
  model = config.model
  if config.get('model_type', 'vit') == 'resnet':
    width = int(64 * model.width_factor)
    widths = ', '.join(str(width * 2**i) for i in range(len(model.num_layers)))
    return (f'ResNet, {model.stem} stem, {sum(model.num_layers)} '
            f'{"bottleneck" if model.bottleneck else "basic"} units in '
            f'stages of widths {widths}, GroupNorm of {model.norm_groups} '
            'groups')
  embedding = model.get('patch_embedding', 'conv')
  if model.get('resnet') is not None:
    root = model.resnet
    return (f'hybrid: a BiT root ({root.stem} stem, '
            f'{len(root.num_layers)} stages of '
            f'{"bottleneck" if root.bottleneck else "basic"} units '
            f'{tuple(root.num_layers)}, width factor {root.width_factor:g}), '
            f'{model.patches.size[0]}x{model.patches.size[0]} patches of its '
            f'feature map, then {model.transformer.num_layers} blocks of '
            f'width {model.hidden_size}, {model.classifier} head')
  grid = patch_embed.token_grid(
      (config.pp.crop, config.pp.crop), embedding,
      tuple(model.patches.size), model.get('tokenizer'))[0]
  if embedding in patch_embed.TOKENIZERS:
    settings = patch_embed.tokenizer_settings(embedding, model.tokenizer)
    entry = (f'a {settings["layers"]}-layer '
             f'{"CCT tokenizer" if embedding == "cct" else "conv stem"}')
  else:
    patch = model.patches.size[0]
    entry = f'{patch}x{patch} patches'
  extras = [name for name, on in (
      ('SPT', model.get('patch_embedding') == 'spt'),
      ('LSA', model.transformer.get('attention') == 'lsa'),
      ('locality', model.get('locality')),
      ('distillation token', model.classifier == 'token_distill')) if on]
  return (f'ViT, {model.transformer.num_layers} blocks of width '
          f'{model.hidden_size}, {entry} ({grid}x{grid} grid), '
          f'{model.classifier} head'
          + (f', {", ".join(extras)}' if extras else ''))


# Name -> (table name, config).
MODELS: Dict[str, Tuple[str, Callable[[], ml_collections.ConfigDict]]] = {
    'cnn': ('CNN', cnn_quickstart.get_config),
    'vit_baseline': ('ViT quickstart (first)', recipe.baseline_config),
    'vit_patch4': ('ViT quickstart, 4x4 patches', patch4_config),
    'vit_recipe': ('ViT + recipe', quickstart_recipe.get_config),
    'vit_spt_lsa': ('ViT + recipe + SPT/LSA', spt_lsa_config),
    'vit_distill': ('ViT + recipe + distillation from the CNN',
                    distill_config),
    'vit_plain_spt_lsa': ('ViT quickstart + SPT/LSA', plain_spt_lsa_config),
    'vit_plain_distill': ('ViT quickstart + distillation from the CNN',
                          plain_distill_config),
    'vit_conv_stem': ('ViT quickstart, conv stem', conv_stem_config),
    'cct': ('CCT-2/3x2', cct_fashion_mnist.get_config),
    'hybrid': ('C-C-T hybrid', hybrid_fashion_mnist.get_config),
    'quickstart': ('Quickstart (configs/quickstart.py)', quickstart.get_config),
}
# The 150 s sweep of the quickstart's head, depth, batch and augmentation,
# and of the same training fields on the CNN: name -> (table name, changed
# config fields).
QUICKSTART_VARIANTS = {
    'quickstart_seqpool': ('Quickstart, SeqPool head',
                           {'model.classifier': 'seqpool'}),
    'quickstart_batch128': ('Quickstart, batch 128', {'batch': 128}),
    'quickstart_batch64': ('Quickstart, batch 64', {'batch': 64}),
    'quickstart_3_blocks': ('Quickstart, 3 blocks',
                            {'model.transformer.num_layers': 3}),
    'quickstart_3_blocks_batch128': (
        'Quickstart, batch 128, 3 blocks',
        {'batch': 128, 'model.transformer.num_layers': 3}),
    'quickstart_no_erasing': ('Quickstart, no random erasing',
                              {'pp.random_erase': 0.0}),
    'quickstart_batch128_no_erasing': (
        'Quickstart, batch 128, no random erasing',
        {'batch': 128, 'pp.random_erase': 0.0}),
    'quickstart_batch128_pad_crop': (
        'Quickstart, batch 128, padded crops',
        {'batch': 128, 'pp.augment': 'pad_crop_flip'}),
}
CNN_VARIANTS = {
    'cnn_batch128': ('CNN, batch 128', {'batch': 128}),
    'cnn_no_erasing': ('CNN, no random erasing', {'pp.random_erase': 0.0}),
    'cnn_pad_crop': ('CNN, padded crops', {'pp.augment': 'pad_crop_flip'}),
    # experiments/cnn_baseline.py's runners-up (wider; two units per stage),
    # for longer budgets, in the recipe that paid the CNN at 150 s.
    'cnn_x0.75_no_erasing': (
        'CNN x0.75 (48-96-192), no random erasing',
        {'model.width_factor': 0.75, 'pp.random_erase': 0.0,
         'model.model_name': 'ResNet-imagenet_111_x0.75_gn8'}),
    'cnn_222_no_erasing': (
        'CNN 2-2-2 units, no random erasing',
        {'model.num_layers': (2, 2, 2), 'pp.random_erase': 0.0,
         'model.model_name': 'ResNet-imagenet_222_x0.5_gn8'}),
}
MODELS.update({
    key: (name, with_changes(quickstart.get_config, changes, key))
    for key, (name, changes) in QUICKSTART_VARIANTS.items()})
# The CNN's model name is its architecture's: only new architectures rename
# it.
MODELS.update({
    key: (name, with_changes(cnn_quickstart.get_config, changes))
    for key, (name, changes) in CNN_VARIANTS.items()})
TEACHER = 'cnn'
# The CNNs, which `outcome` sets against the rest.
CNNS = frozenset({TEACHER, *CNN_VARIANTS})
# The models that learn from the teacher.
DISTILLED = frozenset({'vit_distill', 'vit_plain_distill'})
# What the default run compares: the ladder of ingredients.
DEFAULT_MODELS = ('cnn', 'vit_baseline', 'vit_recipe', 'vit_spt_lsa',
                  'vit_distill')


@dataclasses.dataclass(frozen=True)
class Options(cli.StudyOptions):
  out: str = cli.out_option('docs/vit_vs_resnet')
  workdir: str = cli.workdir_option('/tmp/vit_vs_resnet')
  models: Tuple[str, ...] = cli.option(
      DEFAULT_MODELS, f'Models to compare, from: {", ".join(MODELS)} '
      f'(the distilled ones need {TEACHER}, their teacher); NAME@LR trains '
      'NAME at peak learning rate LR.')
  percents: Tuple[int, ...] = cli.option(
      (10, 30, 100), 'Training subsets: the first so many percent of the '
      'training set.')
  seconds: float = cli.option(240.0, 'Wall-clock budget of every run (0: '
                              'skip).')
  steps: int = cli.option(2000, 'Steps of every run of the same-steps '
                          'comparison (0: skip).')
  calibration_steps: int = cli.option(
      120, 'Steps of the run that times each model.')
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


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """A --models entry: a model of MODELS, with its config's optimizer or
  Muon (`muon`), at its config's learning rate or at `lr`."""

  model: str
  lr: Optional[float] = None
  muon: bool = False

  @property
  def key(self) -> str:
    """Names its workdirs: the model, its optimizer if changed, and the
    learning rate if given."""
    key = self.model + ('_muon' if self.muon else '')
    return key if self.lr is None else f'{key}_lr{self.lr:g}'

  @property
  def name(self) -> str:
    """Its name in the tables."""
    name = MODELS[self.model][0] + (', Muon' if self.muon else '')
    return name if self.lr is None else f'{name}, lr {self.lr:g}'

  def config(self) -> ml_collections.ConfigDict:
    config = MODELS[self.model][1]()
    with config.unlocked():
      if self.lr is not None:
        config.base_lr = self.lr
      if self.muon:
        # Muon on the hidden matrices, AdamW (the configs' optimizer) on
        # the rest, at one learning rate (config.muon.consistent_rms).
        config.optimizer = 'muon'
    return config


def parse_models(models) -> List[ModelSpec]:
  """--models as ModelSpecs; a clear error for an unknown name or a bad
  learning rate."""
  specs = []
  for entry in models:
    model, _, lr = entry.partition('@')
    model, plus, optimizer = model.partition('+')
    if model not in MODELS:
      raise errors.UserError(
          f'Unknown model {model!r} in --models; choose from '
          f'{", ".join(MODELS)}, each optionally as NAME+muon, NAME@LR or '
          'NAME+muon@LR.')
    if plus and optimizer != 'muon':
      raise errors.UserError(
          f'--models entry {entry!r}: the only optimizer a model takes '
          f'after + is muon (e.g. {model}+muon), not {optimizer!r}.')
    value = None
    if lr:
      try:
        value = float(lr)
      except ValueError:
        value = -1.0
      if not value > 0:
        raise errors.UserError(
            f'--models entry {entry!r}: the learning rate after @ must be a '
            'positive number, e.g. vit_baseline@0.004.')
    specs.append(ModelSpec(model, value, muon=bool(plus)))
  if len({s.key for s in specs}) != len(specs):
    raise errors.UserError(f'--models {",".join(models)} names a model '
                           'twice with the same optimizer and learning '
                           'rate.')
  return specs


def teacher_spec(specs: List[ModelSpec]) -> Optional[ModelSpec]:
  """The CNN that distilled ViTs learn from: the first one given."""
  return next((s for s in specs if s.model == TEACHER), None)


def teacher_for(teacher: ModelSpec, percent: int):
  """`for_budget` of a distilled student: the teacher is the CNN run of the
  same subset at the same budget (its final checkpoint)."""
  def set_teacher(config, budget, workdir):
    config = ml_collections.ConfigDict(config.to_dict())
    config.distill.teacher = os.path.join(
        workdir, f'{budget.kind}_{teacher.key}_{percent}')
    config.distill.teacher_checkpoint = 'latest'
    return config
  return set_teacher


def variants(options: Options) -> List[study.Variant]:
  """A run per (model, subset): the teacher first in each subset."""
  if not options.models:
    raise errors.UserError(f'--models is empty; choose from '
                           f'{", ".join(MODELS)}.')
  specs = parse_models(options.models)
  teacher = teacher_spec(specs)
  students = [s.model for s in specs if s.model in DISTILLED]
  if students and teacher is None:
    raise errors.UserError(
        f'--models has {students[0]} but not {TEACHER}, its teacher: add '
        f'{TEACHER}.')
  if not options.percents:
    raise errors.UserError('--percents is empty: give e.g. 10,30,100.')
  order = sorted(specs, key=lambda s: s != teacher)
  result = []
  for percent in options.percents:
    for spec in order:
      config = options.with_data(spec.config())
      config.pp.train = subset_split(percent)
      result.append(study.Variant(
          f'{spec.key}_{percent}', f'{spec.name} {percent}%', config,
          {'model': spec.name, 'model_key': spec.model, 'percent': percent,
           'base_lr': config.base_lr},
          subset_split(min(percent, options.train_eval_percent)),
          keep_checkpoint=bool(students) and spec == teacher,
          for_budget=(teacher_for(teacher, percent)
                      if spec.model in DISTILLED else None)))
  return result


def budgets(options: Options) -> List[budget_lib.Budget]:
  return budget_lib.budgets_of(options.steps, options.seconds,
                               options.calibration_steps)


COLUMNS = [
    report.Column('model', 'Model'),
    report.Column('percent', 'Train data', lambda x: f'{x}%'),
    report.Column('train_examples', 'Examples', str),
    report.Column('base_lr', 'Peak lr', lambda x: f'{x:g}'),
    report.PARAMS,
    report.FLOPS,
    *report.RUN_COLUMNS,
    report.Column('with_teacher', 'Wall incl. teacher (s)',
                  lambda x: f'{x:.0f}'),
]


def add_teacher_time(rows, teacher: Optional[ModelSpec]):
  """Distilled rows get the wall time of their teacher's run added."""
  if teacher is None:
    return
  walls = {(r['budget'], r['percent']): r['wall'] for r in rows
           if r['model'] == teacher.name}
  for row in rows:
    if row['model_key'] in DISTILLED:
      row['with_teacher'] = row['wall'] + walls[row['budget'], row['percent']]


def outcome(rows, budget) -> List[str]:
  """Whether the best ViT matches the best CNN, subset by subset."""
  lines = []
  for percent in sorted({r['percent'] for r in rows}):
    here = [r for r in rows if r['percent'] == percent and
            r['budget'] == budget.label]
    cnns = [r for r in here if r['model_key'] in CNNS]
    vits = [r for r in here if r['model_key'] not in CNNS]
    if not cnns or not vits:
      continue
    cnn = max(cnns, key=lambda r: r['test_accuracy'])
    best = max(vits, key=lambda r: r['test_accuracy'])
    gap = best['test_accuracy'] - cnn['test_accuracy']
    without = [r for r in vits if r['model_key'] not in DISTILLED]
    best_alone = max(without, key=lambda r: r['test_accuracy'],
                     default=None)
    verdict = 'matches or beats' if gap >= 0 else 'falls short of'
    line = (f'- {percent}% of the data: the best ViT ({best["model"]}, '
            f'{report.format_percent(best["test_accuracy"])}) {verdict} the '
            f'{"best " if len(cnns) > 1 else ""}CNN ({cnn["model"]}, '
            f'{report.format_percent(cnn["test_accuracy"])}) by '
            f'{report.format_points(gap)} points')
    if best['model_key'] in DISTILLED and best_alone is not None:
      alone_gap = best_alone['test_accuracy'] - cnn['test_accuracy']
      line += (f'; it needed the CNN as its teacher, so counting the '
               f'teacher\'s training it took {best["with_teacher"]:.0f} s '
               f'against the CNN\'s {cnn["wall"]:.0f} s. Without a '
               f'teacher the best ViT ({best_alone["model"]}) is '
               f'{report.format_points(alone_gap)} points from the CNN')
    lines.append(line + '.')
  return lines


def panels(options, results: study.StudyResults):
  """Accuracy and overfitting against the subset per budget, then the
  curves of the full-data runs."""
  out = []
  for budget in results.budgets:
    rows = [r for r in results.rows if r['budget'] == budget.label]
    by_model = {}
    for row in rows:
      by_model.setdefault(row['model'], []).append(row)
    for key, title in (('test_accuracy', 'test accuracy'),
                       ('accuracy_gap', 'train minus test accuracy')):
      out.append(report.Panel(
          f'{budget.label}: {title}', 'training data (%)', title,
          [(name, [r['percent'] for r in model_rows],
            [r.get(key, float('nan')) for r in model_rows])
           for name, model_rows in by_model.items()]))
  largest = max(options.percents)
  for budget in results.budgets:
    runs = {label: run for label, run in results.runs_at(budget).items()
            if label.endswith(f' {largest}%')}
    out += report.budget_panels(budget, runs)[:1]
  return out


def training_differs(config, recipe_config) -> bool:
  """Whether a config trains otherwise than the Fashion-MNIST recipe."""
  fields = ('optimizer', 'weight_decay', 'label_smoothing', 'batch',
            'total_steps', 'warmup_steps', 'decay_type', 'ema_decay',
            'mixup', 'cutmix')
  return (any(config[f] != recipe_config[f] for f in fields) or
          config.pp.to_dict() != recipe_config.pp.to_dict())


def training_notes(options: Options, specs: List[ModelSpec]) -> List[str]:
  """How the runs were trained, saying only what holds for the models that
  this report compares."""
  first = common.fashion_mnist_training()
  models = {s.model for s in specs}
  recipe_models = models & {'vit_recipe', 'vit_spt_lsa', 'vit_distill'}
  configs = {spec: spec.config() for spec in specs
             if not spec.muon and spec.model not in recipe_models}
  others = sorted(
      f'{spec.name} ({config.optimizer}, {config.total_steps} steps)'
      for spec, config in configs.items() if training_differs(config, first))
  notes = [
      '- Every model trains with the data, augmentation, optimizer and '
      'schedule of the Fashion-MNIST configs (`common.fashion_mnist_'
      f'training`: {first.optimizer}, warm-up then {first.decay_type}, '
      f'a {first.total_steps}-step schedule fitted to each budget) at the '
      'peak learning rate in its '
      'row: its config\'s unless its name gives one (the first quickstart '
      f'has {first.base_lr:g}, configs/cnn_quickstart.py '
      f'{cnn_quickstart.get_config().base_lr:g}, chosen at 150 s by '
      'experiments/cnn_baseline.py).'
      + (' The recipe ViTs add the recipe of configs/quickstart_recipe.py '
         'to it.' if recipe_models else '')
      + (f' These use their own configs\' training: {", ".join(others)}.'
         if others else '')
      + (' ", Muon" in a name: Muon on the hidden matrices and AdamW on the '
         'rest (`config.optimizer=\'muon\'`), at the same learning rate.'
         if any(spec.muon for spec in specs) else ''),
      '- Subsets are the first examples of the training set (TFDS slicing, '
      'e.g. `train[:10%]`); a smaller subset is seen for more epochs. The '
      'test accuracy is over the whole test split.',
  ]
  if options.seconds:
    notes.append(
        '- A wall-clock budget covers the whole run (data, compilation, '
        'training, evaluations); each model\'s steps were fitted to it after '
        f'a {options.calibration_steps}-step calibration run, keeping the '
        'whole schedule.')
  if models & DISTILLED:
    notes.append(
        '- A distilled ViT learns from the CNN run of the same subset and '
        'budget (hard distillation on its final params); "Wall incl. '
        'teacher" adds that run\'s wall time.')
  notes.append(
      '- Train acc.: the first min(subset, '
      f'{options.train_eval_percent}%) of the training set, which every run '
      'trained on, evaluated after training as the test set is (no label '
      'smoothing, no augmentation): the gap to the test accuracy shows '
      'overfitting.')
  return notes


def write_report(options: Options, results: study.StudyResults):
  rows = results.rows
  specs = parse_models(options.models)
  teacher = teacher_spec(specs)
  add_teacher_time(rows, teacher)
  descriptions = [f'- {spec.name} ({spec.model}): {describe(spec.config())}'
                  for spec in sorted(specs, key=lambda s: s != teacher)]
  lines = results.header('ViT or CNN on small data: subsets of Fashion-MNIST')
  lines += ['', 'Models:', '', *descriptions, '']
  for budget in results.budgets:
    budget_rows = [r for r in rows if r['budget'] == budget.label]
    lines += [f'## {budget.label[0].upper()}{budget.label[1:]}', '',
              report.markdown_table(budget_rows, COLUMNS)]
    lines += ['Outcome:', '', *(outcome(rows, budget) or [
        '- No subset has both a CNN and a transformer to compare; the '
        'other reports of the study hold their counterparts.']), '']
  lines += [
      '## Notes',
      '',
      *training_notes(options, specs),
      *report.off_budget_notes(rows),
      *report.cost_notes(common.fashion_mnist_training().pp.crop),
  ]
  report.write_report(options.out, lines, panels(options, results), ncols=2)


STUDY = study.Study('experiments.vit_vs_resnet', Options, variants, budgets,
                    write_report)


if __name__ == '__main__':
  STUDY.run_as_command()
