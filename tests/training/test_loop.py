"""Tests of vit_flax.training (the loop, step and mesh) on mock TFDS data:
steps, devices, curricula, errors."""

import functools
import logging
import os
import subprocess
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from vit_flax import errors
from vit_flax.configs import common
from vit_flax.data import sources
from vit_flax.models import presets
from vit_flax.training import loop
from vit_flax.training import mesh as mesh_lib
from vit_flax.training import metrics
from vit_flax.training import optim
from vit_flax.training import step as step_lib
from vit_flax.weights import npz

import helpers
from helpers import read_scalars
from helpers import tiny_model_config

REPO = helpers.REPO


def tiny_config(**overrides):
  """A run of a few steps of a tiny ViT on 16px mock CIFAR-10."""
  config = common.get_config()
  config.dataset = 'cifar10'
  config.pp.crop = 16
  config.model = tiny_model_config()
  config.optimizer = 'adamw'
  config.optim_dtype = 'float32'
  config.base_lr = 1e-2
  config.batch = 8
  config.batch_eval = 8
  config.total_steps = 6
  config.warmup_steps = 1
  config.eval_every = 6
  config.progress_every = 1
  config.shuffle_buffer = 32
  # Off: tfds.testing.mock_data patches epath process-wide while it builds
  # datasets, which breaks orbax's background saves (tests/tiny_run.py and
  # test_train_checkpoints.py cover checkpoints on real files).
  config.checkpoint_every = 0
  config.eval_figures = False
  config.update(overrides)
  return config


def run(config, workdir, num_examples=20):
  with tfds.testing.mock_data(num_examples=num_examples):
    return loop.train_and_evaluate(config, str(workdir))


@pytest.mark.slow
def test_a_few_steps_lower_the_loss(tmp_path):
  # Mock labels are random: the model can only memorise 8 examples.
  config = tiny_config(total_steps=30, batch=8, eval_every=30,
                       progress_every=5, pp=dict(augment='none'))
  run(config, tmp_path, num_examples=8)
  losses = read_scalars(tmp_path)['loss']
  assert losses[30] < 0.5 * losses[5]


@pytest.mark.slow
def test_eval_counts_every_example_once(tmp_path):
  run(tiny_config(batch_eval=8), tmp_path, num_examples=21)
  scalars = read_scalars(tmp_path)
  assert scalars['eval_count'][6] == 21  # 3 batches of 8, 3 padded
  assert 0.0 <= scalars['eval_accuracy'][6] <= 1.0


@pytest.mark.slow
def test_metrics_are_written(tmp_path):
  run(tiny_config(progress_every=3), tmp_path)
  scalars = read_scalars(tmp_path)
  for tag in ('loss', 'accuracy', 'learning_rate', 'grad_norm',
              'img_per_sec_per_device', 'image_size', 'eval_loss',
              'eval_accuracy'):
    assert sorted(scalars[tag]) == ([3, 6] if 'eval' not in tag else [6]), tag
  assert scalars['image_size'][3] == 16


@pytest.mark.slow
def test_evaluation_writes_figures(tmp_path):
  run(tiny_config(eval_figures=True, total_steps=4, eval_every=2), tmp_path)
  steps = metrics.read_steps(tmp_path)
  for name in ('attention_rollout', 'patch_filters', 'posemb_similarity',
               'attention_distance'):
    assert steps[f'figures/{name}'] == [2, 4], name


def build_step(config, num_classes=10):
  mesh = mesh_lib.create_mesh()
  model = presets.create_model('vit', config.model, num_classes)
  schedule = optim.create_learning_rate_schedule(
      config.total_steps, config.base_lr, config.decay_type,
      config.warmup_steps)
  tx = optim.create_optimizer(config, schedule)
  state = step_lib.create_train_state(model, tx, config, config.pp.crop, mesh)
  step = step_lib.make_train_step(model, tx, schedule, config, num_classes,
                                  mesh)
  return state, step


def test_accumulated_gradients_equal_the_large_batch_step():
  rng = np.random.RandomState(0)
  batch = {'image': rng.randn(16, 16, 16, 3).astype(np.float32),
           'label': rng.randint(0, 10, 16)}
  results = []
  for accum_steps in (1, 4):
    config = tiny_config(batch=16, accum_steps=accum_steps)
    state, step = build_step(config)
    state, metrics = step(state, jax.device_put(batch))
    results.append((jax.device_get(state.params), jax.device_get(metrics)))
  (params_1, metrics_1), (params_4, metrics_4) = results
  np.testing.assert_allclose(metrics_4['loss'], metrics_1['loss'], rtol=1e-5)
  np.testing.assert_allclose(metrics_4['grad_norm'], metrics_1['grad_norm'],
                             rtol=1e-4)
  for a, b in zip(jax.tree.leaves(params_1), jax.tree.leaves(params_4)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


MULTI_DEVICE_SCRIPT = """
import os, sys
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=%d')
sys.path[:0] = [%r, %r, %r]
import jax, tensorflow_datasets as tfds
import test_loop
from vit_flax.training import loop
from vit_flax.weights import npz
config = test_loop.tiny_config(optimizer='sgd', base_lr=0.1, batch=8,
                                total_steps=5, optim_dtype='float32')
config.model.transformer.dropout_rate = 0.1  # Dropout masks must agree too.
with tfds.testing.mock_data(num_examples=24):
  state = loop.train_and_evaluate(config, %r)
assert jax.device_count() == %d
npz.save(jax.device_get(state.params), %r)
"""


@pytest.mark.slow
def test_four_devices_match_one_device(tmp_path):
  params = {}
  for devices in (1, 4):
    out = tmp_path / f'{devices}.npz'
    script = MULTI_DEVICE_SCRIPT % (devices, REPO, helpers.TESTS,
                                    os.path.dirname(os.path.abspath(__file__)),
                                    str(tmp_path / f'run{devices}'), devices,
                                    str(out))
    subprocess.run([sys.executable, '-c', script], check=True,
                   capture_output=True, cwd=REPO)
    params[devices] = flax.traverse_util.flatten_dict(npz.load(out))
  for key, value in params[1].items():
    np.testing.assert_allclose(params[4][key], value, rtol=1e-5, atol=1e-6,
                               err_msg=str(key))
  # Training moved them: the comparison is not between two inits.
  state, _ = build_step(tiny_config())
  init = flax.traverse_util.flatten_dict(jax.device_get(state.params))
  assert max(float(np.abs(params[1][k] - v).max())
             for k, v in init.items()) > 1e-3


@pytest.mark.slow
def test_curriculum_switches_sizes_and_compiles_once_per_size(tmp_path,
                                                              caplog):
  config = tiny_config(total_steps=6, eval_every=3)
  config.pp.curriculum = ((0, 8), (3, 12))
  with caplog.at_level(logging.INFO):
    run(config, tmp_path)
  compiles = [r.getMessage() for r in caplog.records
              if 'Compiling the train step' in r.getMessage()]
  assert compiles == [
      'Compiling the train step for images of shape (8, 8, 8, 3).',
      'Compiling the train step for images of shape (8, 12, 12, 3).']
  sizes = read_scalars(tmp_path)['image_size']
  assert [sizes[s] for s in range(1, 7)] == [8, 8, 8, 12, 12, 12]
  # Evaluation runs at the final size (pp.crop) with the same params.
  assert read_scalars(tmp_path)['eval_count'][3] == 20


@pytest.mark.slow
def test_fine_tuning_starts_from_the_npz_weights(tmp_path):
  config = tiny_config(base_lr=0.0, total_steps=2, eval_every=2)
  model = presets.create_model('vit', config.model, 7)
  pretrained = jax.jit(functools.partial(model.init, train=False))(
      jax.random.PRNGKey(42), jnp.zeros((1, 16, 16, 3)))['params']
  pretrained = jax.tree.map(lambda x: x + 0.5, jax.device_get(pretrained))
  npz.save(pretrained, tmp_path / 'pretrained.npz')
  config.pretrained_path = str(tmp_path / 'pretrained.npz')
  state = run(config, tmp_path / 'run')
  got = flax.traverse_util.flatten_dict(jax.device_get(state.params), sep='/')
  want = flax.traverse_util.flatten_dict(pretrained, sep='/')
  for key, value in got.items():
    if key.startswith('head/'):
      assert value.shape[-1] == 10 and not np.any(value)  # new, zero head
    else:
      np.testing.assert_array_equal(value, want[key], err_msg=key)


# Bad input: each a clear error before any work.


@pytest.mark.parametrize('overrides,message', [
    ({'batch': 6, 'accum_steps': 4}, 'batch=6 must be divisible'),
    ({'optimizer': 'lamb'}, "Unknown optimizer 'lamb'"),
    ({'decay_type': 'step'}, "Unknown decay_type 'step'"),
    ({'pp': {'crop': 18}}, r'Patch size \(4, 4\) does not divide'),
    ({'pp': {'curriculum': ((0, 10), (2, 16))}},
     r'pp.curriculum trains at 10px, where the model cannot run: Patch size '
     r'\(4, 4\) does not divide the input grid \(10, 10\).*Choose curriculum '
     r'sizes'),
    ({'pretrained_path': '/no/such/ViT-B_16.npz'},
     'pretrained_path /no/such/ViT-B_16.npz does not exist'),
    ({'model_type': 'vgg'}, "Unknown model_type 'vgg'"),
])
def test_bad_config_is_a_clear_error(tmp_path, overrides, message):
  config = tiny_config()
  config.update(overrides)
  with pytest.raises(errors.UserError, match=message):
    run(config, tmp_path)


def test_unreadable_pretrained_path_fails_before_the_workdir_exists(
    tmp_path):
  broken = tmp_path / 'ViT-B_16.npz'
  broken.write_bytes(b'PK\x03\x04 cut short')  # A truncated download.
  workdir = tmp_path / 'run'
  with pytest.raises(errors.CheckpointError,
                     match='is not a readable .npz file'):
    run(tiny_config(pretrained_path=str(broken)), workdir)
  assert not workdir.exists()  # No .lock, no checkpoints/best/.


def test_batch_not_divisible_by_device_count():
  with pytest.raises(errors.ConfigError,
                     match=r'batch=6 must be divisible by the device count '
                     r'\(4\)'):
    loop.validate_config(tiny_config(batch=6), num_devices=4)


def test_unknown_dataset_and_split(tmp_path):
  with pytest.raises(sources.DataError, match="Unknown dataset 'nope'"):
    loop.train_and_evaluate(tiny_config(dataset='nope'), str(tmp_path))
  with pytest.raises(sources.DataError, match="Unknown split 'dev'"):
    loop.train_and_evaluate(
        tiny_config(dataset='fashion_mnist', pp={'test': 'dev', 'crop': 28}),
        str(tmp_path))


@pytest.mark.slow
def test_main_exits_non_zero_with_the_message_alone(tmp_path):
  result = subprocess.run(
      [sys.executable, 'main.py', '--config=configs/quickstart.py',
       f'--workdir={tmp_path}', '--config.optimizer=lamb'],
      capture_output=True, text=True, cwd=REPO)
  assert result.returncode != 0
  assert "Error: Unknown optimizer 'lamb'" in result.stderr
  assert 'Traceback' not in result.stderr


@pytest.mark.parametrize('overrides,message', [
    ({'batch': 0}, r'config.batch=0 cannot work: it must be an integer >= 1'),
    ({'batch': -4}, r'config.batch=-4 cannot work'),
    ({'batch_eval': 0}, r'config.batch_eval=0 cannot work'),
    ({'total_steps': 0}, r'config.total_steps=0 cannot work'),
    ({'base_lr': -1.0}, r'config.base_lr=-1.0 cannot work: it must be a '
     r'number >= 0'),
    ({'eval_every': 0}, r'config.eval_every=0 cannot work'),
    ({'label_smoothing': 1.5}, r'config.label_smoothing=1.5 cannot work'),
    ({'ema_decay': 1.0}, r'config.ema_decay=1.0 cannot work'),
    ({'mixup': -0.2}, r'config.mixup=-0.2 must be a finite number >= 0'),
    ({'mix_prob': 2.0}, r'config.mix_prob=2.0 must be a number in \[0, 1\]'),
    ({'pp': {'curriculum_unit': 'epoch'}},
     r"config.pp.curriculum_unit='epoch' cannot work: it must be one of "
     r"\('steps', 'epochs'\)"),
    ({'pp': {'randaugment': (2, 11)}}, r'magnitude=11 is outside'),
    ({'pp': {'randaugment': (2,)}}, r'must be \(num_ops, magnitude\)'),
    ({'model': {'hidden_size': 18}},
     r'hidden_size=18 cannot be split over config.model.transformer.'
     r'num_heads=4 attention heads'),
    ({'warmup_steps': 6}, r'warmup_steps=6 must be below config.total_steps=6'),
])
def test_bad_numbers_are_clear_errors_before_the_workdir_exists(
    tmp_path, overrides, message):
  config = tiny_config()
  config.model.transformer.num_heads = 4
  config.update(overrides)
  workdir = tmp_path / 'run'
  with pytest.raises(errors.ConfigError, match=message):
    run(config, workdir)
  assert not workdir.exists()


def one_step(config, seed=0):
  """The state after one train step of `config` on a fixed batch (plain SGD,
  no warm-up: the params move by the gradient)."""
  config.update(optimizer='sgd', momentum=0.0, warmup_steps=0)
  model = presets.create_model_for(config, 10)
  schedule = optim.create_learning_rate_schedule(
      config.total_steps, config.base_lr, config.decay_type,
      config.warmup_steps)
  tx = optim.create_optimizer(config, schedule)
  mesh = mesh_lib.create_mesh()
  state = step_lib.create_train_state(model, tx, config, config.pp.crop, mesh)
  step = step_lib.make_train_step(model, tx, schedule, config, 10, mesh)
  rng = np.random.RandomState(seed)
  batch = {'image': rng.uniform(-1, 1, (8, 16, 16, 3)).astype(np.float32),
           'label': rng.randint(0, 10, 8).astype(np.int32)}
  return step(state, batch)


def test_mixing_changes_the_step_deterministically_and_off_changes_nothing():
  plain_state, plain = one_step(tiny_config())
  zero_state, _ = one_step(tiny_config(mixup=0.0, cutmix=0.0))
  for a, b in zip(jax.tree.leaves(plain_state.params),
                  jax.tree.leaves(zero_state.params)):
    np.testing.assert_array_equal(a, b)
  mixed_config = tiny_config(mixup=0.8, cutmix=1.0, label_smoothing=0.1)
  mixed_state, mixed = one_step(mixed_config)
  again_state, again = one_step(mixed_config)
  # The zero-initialised head gives every batch the same first loss, ln 10;
  # the gradients, and so the params, tell mixed and plain batches apart.
  assert any(not np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(mixed_state.params), jax.tree.leaves(plain_state.params)))
  assert float(mixed['grad_norm']) != float(plain['grad_norm'])
  assert float(mixed['loss']) == float(again['loss'])
  for a, b in zip(jax.tree.leaves(mixed_state.params),
                  jax.tree.leaves(again_state.params)):
    np.testing.assert_array_equal(a, b)
  assert 0.0 <= float(mixed['accuracy']) <= 1.0


def test_mixed_batches_split_into_microbatches_like_a_large_batch():
  config = tiny_config(mixup=0.8, cutmix=1.0)
  _, whole = one_step(config)
  _, chunked = one_step(tiny_config(mixup=0.8, cutmix=1.0, accum_steps=2))
  np.testing.assert_allclose(float(chunked['loss']), float(whole['loss']),
                             rtol=1e-5)


def test_ema_starts_as_the_params_then_averages_them():
  state, step_metrics = one_step(tiny_config(ema_decay=0.99))
  # timm's ModelEmaV3: the first update copies the params.
  assert float(step_metrics['ema_decay']) == 0.0
  for ema, params in zip(jax.tree.leaves(state.ema_params),
                         jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(ema, params)
  decays = [
      float(step_lib.ema_decay_at(n, 0.99, 0.75)) for n in (1, 2, 10, 10**6)
  ]
  assert decays[0] == 0.0 and 0 < decays[1] < decays[2] < decays[3]
  assert decays[3] == np.float32(0.99)
  assert float(step_lib.ema_decay_at(5, 0.9, 0.0)) == np.float32(0.9)
  params = {'w': jnp.arange(3.0)}
  averaged = step_lib.update_ema({'w': jnp.zeros(3)}, params, 0.0)
  np.testing.assert_array_equal(averaged['w'], params['w'])
  np.testing.assert_allclose(
      step_lib.update_ema({'w': jnp.ones(3)}, params, 0.75)['w'],
      0.75 + 0.25 * np.arange(3.0))


@pytest.mark.slow
def test_ema_is_evaluated_beside_the_params(tmp_path):
  run(tiny_config(ema_decay=0.9, eval_every=3), tmp_path)
  scalars = read_scalars(tmp_path)
  assert set(scalars['eval_ema_accuracy']) == {3, 6}
  assert set(scalars['eval_accuracy']) == {3, 6}
  assert 0 <= scalars['eval_ema_loss'][6]


@pytest.mark.slow
def test_randaugment_runs_in_training(tmp_path):
  config = tiny_config(pp=dict(randaugment=(2, 9), augment='none'),
                       total_steps=4)
  run(config, tmp_path)
  assert 4 in read_scalars(tmp_path)['loss']


def test_profiler_traces_the_steps_it_is_asked_for(tmp_path):
  profiler = loop.StepProfiler(tmp_path, num_steps=2, first_step=3,
                               min_seconds=0.0)
  for step in range(1, 7):
    jnp.ones(4).block_until_ready()
    profiler(step)
    # Tracing from step 3 to step 5.
    assert (profiler.started_step is not None) == (3 <= step < 5), step
  profiler.close()
  traces = list(tmp_path.glob('plugins/profile/*/*.xplane.pb'))
  assert len(traces) == 1
