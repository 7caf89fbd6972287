"""Tests of the ResNet classifier of vit_flax.models.resnet (the baselines)."""

import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from vit_flax import errors
from vit_flax.configs import common
from vit_flax.configs import quickstart_patchify
from vit_flax.configs import resnet_quickstart
from vit_flax.models import presets
from vit_flax.models import stats
from vit_flax.training import loop
from vit_flax.weights import npz

from helpers import train_losses


def tiny_resnet_config(num_layers=(1, 1), bottleneck=False, stem='cifar',
                       **overrides):
  """Widths 32 and 64: the least GroupNorm's 32 groups allow."""
  config = presets.resnet_config('tiny-resnet',
                                 num_layers,
                                 bottleneck=bottleneck,
                                 width_factor=0.5,
                                 stem=stem)
  config.update(overrides)
  return config


def init(config, image_size=16, num_classes=5, seed=0):
  model = presets.create_model('resnet', config, num_classes)
  params = jax.jit(functools.partial(model.init, train=False))(
      jax.random.key(seed), jnp.ones((1, image_size, image_size, 3)))['params']
  return model, jax.device_get(params)


def apply(model, params, images, **kwargs):
  return jax.jit(functools.partial(model.apply, train=False, **kwargs))(
      {'params': params}, images)


def flat(params):
  return flax.traverse_util.flatten_dict(params, sep='/')


def flat_shapes(params):
  return {k: tuple(np.shape(v)) for k, v in flat(params).items()}


def random_params(params, seed=1):
  rng = np.random.RandomState(seed)
  return jax.tree.map(
      lambda p: (0.3 * rng.randn(*p.shape)).astype(p.dtype), params)


def final_feature_map(model, params, images):
  """Output of the last stage, (batch, height, width, channels)."""
  _, state = apply(model, params, images, capture_intermediates=True,
                   mutable=['intermediates'])
  last = max(k for k in state['intermediates'] if k.startswith('block'))
  return state['intermediates'][last]['__call__'][0]


@pytest.mark.parametrize('bottleneck,stem,image_size,grid,channels', [
    (False, 'cifar', 16, 8, 64),  # /1 stem, one /2 stage.
    (True, 'cifar', 16, 8, 256),  # 4x expansion.
    (False, 'imagenet', 32, 4, 64),  # /4 stem.
])
def test_forward_shapes(bottleneck, stem, image_size, grid, channels):
  config = tiny_resnet_config(bottleneck=bottleneck, stem=stem)
  model, params = init(config, image_size=image_size)
  images = jnp.ones((3, image_size, image_size, 3))
  logits = apply(model, params, images)
  assert logits.shape == (3, 5) and logits.dtype == jnp.float32
  assert final_feature_map(model, params, images).shape == (
      3, grid, grid, channels)
  headless = presets.create_model('resnet', config, 0)
  features = apply(headless, {k: v for k, v in params.items() if k != 'head'},
                   images)
  assert features.shape == (3, channels)  # Pooled, before the head.


# Names of a two-stage ResNet with basic units, written out by hand. They
# are those of the hybrid ViT roots (`conv_root`, `block{i}/unit{j}/...`).
BASIC_SHAPES = {
    'conv_root/kernel': (3, 3, 3, 32),
    'gn_root/scale': (32,), 'gn_root/bias': (32,),
    # Same width, stride 1: no projection.
    'block1/unit1/conv1/kernel': (3, 3, 32, 32),
    'block1/unit1/gn1/scale': (32,), 'block1/unit1/gn1/bias': (32,),
    'block1/unit1/conv2/kernel': (3, 3, 32, 32),
    'block1/unit1/gn2/scale': (32,), 'block1/unit1/gn2/bias': (32,),
    'block2/unit1/conv_proj/kernel': (1, 1, 32, 64),
    'block2/unit1/gn_proj/scale': (64,), 'block2/unit1/gn_proj/bias': (64,),
    'block2/unit1/conv1/kernel': (3, 3, 32, 64),
    'block2/unit1/gn1/scale': (64,), 'block2/unit1/gn1/bias': (64,),
    'block2/unit1/conv2/kernel': (3, 3, 64, 64),
    'block2/unit1/gn2/scale': (64,), 'block2/unit1/gn2/bias': (64,),
    'head/kernel': (64, 5), 'head/bias': (5,),
}


def test_basic_unit_names_and_shapes():
  _, params = init(tiny_resnet_config())
  assert flat_shapes(params) == BASIC_SHAPES


def test_bottleneck_names_and_shapes_are_the_hybrids():
  _, params = init(tiny_resnet_config(num_layers=(2,), bottleneck=True,
                                      stem='imagenet'))
  shapes = flat_shapes(params)
  assert shapes['conv_root/kernel'] == (7, 7, 3, 32)
  unit1 = {k[len('block1/unit1/'):]: v for k, v in shapes.items()
           if k.startswith('block1/unit1/') and k.endswith('kernel')}
  assert unit1 == {'conv_proj/kernel': (1, 1, 32, 128),
                   'conv1/kernel': (1, 1, 32, 32),
                   'conv2/kernel': (3, 3, 32, 32),
                   'conv3/kernel': (1, 1, 32, 128)}
  assert 'block1/unit2/conv_proj/kernel' not in shapes
  assert shapes['block1/unit2/conv1/kernel'] == (1, 1, 128, 32)
  assert shapes['block1/unit2/gn3/scale'] == (128,)
  assert shapes['head/kernel'] == (128, 5)


@pytest.mark.parametrize('bottleneck', [False, True])
def test_initialisation(bottleneck):
  model, params = init(tiny_resnet_config(num_layers=(2, 1),
                                          bottleneck=bottleneck))
  assert not np.any(params['head']['kernel'])
  assert not np.any(params['head']['bias'])
  last_gn = 'gn3' if bottleneck else 'gn2'
  for key, value in flat(params).items():
    if key.endswith('/scale'):
      # Each unit's residual branch starts at zero; other GNs at one.
      np.testing.assert_array_equal(
          value, 0.0 if f'/{last_gn}/' in key else 1.0, err_msg=key)
  images = np.random.RandomState(2).randn(2, 16, 16, 3).astype(np.float32)
  assert not np.any(apply(model, params, images))  # Zero head: zero logits.


def test_weight_standardised_convs_ignore_kernel_scale_and_offset():
  model, params = init(tiny_resnet_config())
  params = random_params(params)
  images = np.random.RandomState(3).randn(2, 16, 16, 3).astype(np.float32)
  kernel = params['block2']['unit1']['conv1']['kernel']
  changed = jax.tree.map(lambda x: x, params)
  changed['block2']['unit1']['conv1']['kernel'] = 3.0 * kernel + 0.5
  np.testing.assert_allclose(apply(model, changed, images),
                             apply(model, params, images),
                             rtol=1e-4, atol=1e-4)


def test_npz_round_trip_keeps_params_and_logits(tmp_path):
  model, params = init(tiny_resnet_config(bottleneck=True))
  params = random_params(params)
  npz.save(params, tmp_path / 'resnet.npz')
  loaded = npz.load_params(tmp_path / 'resnet.npz', params)
  images = np.random.RandomState(4).randn(2, 16, 16, 3).astype(np.float32)
  np.testing.assert_array_equal(apply(model, loaded, images),
                                apply(model, params, images))


@pytest.mark.parametrize('overrides,match', [
    ({'stem': 'tiny'}, "stem 'tiny'"),
    ({'width_factor': 0.25}, 'width_factor=0.25 gives a root width of 16'),
    ({'num_layers': ()}, r'num_layers=\(\)'),
])
def test_bad_configs_are_clear_errors(overrides, match):
  with pytest.raises(errors.ConfigError, match=match):
    init(tiny_resnet_config(**overrides))


def test_bfloat16_compute_keeps_float32_params():
  model, params = init(tiny_resnet_config(dtype='bfloat16'))
  assert all(p.dtype == np.float32 for p in jax.tree.leaves(params))
  params = random_params(params)
  images = np.random.RandomState(5).randn(2, 16, 16, 3).astype(np.float32)
  y16 = apply(model, params, images)
  y32 = apply(presets.create_model('resnet', tiny_resnet_config(), 5),
              params, images)
  assert y16.dtype == jnp.float32
  np.testing.assert_allclose(y16, y32, atol=0.1, rtol=0.05)


def expected_param_count(num_layers, bottleneck, num_classes, width=64):
  """Parameters of a ResNet counted from its definition (He et al. 2016).

  Convs have no bias; each GN (like a BatchNorm) has a scale and a bias per
  channel; units that change the shape project the shortcut (1x1 conv + GN).
  """
  expansion = 4 if bottleneck else 1
  count = 7 * 7 * 3 * width + 2 * width  # conv_root, gn_root
  channels = width
  for stage, units in enumerate(num_layers):
    inner = width * 2**stage
    out = inner * expansion
    for unit in range(units):
      if bottleneck:
        convs = [(1, channels, inner), (3, inner, inner), (1, inner, out)]
      else:
        convs = [(3, channels, inner), (3, inner, inner)]
      if unit == 0 and (stage > 0 or channels != out):
        convs.append((1, channels, out))
      count += sum(k * k * c_in * c_out + 2 * c_out
                   for k, c_in, c_out in convs)
      channels = out
  return count + channels * num_classes + num_classes


@pytest.mark.parametrize('name,num_layers,bottleneck,known_count', [
    # The well-known ImageNet counts (torchvision's resnet18 and resnet50).
    ('BiT-R18', (2, 2, 2, 2), False, 11_689_512),
    ('BiT-R26', (2, 2, 2, 2), True, None),
    ('BiT-R50x1', (3, 4, 6, 3), True, 25_557_032),
])
def test_presets_build_with_the_expected_parameter_counts(
    name, num_layers, bottleneck, known_count):
  config = presets.get_model_config(name)
  assert presets.PRESET_MODEL_TYPES[name] == 'resnet'
  assert tuple(config.num_layers) == num_layers
  assert config.bottleneck == bottleneck
  model = presets.create_model('resnet', config, 1000)
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)),
                         train=False))['params']
  count = stats.count_params(shapes)
  assert count == expected_param_count(num_layers, bottleneck, 1000)
  if known_count is not None:
    assert count == known_count


def test_quickstart_config_is_the_first_vit_quickstart_with_a_resnet18():
  config = resnet_quickstart.get_config()
  vit_config = quickstart_patchify.get_config()
  differences = {k for k in config if config[k] != vit_config[k]}
  assert differences == {'model_type', 'model'}
  assert config.model.stem == 'cifar'
  model = presets.create_model(config.model_type, config.model, 10)
  loop.check_image_sizes(model, [config.pp.crop])


@pytest.mark.parametrize('bottleneck', [False, True])
def test_a_few_train_steps_lower_the_loss(bottleneck):
  rng = np.random.RandomState(6)
  images = rng.uniform(-1, 1, (8, 16, 16, 3)).astype(np.float32)
  labels = rng.randint(0, 4, 8)
  losses = train_losses('resnet', tiny_resnet_config(bottleneck=bottleneck),
                        images, labels, num_classes=4, steps=10)
  np.testing.assert_allclose(losses[0], np.log(4), rtol=1e-5)  # Zero head.
  assert losses[-1] < 0.8 * losses[0]


@pytest.mark.slow
def test_trains_end_to_end_on_mock_cifar10(tmp_path):
  config = common.get_config()
  config.pp.crop = 16
  config.pp.augment = 'none'
  config.model_type = 'resnet'
  config.model = tiny_resnet_config()
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
  assert state.params['head']['kernel'].shape == (64, 10)  # cifar10
  assert np.any(np.asarray(state.params['head']['kernel']))  # It learned.


def test_fewer_norm_groups_allow_narrow_cnns():
  config = presets.resnet_config('narrow', (1, 1, 1),
                                 bottleneck=False,
                                 width_factor=0.25,
                                 stem='cifar',
                                 norm_groups=8)
  model = presets.create_model('resnet', config, 10)
  params = presets.abstract_params(model, 28)
  assert params['conv_root']['kernel'].shape == (3, 3, 3, 16)
  assert params['block3']['unit1']['conv1']['kernel'].shape[-1] == 64
  config.norm_groups = 32
  with pytest.raises(errors.ConfigError, match='norm_groups=32'):
    presets.abstract_params(
        presets.create_model('resnet', config, 10), 28)
