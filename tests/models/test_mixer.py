"""Tests of vit_flax.models.mixer: official names, checkpoints and training."""

import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from vit_flax import errors
from vit_flax.configs import common
from vit_flax.configs import mixer_b16_finetune
from vit_flax.configs import vit_b16_finetune
from vit_flax.models import mixer
from vit_flax.models import presets
from vit_flax.models import stats
from vit_flax.training import loop
from vit_flax.weights import npz
from vit_flax.weights import pretrained as pretrained_lib

from helpers import train_losses


def tiny_mixer_config(num_blocks=1, patch=4, hidden_dim=12, tokens_mlp_dim=8,
                      channels_mlp_dim=24, **overrides):
  """16 tokens at 16 px; every dimension differs, so shapes tell them apart."""
  config = presets.mixer_config('tiny-mixer', patch, hidden_dim, num_blocks,
                                tokens_mlp_dim, channels_mlp_dim)
  config.update(overrides)
  return config


def init(config, image_size=16, num_classes=5, seed=0):
  model = presets.create_model('mixer', config, num_classes)
  params = jax.jit(functools.partial(model.init, train=False))(
      jax.random.key(seed), jnp.ones((1, image_size, image_size, 3)))['params']
  return model, jax.device_get(params)


def apply(model, params, images):
  return jax.jit(functools.partial(model.apply, train=False))(
      {'params': params}, images)


def flat(params):
  return flax.traverse_util.flatten_dict(params, sep='/')


def flat_shapes(params):
  return {k: tuple(np.shape(v)) for k, v in flat(params).items()}


def random_params(params, seed=1):
  rng = np.random.RandomState(seed)
  return jax.tree.map(
      lambda p: (0.3 * rng.randn(*p.shape)).astype(p.dtype), params)


def test_forward_shapes():
  config = tiny_mixer_config(num_blocks=2)
  model, params = init(config)
  logits = apply(model, params, jnp.ones((3, 16, 16, 3)))
  assert logits.shape == (3, 5) and logits.dtype == jnp.float32
  headless = mixer.MlpMixer(num_classes=0, **config)
  features = apply(headless, {k: v for k, v in params.items() if k != 'head'},
                   jnp.ones((3, 16, 16, 3)))
  assert features.shape == (3, 12)  # Pooled, before the head.


# The names of a released one-block checkpoint (`Mixer-B_16.npz` has 12 such
# blocks), written out by hand; shapes for 16 tokens of width 12.
OFFICIAL_SHAPES = {
    'stem/kernel': (4, 4, 3, 12),
    'stem/bias': (12,),
    'MixerBlock_0/LayerNorm_0/scale': (12,),
    'MixerBlock_0/LayerNorm_0/bias': (12,),
    'MixerBlock_0/token_mixing/Dense_0/kernel': (16, 8),
    'MixerBlock_0/token_mixing/Dense_0/bias': (8,),
    'MixerBlock_0/token_mixing/Dense_1/kernel': (8, 16),
    'MixerBlock_0/token_mixing/Dense_1/bias': (16,),
    'MixerBlock_0/LayerNorm_1/scale': (12,),
    'MixerBlock_0/LayerNorm_1/bias': (12,),
    'MixerBlock_0/channel_mixing/Dense_0/kernel': (12, 24),
    'MixerBlock_0/channel_mixing/Dense_0/bias': (24,),
    'MixerBlock_0/channel_mixing/Dense_1/kernel': (24, 12),
    'MixerBlock_0/channel_mixing/Dense_1/bias': (12,),
    'pre_head_layer_norm/scale': (12,),
    'pre_head_layer_norm/bias': (12,),
    'head/kernel': (12, 5),
    'head/bias': (5,),
}


def test_parameter_names_and_shapes_equal_official():
  _, params = init(tiny_mixer_config())
  assert flat_shapes(params) == OFFICIAL_SHAPES


def test_blocks_are_numbered_like_the_official_auto_names():
  _, params = init(tiny_mixer_config(num_blocks=3))
  assert sorted(k for k in params if k.startswith('MixerBlock')) == [
      'MixerBlock_0', 'MixerBlock_1', 'MixerBlock_2']


def test_initialisation_statistics():
  config = tiny_mixer_config(patch=2, hidden_dim=64, tokens_mlp_dim=128,
                             channels_mlp_dim=256)
  _, params = init(config, image_size=32)  # 256 tokens.
  assert not np.any(params['head']['kernel'])
  assert not np.any(params['head']['bias'])
  block = params['MixerBlock_0']
  for mlp in ('token_mixing', 'channel_mixing'):
    for dense in ('Dense_0', 'Dense_1'):
      assert not np.any(block[mlp][dense]['bias'])
      # LeCun normal: std 1 / sqrt(fan_in).
      kernel = block[mlp][dense]['kernel']
      assert abs(np.std(kernel) * np.sqrt(kernel.shape[0]) - 1) < 0.05
  stem = params['stem']['kernel']
  assert abs(np.std(stem) * np.sqrt(2 * 2 * 3) - 1) < 0.1
  np.testing.assert_array_equal(block['LayerNorm_0']['scale'], 1.0)
  np.testing.assert_array_equal(params['pre_head_layer_norm']['bias'], 0.0)


def reference_logits(params, images, patch):
  """The paper's equations in numpy, for one set of params."""

  def layer_norm(x, p):
    mean = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-6) * p['scale'] + p['bias']

  def gelu(x):  # flax's default, the tanh approximation.
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))

  def mlp(x, p):
    x = gelu(x @ p['Dense_0']['kernel'] + p['Dense_0']['bias'])
    return x @ p['Dense_1']['kernel'] + p['Dense_1']['bias']

  n, h, w, c = images.shape
  patches = images.reshape(n, h // patch, patch, w // patch, patch, c)
  patches = patches.transpose(0, 1, 3, 2, 4, 5).reshape(
      n, (h // patch) * (w // patch), patch * patch * c)
  kernel = params['stem']['kernel'].reshape(patch * patch * c, -1)
  x = patches @ kernel + params['stem']['bias']
  i = 0
  while f'MixerBlock_{i}' in params:
    block = params[f'MixerBlock_{i}']
    y = layer_norm(x, block['LayerNorm_0']).transpose(0, 2, 1)
    x = x + mlp(y, block['token_mixing']).transpose(0, 2, 1)
    x = x + mlp(layer_norm(x, block['LayerNorm_1']), block['channel_mixing'])
    i += 1
  x = layer_norm(x, params['pre_head_layer_norm']).mean(1)
  return x @ params['head']['kernel'] + params['head']['bias']


def test_forward_equals_the_papers_equations():
  model, params = init(tiny_mixer_config(num_blocks=2))
  params = random_params(params)
  images = np.random.RandomState(2).randn(2, 16, 16, 3).astype(np.float32)
  logits = apply(model, params, images)
  expected = reference_logits(jax.tree.map(np.float64, params), images, 4)
  np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)


def test_npz_round_trip_keeps_params_and_logits(tmp_path):
  model, params = init(tiny_mixer_config(num_blocks=2))
  params = random_params(params)
  path = tmp_path / 'mixer.npz'
  npz.save(params, path)
  loaded = npz.load(path)
  assert flat(loaded).keys() == flat(params).keys()
  for key, value in flat(params).items():
    np.testing.assert_array_equal(flat(loaded)[key], value)
  images = np.random.RandomState(3).randn(2, 16, 16, 3).astype(np.float32)
  np.testing.assert_array_equal(
      apply(model, loaded, images),
      apply(model, params, images))


def test_official_flat_npz_loads_into_the_model(tmp_path):
  model, params = init(tiny_mixer_config())
  params = random_params(params)
  # As the released files: np.savez of '/'-joined keys written out by hand.
  arrays = {name: np.asarray(flat(params)[name]) for name in OFFICIAL_SHAPES}
  np.savez(tmp_path / 'Mixer-tiny.npz', **arrays)
  loaded = npz.load_params(tmp_path / 'Mixer-tiny.npz', params)
  images = np.random.RandomState(4).randn(2, 16, 16, 3).astype(np.float32)
  np.testing.assert_array_equal(
      apply(model, loaded, images),
      apply(model, params, images))


def test_load_pretrained_resets_the_head_and_keeps_the_rest(tmp_path):
  _, pretrained = init(tiny_mixer_config(), num_classes=7)
  pretrained = random_params(pretrained)
  npz.save(pretrained, tmp_path / 'pre.npz')
  _, fresh = init(tiny_mixer_config(), num_classes=3, seed=5)
  params = pretrained_lib.load_pretrained(
      pretrained_path=tmp_path / 'pre.npz', init_params=fresh,
      model_config=tiny_mixer_config())
  assert flat_shapes(params) == flat_shapes(fresh)
  for key, value in flat(params).items():
    source = fresh if key.startswith('head/') else pretrained
    np.testing.assert_array_equal(value, flat(source)[key])


def test_load_pretrained_at_another_resolution_fails(tmp_path):
  _, pretrained = init(tiny_mixer_config(), image_size=16)
  npz.save(pretrained, tmp_path / 'pre.npz')
  _, fresh = init(tiny_mixer_config(), image_size=24)  # 36 tokens, not 16.
  with pytest.raises(errors.CheckpointError,
                     match='token_mixing/Dense_0/kernel'):
    pretrained_lib.load_pretrained(pretrained_path=tmp_path / 'pre.npz',
                                   init_params=fresh,
                                   model_config=tiny_mixer_config())


def test_params_at_another_resolution_are_a_clear_error():
  model, params = init(tiny_mixer_config(), image_size=16)
  with pytest.raises(errors.ConfigError,
                     match=r'built for 16 patches, but a 24x24 image gives 36'):
    apply(model, params, jnp.ones((1, 24, 24, 3)))


def test_patch_size_must_divide_image_size():
  with pytest.raises(errors.ConfigError, match=r'Patch size \(4, 4\)'):
    init(tiny_mixer_config(), image_size=18)


def test_bfloat16_compute_keeps_float32_params():
  model, params = init(tiny_mixer_config(dtype='bfloat16'))
  assert all(p.dtype == np.float32 for p in jax.tree.leaves(params))
  params = random_params(params)
  images = np.random.RandomState(5).randn(2, 16, 16, 3).astype(np.float32)
  y16 = apply(model, params, images)
  y32 = apply(mixer.MlpMixer(num_classes=5, **tiny_mixer_config()),
              params, images)
  assert y16.dtype == jnp.float32
  np.testing.assert_allclose(y16, y32, atol=0.1, rtol=0.05)


@pytest.mark.parametrize('name,paper_count', [
    ('Mixer-B_16', 59e6), ('Mixer-B_32', 60e6), ('Mixer-L_16', 207e6)])
def test_presets_build_with_the_papers_parameter_counts(name, paper_count):
  config = presets.get_model_config(name)
  assert presets.PRESET_MODEL_TYPES[name] == 'mixer'
  model = presets.create_model('mixer', config, 1000)
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)),
                         train=False))['params']
  tokens = (224 // config.patches.size[0])**2
  assert shapes['MixerBlock_0']['token_mixing']['Dense_0']['kernel'].shape == (
      tokens, config.tokens_mlp_dim)
  assert len([k for k in shapes if k.startswith('MixerBlock')]) == (
      config.num_blocks)
  count = stats.count_params(shapes)
  # Table 1 of the paper rounds to millions.
  assert abs(count - paper_count) / paper_count < 0.015


def test_finetune_config_builds_mixer_b16_at_the_pretraining_size():
  config = mixer_b16_finetune.get_config('cifar100')
  assert config.model_type == 'mixer'
  assert config.pretrained_path.endswith('imagenet21k/Mixer-B_16.npz')
  assert (config.pp.train, config.pp.test, config.total_steps) == (
      vit_b16_finetune.DATASET_PRESETS['cifar100'])
  model = presets.create_model(config.model_type, config.model, 100)
  loop.check_image_sizes(model, [config.pp.crop])
  with pytest.raises(errors.ConfigError, match="'mnist'"):
    mixer_b16_finetune.get_config('mnist')


def test_a_few_train_steps_lower_the_loss():
  rng = np.random.RandomState(6)
  images = rng.uniform(-1, 1, (8, 16, 16, 3)).astype(np.float32)
  labels = rng.randint(0, 4, 8)
  losses = train_losses('mixer', tiny_mixer_config(num_blocks=2), images,
                        labels, num_classes=4, steps=10)
  np.testing.assert_allclose(losses[0], np.log(4), rtol=1e-5)  # Zero head.
  assert losses[-1] < 0.8 * losses[0]


@pytest.mark.slow
def test_trains_end_to_end_on_mock_cifar10(tmp_path):
  config = common.get_config()
  config.pp.crop = 16
  config.pp.augment = 'none'
  config.model_type = 'mixer'
  config.model = tiny_mixer_config()
  config.optimizer = 'adam'
  config.base_lr = 1e-3
  config.batch = config.batch_eval = 8
  config.total_steps = 3
  config.warmup_steps = 1
  config.eval_every = config.progress_every = 3
  config.shuffle_buffer = 16
  with tfds.testing.mock_data(num_examples=16):
    state = loop.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == 3
  assert state.params['head']['kernel'].shape == (12, 10)  # cifar10
  assert np.any(np.asarray(state.params['head']['kernel']))  # It learned.
