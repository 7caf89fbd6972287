"""Tests of the experiment commands: timing, budgets, configs and reports."""

import dataclasses
import functools
import json
import os
import re
import subprocess
import sys

from absl import flags
import ml_collections
import numpy as np
import pytest

from experiments import budget
from experiments import cli
from experiments import cnn_baseline
from experiments import curriculum
from experiments import locality
from experiments import patch_size
from experiments import recipe
from experiments import report
from experiments import runs
from experiments import staged_vs_tower
from experiments import vit_vs_resnet
from vit_flax import errors
from vit_flax.configs import cnn_quickstart
from vit_flax.configs import common as common_config
from vit_flax.configs import quickstart_patchify
from vit_flax.data import datasets
from vit_flax.models import stats

import helpers
from helpers import tiny_model_config
from helpers import write_fashion_mnist

NUM_TRAIN, NUM_TEST = 512, 200


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  """A small random Fashion-MNIST in IDX files."""
  directory = str(tmp_path_factory.mktemp('fashion_mnist'))
  write_fashion_mnist(directory, NUM_TRAIN, NUM_TEST)
  return directory


# Every study starts through `study.Study.run_as_command`; two stand for all.
@pytest.mark.slow
@pytest.mark.parametrize('name,own_flag', [('locality', '--train_split'),
                                           ('staged_vs_tower', '--models')])
def test_study_commands_start(name, own_flag):
  # Their flags must not clash with those of the modules they import.
  result = subprocess.run(
      [sys.executable, '-m', f'experiments.{name}', '--help'],
      capture_output=True, text=True, timeout=120,
      cwd=helpers.REPO)
  # absl's --help exits with 1 after printing the flags.
  assert 'Error' not in result.stderr, result.stderr[-2000:]
  # --help lists the flags of the study, shared ones included.
  for flag in ('--steps', own_flag, '--workdir', '--num_evals'):
    assert flag in result.stdout, result.stdout[-2000:]


def points(steps_and_times, value=0.0):
  return [runs.Scalar(step, time, value) for step, time in steps_and_times]


def test_steady_step_seconds_times_steps_inside_phases():
  # Writes every 5 steps; 14 px up to step 15, then 21 px. A step takes
  # 0.2 s at 14 px and 0.4 s at 21 px. The run's first window and the one
  # where 21 px begins compile (+10 s each), the one before starts the
  # 21 px input pipeline (+3 s), and one 21 px window stalls (+3 s).
  steps = list(range(5, 45, 5))
  size = {s: 14 if s <= 15 else 21 for s in steps}
  extra = {5: 10.0, 15: 3.0, 20: 10.0, 30: 3.0}
  times, now = {}, 0.0
  for step in steps:
    now += (0.2 if size[step] == 14 else 0.4) * 5 + extra.get(step, 0.0)
    times[step] = now
  loss = points([(s, times[s]) for s in steps])
  image_size = [runs.Scalar(s, times[s], size[s]) for s in steps]
  timed = budget.steady_step_seconds(loss, image_size)
  assert timed.keys() == {14, 21}
  assert timed[14] == pytest.approx(0.2)
  assert timed[21] == pytest.approx(0.4)


def tiny_config(data_dir, **overrides) -> ml_collections.ConfigDict:
  config = common_config.get_config()
  config.dataset = 'fashion_mnist'
  config.tfds_manual_dir = data_dir
  config.pp.crop = 28
  config.pp.augment = 'none'
  config.model = tiny_model_config(patch=7)
  config.optimizer = 'adamw'
  config.optim_dtype = 'float32'
  config.base_lr = 1e-3
  config.batch = 32
  config.batch_eval = 100
  config.total_steps = 100
  config.warmup_steps = 10
  config.shuffle_buffer = 64
  config.update(overrides)
  return config


def test_calibrate_times_every_curriculum_size(data_dir, tmp_path):
  config = tiny_config(data_dir)
  config.pp.curriculum = ((0, 14), (50, 28))
  timing = budget.calibrate('tiny', config, str(tmp_path), steps=30,
                            progress_every=3)
  times = dict(timing.size_step_seconds)
  assert times.keys() == {14, 28}
  # Half the steps at each size: the mean step is their plain mean.
  assert timing.step_seconds == pytest.approx((times[14] + times[28]) / 2)
  assert timing.overhead_seconds > 0 and timing.eval_seconds > 0
  fits = timing.steps_within(100.0, num_evals=2)
  assert (timing.overhead_seconds + 2 * timing.eval_seconds +
          fits * timing.step_seconds) <= 100.0
  assert (timing.overhead_seconds + 2 * timing.eval_seconds +
          (fits + 1) * timing.step_seconds) > 100.0


def fake_run_training(name, config, workdir):
  """A run whose steps take 1 s each, writing what a real run writes."""
  phases = curriculum.phases_of(config)
  size_at = {step: p.image_size for p in phases
             for step in range(p.start_step + 1, p.end_step + 1)}
  logged = range(config.progress_every, config.total_steps + 1,
                 config.progress_every)
  end = float(config.total_steps)
  accuracy = 1 - 1 / (config.total_steps + 1)  # More steps, more accuracy.
  scalars = {'loss': [runs.Scalar(s, float(s), 1.0) for s in logged],
             'image_size': [runs.Scalar(s, float(s), size_at[s])
                            for s in logged],
             'img_per_sec_per_device': [runs.Scalar(s, float(s), config.batch)
                                        for s in logged],
             'eval_loss': [runs.Scalar(config.total_steps, end + 1, 1.0)],
             'eval_accuracy': [runs.Scalar(config.total_steps, end + 1,
                                           accuracy)]}
  return runs.Run(name, config, workdir, start_time=0.0,
                  wall_seconds=end + 2, scalars=scalars, params=None)


def test_calibrate_refuses_what_it_cannot_time(data_dir, monkeypatch):
  monkeypatch.setattr(runs, 'run_training', fake_run_training)
  config = tiny_config(data_dir)
  config.pp.curriculum = ((0, 14), (50, 28))
  timing = budget.calibrate('tiny', config, '/unused', steps=18,
                            progress_every=3)
  assert timing.size_step_seconds == ((14, 1.0), (28, 1.0))
  config.pp.curriculum_unit = 'epochs'
  with pytest.raises(errors.ConfigError, match='steps'):
    budget.calibrate('tiny', config, '/unused', steps=12)
  # Shrunk to 12 steps, the 14 px phase is 1 step long: between two of
  # the writes every 3 steps, it is never timed.
  config.pp.curriculum_unit = 'steps'
  config.pp.curriculum = ((0, 14), (10, 28))
  with pytest.raises(errors.UserError, match=r'\[14\] px'):
    budget.calibrate('tiny', config, '/unused', steps=12, progress_every=3)


def test_with_total_steps_scales_the_schedule():
  config = quickstart_patchify.get_config()
  config = budget.with_total_steps(config, 400, num_evals=4)
  assert (config.total_steps, config.warmup_steps) == (400, 20)
  assert config.eval_every == 100
  assert config.checkpoint_every == 0 and not config.eval_figures


def fake_timing(step_ms_by_size, overhead=12.0, eval_seconds=2.0):
  return budget.Timing(
      step_seconds=float(np.mean(list(step_ms_by_size.values()))) / 1e3,
      overhead_seconds=overhead, eval_seconds=eval_seconds,
      size_step_seconds=tuple((s, ms / 1e3)
                              for s, ms in step_ms_by_size.items()))


def test_both_schedules_are_fitted_to_the_budget_alike(monkeypatch):
  options = curriculum.Options(seconds=300.0, num_evals=4)
  configs = curriculum.schedule_configs(options)
  assert set(configs) == {'fixed', 'curriculum'}
  timings = {'fixed': fake_timing({28: 100}),
             'curriculum': fake_timing({14: 30, 21: 70, 28: 100})}
  calls = []

  def calibrate(name, config, workdir, steps, progress_every=None):
    calls.append((name, steps, progress_every))
    return timings[name]

  monkeypatch.setattr(budget, 'calibrate', calibrate)
  [wall_clock] = curriculum.budgets(options)
  fitted = {}
  for name, config in configs.items():
    fitted[name], timing = wall_clock.fit(name, config, '/unused',
                                          options.num_evals)
    spent = (timing.overhead_seconds + options.num_evals *
             timing.eval_seconds + fitted[name].total_steps *
             timing.step_seconds)
    assert spent <= options.seconds < spent + timing.step_seconds
  # One calibration each, the same length and logging for both.
  assert {(steps, every) for _, steps, every in calls} == {
      (options.calibration_steps, options.calibration_progress_every)}
  assert fitted['curriculum'].total_steps > fitted['fixed'].total_steps
  # Fitting keeps the phases: equal thirds of the fitted steps.
  phases = curriculum.phases_of(fitted['curriculum'])
  assert [p.image_size for p in phases] == [14, 21, 28]
  lengths = [p.end_step - p.start_step for p in phases]
  assert sum(lengths) == fitted['curriculum'].total_steps
  assert max(lengths) - min(lengths) <= 1
  assert [p.image_size for p in curriculum.phases_of(fitted['fixed'])] == [28]
  # Both are evaluated at the last size.
  assert {c.pp.crop for c in fitted.values()} == {28}


def test_curriculum_sizes_must_fit_the_patches():
  configs = curriculum.schedule_configs(curriculum.Options(sizes=(28, 42, 56)))
  assert configs['fixed'].pp.crop == 56
  assert [size for _, size in configs['curriculum'].pp.curriculum] == [
      28, 42, 56]
  for sizes in ((14, 20, 28), (28,), (3, 7)):
    with pytest.raises(errors.ConfigError, match='multiple of the patch'):
      curriculum.schedule_configs(curriculum.Options(sizes=sizes))


def split_labels(config, split):
  """The labels of `split`, in order."""
  source = datasets.get_source(config.dataset, None, config.tfds_manual_dir)
  dataset, _ = source.read(split, 0, 1, drop_remainder=False)
  return np.array([int(example['label'])
                   for example in dataset.as_numpy_iterator()])


def test_subsets_are_prefixes_of_the_claimed_size(data_dir):
  options = vit_vs_resnet.Options(percents=(10, 30, 100), steps=50,
                                  fashion_mnist_dir=data_dir)
  variants = vit_vs_resnet.variants(options)
  assert [v.key for v in variants] == [
      f'{m}_{p}' for p in (10, 30, 100) for m in vit_vs_resnet.DEFAULT_MODELS]
  whole = split_labels(variants[0].config, 'train')
  for variant in variants:
    config = variant.config
    percent = variant.cells['percent']
    expected = round(NUM_TRAIN * percent / 100)
    assert runs.num_train_examples(config) == expected
    np.testing.assert_array_equal(split_labels(config, config.pp.train),
                                  whole[:expected])
    # The teacher keeps its checkpoint for the student of its subset.
    is_teacher = variant.cells['model_key'] == 'cnn'
    assert variant.keep_checkpoint == is_teacher
    if variant.cells['model_key'] in vit_vs_resnet.DISTILLED:
      for each in vit_vs_resnet.budgets(options):
        student = variant.for_budget(config, each, '/runs')
        assert student.distill.teacher == f'/runs/{each.kind}_cnn_{percent}'
        assert student.model.classifier == 'token_distill'
  for percent in (0, 101):
    with pytest.raises(errors.ConfigError, match='not in'):
      vit_vs_resnet.subset_split(percent)
  for student in vit_vs_resnet.DISTILLED:
    with pytest.raises(errors.UserError,
                       match=f'{student} but not cnn, its teacher'):
      vit_vs_resnet.variants(vit_vs_resnet.Options(models=(student,)))


def test_vit_vs_resnet_plain_variants_add_one_ingredient_to_the_quickstart(
    data_dir):
  options = vit_vs_resnet.Options(
      models=('cnn', 'vit_baseline', 'vit_plain_spt_lsa', 'vit_plain_distill'),
      percents=(10,), fashion_mnist_dir=data_dir)
  configs = {v.cells['model_key']: v for v in vit_vs_resnet.variants(options)}
  base = configs['vit_baseline'].config.to_dict()
  spt_lsa = configs['vit_plain_spt_lsa'].config
  assert spt_lsa.model.patch_embedding == 'spt'
  assert spt_lsa.model.transformer.attention == 'lsa'
  distilled = configs['vit_plain_distill']
  assert distilled.config.model.classifier == 'token_distill'
  # Everything else is the quickstart's: no recipe.
  for config in (spt_lsa.to_dict(), distilled.config.to_dict()):
    assert {k: v for k, v in config.items() if k != 'model'} == {
        k: v for k, v in base.items() if k != 'model'}
  budget = vit_vs_resnet.budgets(options)[0]
  student = distilled.for_budget(distilled.config, budget, '/runs')
  assert student.distill.teacher == f'/runs/{budget.kind}_cnn_10'
  assert configs['cnn'].keep_checkpoint


def test_vit_vs_resnet_models_take_a_learning_rate(data_dir):
  options = vit_vs_resnet.Options(
      models=('vit_baseline', 'vit_baseline@0.004', 'cnn', 'vit_distill'),
      percents=(10,), fashion_mnist_dir=data_dir)
  variants = vit_vs_resnet.variants(options)
  assert [(v.key, v.config.base_lr) for v in variants] == [
      ('cnn_10', 8e-3), ('vit_baseline_10', 2e-3),
      ('vit_baseline_lr0.004_10', 4e-3), ('vit_distill_10', 2e-3)]
  assert variants[2].cells['model'] == 'ViT quickstart (first), lr 0.004'
  assert variants[2].cells['model_key'] == 'vit_baseline'
  assert variants[2].cells['base_lr'] == 4e-3
  for bad in ('vit_baseline@fast', 'vit_baseline@-1', 'resnet50'):
    with pytest.raises(errors.UserError, match=bad.split('@')[0]):
      vit_vs_resnet.parse_models((bad,))
  with pytest.raises(errors.UserError, match='twice'):
    vit_vs_resnet.parse_models(('cnn@0.01', 'cnn@1e-2'))


def test_vit_vs_resnet_models_take_muon(data_dir):
  options = vit_vs_resnet.Options(
      models=('cnn', 'cct', 'cct+muon', 'vit_conv_stem+muon@0.004'),
      percents=(10,), fashion_mnist_dir=data_dir)
  variants = vit_vs_resnet.variants(options)
  assert [(v.key, v.config.optimizer, v.config.base_lr) for v in variants] == [
      ('cnn_10', 'adamw', 8e-3), ('cct_10', 'adamw', 2e-3),
      ('cct_muon_10', 'muon', 2e-3),
      ('vit_conv_stem_muon_lr0.004_10', 'muon', 4e-3)]
  assert variants[2].cells['model'] == 'CCT-2/3x2, Muon'
  assert variants[2].cells['model_key'] == 'cct'
  # Only the optimizer differs from the model with AdamW.
  assert differences(variants[1].config.to_dict(),
                     variants[2].config.to_dict()) == ['optimizer']
  with pytest.raises(errors.UserError, match="not 'sgd'"):
    vit_vs_resnet.parse_models(('cct+sgd',))
  with pytest.raises(errors.UserError, match='twice'):
    vit_vs_resnet.parse_models(('cct+muon', 'cct+muon'))


def test_vit_vs_resnet_describes_tokenizers_and_hybrids():
  stem = vit_vs_resnet.describe(vit_vs_resnet.conv_stem_config())
  assert 'a 3-layer conv stem (4x4 grid)' in stem
  cct = vit_vs_resnet.describe(vit_vs_resnet.MODELS['cct'][1]())
  assert 'a 2-layer CCT tokenizer (7x7 grid)' in cct
  assert 'seqpool head' in cct
  hybrid = vit_vs_resnet.describe(vit_vs_resnet.MODELS['hybrid'][1]())
  assert hybrid.startswith('hybrid: a BiT root (cifar stem, 2 stages')


def test_vit_vs_resnet_sweep_models_change_only_the_fields_they_name():
  def flat(name):
    return vit_vs_resnet.MODELS[name][1]().to_dict()
  for variants, base, renamed in (
      (vit_vs_resnet.QUICKSTART_VARIANTS, 'quickstart', ['model.model_name']),
      (vit_vs_resnet.CNN_VARIANTS, 'cnn', [])):
    base_config = flat(base)
    for key, (_, changes) in variants.items():
      config = flat(key)
      assert differences(base_config, config) == sorted(
          [*changes, *renamed]), key
      for field, value in changes.items():
        *parents, name = field.split('.')
        assert functools.reduce(dict.get, parents, config)[name] == value
  assert flat('quickstart_batch128_pad_crop')['batch'] == 128
  assert flat('cnn_pad_crop')['pp']['augment'] == 'pad_crop_flip'
  assert flat('quickstart_3_blocks')['model']['transformer'][
      'num_layers'] == 3


def test_vit_vs_resnet_counts_every_cnn_variant_as_a_cnn():
  rows = [dict(model=model, model_key=key, percent=10,
               budget='same steps (1)', test_accuracy=accuracy)
          for model, key, accuracy in (
              ('CNN', 'cnn', 0.80), ('CNN, batch 128', 'cnn_batch128', 0.83),
              ('CNN, no random erasing', 'cnn_no_erasing', 0.82),
              ('Quickstart', 'quickstart', 0.81))]
  [line] = vit_vs_resnet.outcome(rows, budget.Budget('steps', 1))
  assert ('the best ViT (Quickstart, 81.00%) falls short of the best CNN '
          '(CNN, batch 128, 83.00%) by -2.00 points') in line


def test_vit_vs_resnet_compares_with_the_best_cnn():
  def row(model, key, accuracy):
    return dict(model=model, model_key=key, percent=10,
                budget='same steps (1)',
                test_accuracy=accuracy)
  rows = [row('CNN', 'cnn', 0.80), row('CNN, lr 0.01', 'cnn', 0.86),
          row('ViT quickstart', 'vit_baseline', 0.84)]
  [line] = vit_vs_resnet.outcome(rows, budget.Budget('steps', 1))
  assert 'falls short of the best CNN (CNN, lr 0.01, 86.00%)' in line
  assert '-2.00 points' in line


def test_cnn_baseline_sweeps_architectures_then_learning_rates():
  options = cnn_baseline.Options(
      architectures=('imagenet_111_x0.5', 'cifar_112_x0.25'),
      lr_architecture='cifar_112_x0.25', lrs=(1e-3, 2e-3, 4e-3),
      train_split='train[:10%]')
  variants = cnn_baseline.variants(options)
  assert [(v.cells['architecture'], v.config.base_lr) for v in variants] == [
      ('imagenet_111_x0.5', 2e-3), ('cifar_112_x0.25', 2e-3),
      ('cifar_112_x0.25', 1e-3), ('cifar_112_x0.25', 4e-3)]
  first = variants[0]
  assert first.config.model_type == 'resnet'
  assert first.config.model.stem == 'imagenet'
  assert first.cells['widths'] == '32-64-128'
  assert variants[1].cells['widths'] == '16-32-64'
  assert all(v.config.pp.train == 'train[:10%]' for v in variants)
  # Only the model (and the learning rate) differ from the ViT quickstart.
  vit = quickstart_patchify.get_config().to_dict()
  changed = {k for k, v in variants[2].config.to_dict().items()
             if vit.get(k) != v}
  assert changed == {'model', 'model_type', 'base_lr', 'pp'}
  with pytest.raises(errors.UserError, match="Unknown CNN architecture 'x'"):
    cnn_baseline.variants(cnn_baseline.Options(architectures=('x',)))


def test_the_cnn_costs_the_same_order_as_the_vit():
  vit, cnn = quickstart_patchify.get_config(), cnn_quickstart.get_config()
  ratio = (stats.config_flops(cnn, 10) /
           stats.config_flops(vit, 10))
  assert 1 / 3 < ratio < 3
  assert 1 / 3 < (stats.config_params(cnn, 10) /
                  stats.config_params(vit, 10)) < 3
  # The same data, augmentation and optimisation; only the model and its
  # learning rate differ.
  assert {name.split('.')[0] for name in differences(
      vit.to_dict(), cnn.to_dict())} == {'model', 'model_type', 'base_lr'}


def test_the_cnn_baseline_is_a_candidate_of_its_sweep():
  cnn = cnn_quickstart.get_config()
  candidate = cnn_baseline.cnn_config('imagenet_111_x0.5_gn8', cnn.base_lr)
  assert not differences(cnn.to_dict(), candidate.to_dict())


def differences(a, b, prefix=''):
  """Dotted names of the fields where two config dicts differ."""
  names = []
  for key in sorted(set(a) | set(b)):
    x, y = a.get(key), b.get(key)
    if isinstance(x, dict) and isinstance(y, dict):
      names += differences(x, y, f'{prefix}{key}.')
    elif x != y:
      names.append(prefix + key)
  return names


def test_locality_runs_differ_only_in_locality():
  configs = locality.study_configs(locality.Options(steps=70))
  assert configs['off'].total_steps == configs['on'].total_steps == 70
  assert differences(configs['off'].to_dict(), configs['on'].to_dict()) == [
      'model.locality']
  assert configs['on'].model.locality


def test_patch_runs_differ_only_in_patch_size():
  configs = patch_size.study_configs(patch_size.Options(patches=(7, 4)))
  assert differences(configs[7].to_dict(), configs[4].to_dict()) == [
      'model.patches.size']
  assert tuple(configs[4].model.patches.size) == (4, 4)
  with pytest.raises(errors.ConfigError, match='does not divide'):
    patch_size.study_configs(patch_size.Options(patches=(5,)))
  with pytest.raises(errors.UserError, match='nothing to run'):
    patch_size.budgets(patch_size.Options(steps=0, seconds=0))


def test_options_round_trip_through_flags():
  flag_values = flags.FlagValues()
  cli.define_flags(curriculum.Options, flag_values)
  flag_values(['curriculum', '--sizes=28,42,56', '--seconds=12.5',
               '--num_evals=2'])
  options = cli.options_from_flags(curriculum.Options, flag_values)
  assert options == dataclasses.replace(
      curriculum.Options(), sizes=(28, 42, 56), seconds=12.5, num_evals=2)
  command = cli.options_command('experiments.curriculum', options)
  assert command.startswith('python -m experiments.curriculum --out=')
  assert '--sizes=28,42,56 --seconds=12.5' in command
  assert command.endswith('--num_evals=2')  # Shared flags last.
  assert '--fashion_mnist_dir' not in command  # None: the default.
  flag_values['sizes'].parse('28,big')
  with pytest.raises(errors.ConfigError, match='--sizes=28,big'):
    cli.options_from_flags(curriculum.Options, flag_values)


def test_budgets_label_their_runs_and_fit_steps():
  steps, seconds = budget.budgets_of(100, 30.0, calibration_steps=20)
  assert (steps.label, steps.x) == ('same steps (100)', 'step')
  assert (seconds.label, seconds.x) == ('same wall clock (30 s)', 'seconds')
  assert seconds.calibration_steps == 20
  assert budget.budgets_of(0, 30.0, 20) == [seconds]
  assert budget.budgets_of(100, 0, 20) == [steps]
  config, timing = steps.fit('quickstart', quickstart_patchify.get_config(),
                             '/unused', num_evals=2)
  assert (config.total_steps, config.eval_every, timing) == (100, 50, None)
  with pytest.raises(errors.ConfigError, match='--seconds=0'):
    budget.same_wall_clock(0, calibration_steps=20)
  with pytest.raises(errors.ConfigError, match='--steps=-5'):
    budget.same_steps(-5)


def test_budget_notes_name_only_runs_that_missed_their_budget():
  rows = [dict(label='a', wall=120.0, budget_seconds=100.0),
          dict(label='b', wall=109.0, budget_seconds=100.0),  # Within 10%.
          dict(label='c', wall=500.0),  # A step budget: none to miss.
          dict(label='d', wall=85.0, budget_seconds=100.0)]
  notes = report.off_budget_notes(rows)
  assert len(notes) == 2
  assert notes[0].startswith('- **a took 120 s of its 100 s budget**')
  assert 'slower' in notes[0] and 'more time' in notes[0]
  assert notes[1].startswith('- **d took 85 s of its 100 s budget**')
  assert 'faster' in notes[1] and 'less time' in notes[1]
  assert 'calibration predicted' in notes[1]


def test_budget_panels_draw_runs_on_the_axis_of_their_budget():
  config = budget.with_total_steps(quickstart_patchify.get_config(), 20)
  # Began 10 s before its first step: seconds are steps + 10.
  run = dataclasses.replace(fake_run_training('r', config, '/unused'),
                            start_time=-10.0)
  steps = np.arange(1, 21)
  for kind, xlabel, xs, vlines in (
      (budget.same_steps(20), 'step', steps, ()),
      (budget.same_wall_clock(30.0, 10), 'wall-clock seconds since the start',
       steps + 10, (('budget', 30.0),))):
    panels = report.budget_panels(kind, {'r': run})
    assert [p.title for p in panels] == [f'{kind.label}: test accuracy',
                                         f'{kind.label}: training loss']
    for panel in panels:
      assert (panel.xlabel, tuple(panel.vlines)) == (xlabel, vlines)
    [(label, loss_xs, _)] = panels[1].lines
    assert label == 'r'
    np.testing.assert_array_equal(loss_xs, xs)


def table_rows(markdown):
  """The rows of the results tables: the one after the machine table, and
  those with its header after it (a table per budget)."""
  tables = [t.strip().split('\n') for t in
            re.findall(r'((?:^\|.*\|\n)+)', markdown, re.M)][1:]
  rows = []
  for lines in tables:
    if lines[0] != tables[0][0]:
      continue
    header = [c.strip() for c in lines[0].strip('|').split('|')]
    rows += [dict(zip(header, (c.strip() for c in line.strip('|').split('|'))))
             for line in lines[2:]]
  return rows


@pytest.mark.slow
def test_report_holds_only_what_the_runs_measured(data_dir, tmp_path):
  options = locality.Options(
      out=str(tmp_path / 'docs' / 'locality'),
      workdir=str(tmp_path / 'runs'), steps=3, num_evals=1,
      train_eval_split='train[:50%]', fashion_mnist_dir=data_dir)
  locality.STUDY.run(options)
  markdown = (tmp_path / 'docs' / 'locality.md').read_text()
  assert os.path.getsize(tmp_path / 'docs' / 'locality.png') > 0
  assert cli.options_command('experiments.locality', options) in markdown
  rows = table_rows(markdown)
  assert [row['Locality'] for row in rows] == ['off', 'on']
  for row, (name, config) in zip(rows,
                                 locality.study_configs(options).items()):
    scalars = runs.read_scalars(os.path.join(options.workdir,
                                             f'steps_{name}'))
    assert row['Test acc.'] == report.format_percent(
        scalars['eval_accuracy'][-1].value)
    assert row['Test loss'] == f'{scalars["eval_loss"][-1].value:.4f}'
    assert row['Steps'] == str(scalars['loss'][-1].step) == '3'
    assert row['Epochs'] == f'{3 * 256 / NUM_TRAIN:.1f}'
    assert row['Params'] == report.format_count(
        stats.config_params(config, 10))
    assert float(row['Wall time (s)']) > 0


def model_of(config):
  return json.dumps([config.get('model_type', 'vit'), config.model.to_dict(),
                     config.pp.crop], sort_keys=True, default=str)


# Each study, with options for a few fake steps at every budget it compares.
FAKE_STUDIES = {
    'cnn_baseline': (cnn_baseline, dict(
        seconds=60.0, calibration_steps=20,
        architectures=('imagenet_111_x0.5', 'cifar_111_x0.25'), lrs=(1e-3,))),
    'curriculum': (curriculum, dict(seconds=60.0, calibration_steps=30,
                                    calibration_progress_every=3)),
    'locality': (locality, dict(steps=20)),
    'patch_size': (patch_size, dict(steps=20, seconds=60.0,
                                    calibration_steps=20)),
    'staged_vs_tower': (staged_vs_tower, dict(
        steps=20, seconds=60.0, calibration_steps=20,
        models=('tower', 'staged_pool'))),
    'vit_vs_resnet': (vit_vs_resnet, dict(steps=20, percents=(10, 100))),
    'recipe': (recipe, dict(seconds=60.0, calibration_steps=20,
                            ingredients=('mixup', 'ema'))),
}


@pytest.mark.parametrize('name', sorted(FAKE_STUDIES))
def test_every_study_follows_the_skeleton(name, data_dir, tmp_path,
                                          monkeypatch):
  module, study_options = FAKE_STUDIES[name]
  monkeypatch.setattr(runs, 'run_training', fake_run_training)
  monkeypatch.setattr(runs, 'evaluate_split', lambda *_: dict(
      eval_accuracy=0.75, eval_loss=0.5))
  measured = []

  def fake_measure(kind):
    def measure(config, num_classes):
      assert num_classes == 10
      measured.append((kind, model_of(config)))
      return 1000.0 * len(measured)
    return measure

  monkeypatch.setattr(stats, 'config_params', fake_measure('params'))
  monkeypatch.setattr(stats, 'config_flops', fake_measure('flops'))
  options = module.Options(out=str(tmp_path / 'report'),
                           workdir=str(tmp_path / 'runs'),
                           fashion_mnist_dir=data_dir, **study_options)
  variants, budgets = module.variants(options), module.budgets(options)
  results = module.STUDY.run(options)

  # Every variant at every budget, by budget, each in its own workdir.
  assert [(r.budget, r.variant.key) for r in results.results] == [
      (b, v.key) for b in budgets for v in variants]
  for result in results.results:
    row, run = result.row, result.run
    assert run.workdir == os.path.join(
        options.workdir, f'{result.budget.kind}_{result.variant.key}')
    assert (row['label'], row['budget']) == (result.variant.label,
                                             result.budget.label)
    assert row.items() >= result.variant.cells.items()
    assert row['train_examples'] == runs.num_train_examples(run.config)
    assert row['test_accuracy'] == run.final('eval_accuracy')
    assert row['accuracy_gap'] == pytest.approx(0.75 - row['test_accuracy'])
    assert row['loss_gap'] == pytest.approx(row['test_loss'] - 0.5)
    if result.budget.kind == 'seconds':
      timing = result.timing
      spent = (timing.overhead_seconds + options.num_evals *
               timing.eval_seconds + row['steps'] * timing.step_seconds)
      assert spent <= result.budget.amount < spent + timing.step_seconds
      assert row['budget_seconds'] == result.budget.amount
      assert row['step_seconds'] == timing.step_seconds
    else:
      assert result.timing is None
      assert row['steps'] == result.budget.amount
  # Each model is measured once, however many runs train it.
  models = {model_of(v.config) for v in variants}
  assert sorted(measured) == sorted(
      (kind, model) for kind in module.STUDY.measures for model in models)
  # The report says which command made it and holds a row per run.
  assert results.command == cli.options_command(f'experiments.{name}',
                                                options)
  markdown = (tmp_path / 'report.md').read_text()
  assert f'Written by `{results.command}`' in markdown
  assert len(table_rows(markdown)) == len(results.results)
  assert os.path.getsize(tmp_path / 'report.png') > 0
