"""Tests of vit_flax.models: shapes, names, initialisation and the extensions."""

import functools

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import scipy.ndimage
import scipy.special

from helpers import tiny_model_config
from vit_flax import checkpoint
from vit_flax import errors
from vit_flax import model_configs
from vit_flax import models
from vit_flax import models_staged


def init(config, image_size=16, num_classes=5, batch=2, seed=0):
  model = models.VisionTransformer(num_classes=num_classes, **config)
  images = jnp.ones((batch, image_size, image_size, 3))
  variables = jax.jit(functools.partial(model.init, train=False))(
      jax.random.key(seed), images)
  return model, variables['params']


def flat_shapes(params):
  return {k: tuple(v.shape) for k, v in
          flax.traverse_util.flatten_dict(params, sep='/').items()}


@pytest.mark.parametrize('classifier,expected_shape', [
    ('token', (2, 5)),
    ('gap', (2, 5)),
    ('unpooled', (2, 16, 5)),
    ('token_unpooled', (2, 17, 5)),
])
def test_forward_shapes_for_every_classifier(classifier, expected_shape):
  model, params = init(tiny_model_config(classifier=classifier))
  logits = model.apply({'params': params}, jnp.ones((2, 16, 16, 3)),
                       train=False)
  assert logits.shape == expected_shape
  assert logits.dtype == jnp.float32


def test_representation_size_adds_tanh_pre_logits():
  model, params = init(tiny_model_config(representation_size=7))
  assert params['pre_logits']['kernel'].shape == (16, 7)
  assert params['head']['kernel'].shape == (7, 5)
  logits = model.apply({'params': params}, jnp.ones((2, 16, 16, 3)),
                       train=False)
  assert logits.shape == (2, 5)


def test_unknown_classifier_is_a_clear_error():
  with pytest.raises(ValueError, match="classifier 'cls'"):
    init(tiny_model_config(classifier='cls'))


# The names in a released one-layer checkpoint (`ViT-B_16.npz` has 12 such
# blocks), written out by hand from the official format.
OFFICIAL_NAMES = [
    'cls',
    'embedding/bias', 'embedding/kernel',
    'head/bias', 'head/kernel',
    'Transformer/encoder_norm/bias', 'Transformer/encoder_norm/scale',
    'Transformer/posembed_input/pos_embedding',
    'Transformer/encoderblock_0/LayerNorm_0/bias',
    'Transformer/encoderblock_0/LayerNorm_0/scale',
    'Transformer/encoderblock_0/LayerNorm_2/bias',
    'Transformer/encoderblock_0/LayerNorm_2/scale',
    'Transformer/encoderblock_0/MlpBlock_3/Dense_0/bias',
    'Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel',
    'Transformer/encoderblock_0/MlpBlock_3/Dense_1/bias',
    'Transformer/encoderblock_0/MlpBlock_3/Dense_1/kernel',
] + [
    f'Transformer/encoderblock_0/MultiHeadDotProductAttention_1/{n}/{p}'
    for n in ('query', 'key', 'value', 'out') for p in ('bias', 'kernel')
]


def test_parameter_names_and_shapes_equal_official():
  _, params = init(tiny_model_config(num_layers=1))
  shapes = flat_shapes(params)
  assert sorted(shapes) == sorted(OFFICIAL_NAMES)
  # Official attention kernels: (hidden, heads, head_dim) and its transpose.
  block = 'Transformer/encoderblock_0/MultiHeadDotProductAttention_1'
  assert shapes[f'{block}/query/kernel'] == (16, 2, 8)
  assert shapes[f'{block}/query/bias'] == (2, 8)
  assert shapes[f'{block}/out/kernel'] == (2, 8, 16)
  assert shapes['embedding/kernel'] == (4, 4, 3, 16)
  assert shapes['Transformer/posembed_input/pos_embedding'] == (1, 17, 16)
  assert shapes['cls'] == (1, 1, 16)


def test_initialisation_statistics():
  config = tiny_model_config(hidden_size=64, num_layers=1, head_bias_init=-3.)
  _, params = init(config, image_size=64)
  assert not np.any(params['cls'])
  assert not np.any(params['head']['kernel'])
  np.testing.assert_array_equal(params['head']['bias'], -3.0)
  posemb = params['Transformer']['posembed_input']['pos_embedding']
  assert posemb.shape == (1, 257, 64)
  assert abs(float(np.std(posemb)) - 0.02) < 0.002
  mlp = params['Transformer']['encoderblock_0']['MlpBlock_3']
  assert float(np.std(mlp['Dense_0']['bias'])) < 1e-5
  assert np.any(mlp['Dense_0']['bias'])  # normal(1e-6), not zeros
  # Xavier uniform: bound sqrt(6 / (fan_in + fan_out)), std bound / sqrt(3).
  kernel = mlp['Dense_0']['kernel']
  bound = np.sqrt(6 / (64 + 128))
  assert float(np.max(np.abs(kernel))) <= bound
  assert abs(float(np.std(kernel)) - bound / np.sqrt(3)) < 0.1 * bound


def test_patch_size_must_divide_image_size():
  with pytest.raises(ValueError, match=r'Patch size \(4, 4\) does not divide'):
    init(tiny_model_config(), image_size=18)


def test_posemb_resized_in_graph_like_official_zoom():
  config = tiny_model_config()
  model, params = init(config, image_size=16)  # 4x4 grid stored.
  posemb = params['Transformer']['posembed_input']['pos_embedding']
  # A forward pass at 24px (6x6 grid) works with the same params...
  logits = model.apply({'params': params}, jnp.ones((2, 24, 24, 3)),
                       train=False)
  assert logits.shape == (2, 5)
  # ...and resizes the grid as the official offline zoom does.
  resized = models.AddPositionEmbs.resize(jnp.asarray(posemb), 37, (6, 6))
  expected = checkpoint.interpolate_posembed(posemb, 37, has_class_token=True)
  np.testing.assert_allclose(resized, expected, atol=1e-6)


@pytest.mark.parametrize('n_in,n_out', [(4, 6), (6, 4), (7, 14), (14, 24)])
def test_linear_resize_matrix_matches_scipy_zoom(n_in, n_out):
  x = np.random.RandomState(0).randn(n_in)
  expected = scipy.ndimage.zoom(x, n_out / n_in, order=1)
  np.testing.assert_allclose(models.linear_resize_matrix(n_in, n_out) @ x,
                             expected, atol=1e-6)


def test_locality_adds_only_a_depthwise_conv():
  base = flat_shapes(init(tiny_model_config())[1])
  model, params = init(tiny_model_config(locality=True))
  local = flat_shapes(params)
  added = sorted(set(local) - set(base))
  assert set(base) <= set(local)
  assert added == [
      f'Transformer/encoderblock_{i}/MlpBlock_3/locality_conv/{p}'
      for i in range(2) for p in ('bias', 'kernel')]
  assert local[added[1]] == (3, 3, 1, 32)  # depthwise over mlp_dim


@pytest.mark.parametrize('strides,channels,features',
                         [(1, 4, 4), (2, 4, 4), (2, 4, 12), (1, 3, 6)])
def test_depthwise_conv_equals_grouped_conv(strides, channels, features):
  grid = jax.random.normal(jax.random.key(0), (2, 6, 4, channels))
  conv = models.DepthwiseConv(features, strides=strides)
  params = conv.init(jax.random.key(1), grid)
  params = jax.tree.map(
      lambda p: p + jax.random.normal(jax.random.key(2), p.shape), params)
  grouped = flax.linen.Conv(features, (3, 3), strides=(strides, strides),
                            padding=((1, 1), (1, 1)),
                            feature_group_count=channels)
  expected = grouped.apply(params, grid)
  assert expected.shape == (2, 6 // strides, 4 // strides, features)
  np.testing.assert_allclose(conv.apply(params, grid), expected, atol=1e-5,
                             rtol=1e-5)


@pytest.mark.parametrize('locality', [False, True])
def test_locality_mixes_only_neighbouring_patches(locality):
  mlp = models.MlpBlock(mlp_dim=8, dropout_rate=0.0, locality=locality)
  tokens = jax.random.normal(jax.random.key(0), (1, 1 + 16, 4))  # cls + 4x4
  params = mlp.init(jax.random.key(1), tokens, deterministic=True,
                    grid_shape=(4, 4))
  apply = lambda t: mlp.apply(params, t, deterministic=True, grid_shape=(4, 4))
  changed = apply(tokens.at[0, 1].add(1.0)) != apply(tokens)  # patch (0, 0)
  changed = np.asarray(changed.any(-1))[0]
  assert changed[1]  # the patch itself
  assert changed[2] == locality  # its right neighbour, patch (0, 1)
  assert changed[1 + 5] == locality  # its diagonal neighbour, patch (1, 1)
  assert not changed[0]  # the class token bypasses the conv
  assert not changed[1 + 15]  # patch (3, 3) is out of the 3x3 reach


@pytest.mark.parametrize('locality', [False, True])
def test_gelu_flavour_is_used_by_every_mlp_activation(locality):
  mlp = models.MlpBlock(mlp_dim=8, dropout_rate=0.0, locality=locality,
                        gelu='exact')
  tokens = 3 * jax.random.normal(jax.random.key(0), (2, 1 + 4, 4))
  params = mlp.init(jax.random.key(1), tokens, deterministic=True,
                    grid_shape=(2, 2))['params']
  exact = mlp.apply({'params': params}, tokens, deterministic=True,
                    grid_shape=(2, 2))
  tanh = mlp.clone(gelu='tanh').apply({'params': params}, tokens,
                                      deterministic=True, grid_shape=(2, 2))

  erf_gelu = lambda x: 0.5 * x * (1 + scipy.special.erf(x / np.sqrt(2)))
  x = np.asarray(tokens, np.float64)
  dense = lambda x, p: x @ np.asarray(p['kernel']) + np.asarray(p['bias'])
  hidden = erf_gelu(dense(x, params['Dense_0']))
  if locality:
    conv = params['locality_conv']
    grid = np.pad(hidden[:, 1:].reshape(2, 2, 2, 8),
                  ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = sum(grid[:, i:i + 2, j:j + 2] * np.asarray(conv['kernel'][i, j, 0])
              for i in range(3) for j in range(3)) + np.asarray(conv['bias'])
    hidden[:, 1:] = erf_gelu(out).reshape(2, 4, 8)
  np.testing.assert_allclose(exact, dense(hidden, params['Dense_1']),
                             rtol=1e-5, atol=1e-5)
  # The two flavours differ by up to ~1e-3 per activation.
  assert np.abs(np.asarray(exact) - np.asarray(tanh)).max() > 1e-5


@pytest.mark.parametrize('model_type', ['vit', 'staged'])
def test_gelu_reaches_the_model_and_bad_values_are_clear_errors(model_type):
  if model_type == 'vit':
    config = tiny_model_config()
  else:
    config = models_staged.staged_config('t', 4, [(1, 8, 2, 16)])
  images = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
  model = model_configs.create_model(model_type, config, 3)
  params = model.init(jax.random.key(1), images, train=False)
  # Random values: the zero-initialised head would hide the encoder.
  rng = np.random.RandomState(0)
  params = jax.tree.map(lambda p: rng.randn(*p.shape).astype(p.dtype), params)
  config.gelu = 'exact'
  exact = model_configs.create_model(model_type, config, 3)
  difference = (exact.apply(params, images, train=False) -
                model.apply(params, images, train=False))
  assert np.abs(difference).max() > 1e-4
  config.gelu = 'erf'
  with pytest.raises(errors.ConfigError, match=r"gelu 'erf'.*'tanh', 'exact'"):
    model_configs.create_model(model_type, config, 3).init(
        jax.random.key(1), images, train=False)


def test_bfloat16_compute_keeps_float32_params():
  config = tiny_model_config(dtype='bfloat16')
  model, params = init(config)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  params = jax.tree.map(lambda p: p + 0.01, params)  # non-zero head
  x = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
  y16 = model.apply({'params': params}, x, train=False)
  config.dtype = 'float32'
  y32 = models.VisionTransformer(num_classes=5, **config).apply(
      {'params': params}, x, train=False)
  assert y16.dtype == jnp.float32
  np.testing.assert_allclose(y16, y32, atol=0.05, rtol=0.05)


def random_params(params, seed=1):
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(tree, [
      0.2 * jax.random.normal(k, p.shape) for k, p in zip(keys, leaves)])


@pytest.mark.parametrize('overrides', [
    {'attention_impl': 'xla'},
    {'remat': True},
])
def test_fused_attention_and_remat_keep_names_and_numerics(overrides):
  model, params = init(tiny_model_config())
  params = random_params(params)
  other_model, other_params = init(tiny_model_config(**overrides))
  assert flat_shapes(other_params) == flat_shapes(params)
  x = jax.random.normal(jax.random.key(2), (2, 16, 16, 3))

  def grad_fn(model):
    loss = lambda p: jnp.sum(model.apply({'params': p}, x, train=True) ** 2)
    return jax.jit(jax.value_and_grad(loss))(params)

  value, grads = grad_fn(model)
  other_value, other_grads = grad_fn(other_model)
  np.testing.assert_allclose(other_value, value, rtol=1e-5)
  for g, og in zip(jax.tree.leaves(grads), jax.tree.leaves(other_grads)):
    np.testing.assert_allclose(og, g, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('dropout_rate,broadcast_dropout', [
    (0.0, False), (0.3, False), (0.3, True)])
def test_einsum_attention_matches_flax_values_and_gradients(
    dropout_rate, broadcast_dropout):
  # (batch, tokens, heads, depth), as MultiHeadDotProductAttention calls it.
  q, k, v, cotangent = (jax.random.normal(jax.random.key(i), (2, 7, 3, 4))
                        for i in range(4))
  options = dict(dropout_rng=jax.random.key(9), dropout_rate=dropout_rate,
                 broadcast_dropout=broadcast_dropout, deterministic=False)

  def loss_and_grads(attention):
    loss = lambda *qkv: jnp.sum(attention(*qkv, **options) * cotangent)
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(q, k, v)

  value, grads = loss_and_grads(models.einsum_attention)
  flax_value, flax_grads = loss_and_grads(flax.linen.dot_product_attention)
  np.testing.assert_allclose(value, flax_value, rtol=1e-5)
  for g, flax_g in zip(grads, flax_grads):
    np.testing.assert_allclose(g, flax_g, rtol=1e-4, atol=1e-5)
  if dropout_rate:  # The same dropout mask, so it does drop something.
    undropped = jnp.sum(models.einsum_attention(q, k, v) * cotangent)
    assert abs(float(undropped) - float(value)) > 1e-3


def test_einsum_attention_rejects_a_mask():
  q = jnp.ones((1, 3, 2, 4))
  with pytest.raises(NotImplementedError, match='no attention mask'):
    models.einsum_attention(q, q, q, mask=jnp.ones((1, 2, 3, 3), bool))


def test_fused_attention_rejects_attention_dropout_in_training():
  config = tiny_model_config(attention_impl='xla')
  config.transformer.attention_dropout_rate = 0.1
  model, params = init(config)
  with pytest.raises(ValueError, match='attention_dropout_rate'):
    model.apply({'params': params}, jnp.ones((1, 16, 16, 3)), train=True,
                rngs={'dropout': jax.random.key(0)})


def test_attention_weights_can_be_sown():
  model, params = init(tiny_model_config(attention_impl='xla'))
  _, state = model.apply({'params': params}, jnp.ones((1, 16, 16, 3)),
                         train=False, sow_weights=True,
                         mutable=['intermediates'])
  weights = state['intermediates']['Transformer']['encoderblock_1'][
      'MultiHeadDotProductAttention_1']['attention_weights'][0]
  assert weights.shape == (1, 2, 17, 17)  # (batch, heads, query, key)
  np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-5)


def test_tiny_hybrid_runs_with_official_names():
  config = tiny_model_config(patch=1)
  config.resnet = ml_collections.ConfigDict(
      {'num_layers': (1, 1), 'width_factor': 0.5})
  model, params = init(config, image_size=32)
  names = flat_shapes(params)
  assert names['conv_root/kernel'] == (7, 7, 3, 32)
  assert names['gn_root/scale'] == (32,)
  assert names['block1/unit1/conv_proj/kernel'] == (1, 1, 32, 128)
  assert names['block2/unit1/conv2/kernel'] == (3, 3, 64, 64)
  assert names['embedding/kernel'] == (1, 1, 256, 16)
  # 32px -> root /4 -> block2 /2: a 4x4 grid plus the class token.
  assert names['Transformer/posembed_input/pos_embedding'] == (1, 17, 16)
  logits = model.apply({'params': params}, jnp.ones((2, 32, 32, 3)),
                       train=False)
  assert logits.shape == (2, 5) and np.all(np.isfinite(logits))


@pytest.mark.parametrize('name,paper_count', [
    ('ViT-B_16', 86e6), ('ViT-L_16', 307e6), ('ViT-H_14', 632e6)])
def test_parameter_counts_match_the_paper(name, paper_count):
  config = model_configs.get_model_config(name)
  model = models.VisionTransformer(num_classes=1000, **config)
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)),
                         train=False))
  count = models.count_params(shapes['params'])
  # The paper rounds (and counts L/16 as 307M where the model has 304.3M).
  assert abs(count - paper_count) / paper_count < 0.01


def test_every_preset_builds():
  for name, config in model_configs.MODEL_CONFIGS.items():
    model = model_configs.create_model(
        model_configs.PRESET_MODEL_TYPES[name], config, 10)
    shapes = jax.eval_shape(
        lambda m=model: m.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)),
                               train=False))
    assert models.count_params(shapes['params']) > 0, name


def test_unknown_preset_lists_known_ones():
  with pytest.raises(ValueError, match='ViT-B_16'):
    model_configs.get_model_config('ViT-Q_16')
