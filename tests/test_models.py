"""Tests of vit_flax.models: shapes, names, initialisation and the extensions."""

import functools

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import scipy.ndimage

from helpers import tiny_model_config
from vit_flax import checkpoint
from vit_flax import errors
from vit_flax import model_configs
from vit_flax import model_stats
from vit_flax import models


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


# (strides, channels, features, grid): channel multipliers > 1 and strides 2
# are those of the staged ViT's pooling transitions; (5, 7) has odd sides.
DEPTHWISE_CASES = [(1, 4, 4, (6, 4)), (2, 4, 4, (6, 4)), (2, 4, 12, (6, 4)),
                   (1, 3, 6, (6, 4)), (2, 3, 6, (5, 7)), (1, 2, 2, (1, 3))]


def random_depthwise_case(strides, channels, features, grid_shape, batch=2):
  """(grid, params, out cotangent) with every parameter random."""
  grid = jax.random.normal(jax.random.key(0), (batch, *grid_shape, channels))
  params = {'params': {
      'kernel': jax.random.normal(jax.random.key(1), (3, 3, 1, features)),
      'bias': jax.random.normal(jax.random.key(2), (features,))}}
  out_shape = [(n - 1) // strides + 1 for n in grid_shape]
  d_out = jax.random.normal(jax.random.key(3), (batch, *out_shape, features))
  return grid, params, d_out


def value_and_grads(apply, params, grid, d_out):
  """apply(params, grid) and its gradients for `d_out`, in one jit."""
  @jax.jit
  def run(params, grid, d_out):
    out, vjp = jax.vjp(apply, params, grid)
    return out, vjp(d_out)
  return run(params, grid, d_out)


@pytest.mark.parametrize('strides,channels,features,grid_shape',
                         DEPTHWISE_CASES)
def test_depthwise_conv_equals_grouped_conv(strides, channels, features,
                                            grid_shape):
  grid, params, d_out = random_depthwise_case(strides, channels, features,
                                              grid_shape)
  grouped = flax.linen.Conv(features, (3, 3), strides=(strides, strides),
                            padding=((1, 1), (1, 1)),
                            feature_group_count=channels)
  expected, expected_grads = value_and_grads(grouped.apply, params, grid,
                                             d_out)
  assert expected.shape == d_out.shape
  for impl in ('slices', 'grouped'):
    conv = models.DepthwiseConv(features, strides=strides, impl=impl)
    assert jax.tree.map(jnp.shape, jax.eval_shape(
        conv.init, jax.random.key(4), grid)) == (
            jax.tree.map(jnp.shape, params))
    out, grads = value_and_grads(conv.apply, params, grid, d_out)
    np.testing.assert_allclose(out, expected, atol=1e-5, rtol=1e-5)
    for grad, expected_grad in zip(jax.tree.leaves(grads),
                                   jax.tree.leaves(expected_grads)):
      np.testing.assert_allclose(grad, expected_grad, atol=1e-4, rtol=1e-5)


def padded_taps_conv(grid, kernel, strides):
  """The depthwise conv as nine strided slices of the padded grid (channel
  multipliers by repeating the input), for JAX to differentiate."""
  padded = jnp.pad(grid, ((0, 0), (1, 1), (1, 1), (0, 0)))
  out_h, out_w = ((n - 1) // strides + 1 for n in grid.shape[1:3])
  multiplier = kernel.shape[-1] // grid.shape[-1]
  out = 0
  for i in range(3):
    for j in range(3):
      tap = padded[:, i:i + strides * (out_h - 1) + 1:strides,
                   j:j + strides * (out_w - 1) + 1:strides]
      out = out + jnp.repeat(tap, multiplier, axis=-1) * kernel[i, j, 0]
  return out


@pytest.mark.parametrize('chunk_bytes', [None, 1])
@pytest.mark.parametrize('strides,channels,features,grid_shape',
                         DEPTHWISE_CASES)
def test_depthwise_slices_backward_equals_autodiff(
    monkeypatch, chunk_bytes, strides, channels, features, grid_shape):
  grid, params, d_out = random_depthwise_case(strides, channels, features,
                                              grid_shape, batch=4)
  kernel = params['params']['kernel']
  if chunk_bytes:  # One image per step of the kernel gradient's loop.
    monkeypatch.setattr(models, 'KERNEL_GRAD_CHUNK_BYTES', chunk_bytes)
  assert models._kernel_grad_chunk(grid) == (1 if chunk_bytes else 4)
  out, grads = value_and_grads(
      lambda k, g: models.depthwise_conv_slices(g, k, strides), kernel, grid,
      d_out)
  expected, expected_grads = value_and_grads(
      lambda k, g: padded_taps_conv(g, k, strides), kernel, grid, d_out)
  np.testing.assert_allclose(out, expected, atol=1e-5, rtol=1e-5)
  for grad, expected_grad in zip(grads, expected_grads):
    np.testing.assert_allclose(grad, expected_grad, atol=1e-4, rtol=1e-5)


def test_depthwise_slices_keep_the_dtype_and_sum_in_float32():
  grid, params, d_out = random_depthwise_case(1, 8, 8, (8, 8), batch=8)
  kernel = params['params']['kernel']

  def grads(dtype):
    return value_and_grads(models.depthwise_conv_slices, grid.astype(dtype),
                           kernel.astype(dtype), d_out.astype(dtype))[1]

  low, exact = grads(jnp.bfloat16), grads(jnp.float32)
  assert [g.dtype for g in low] == [jnp.bfloat16, jnp.bfloat16]
  for grad, expected in zip(low, exact):  # bfloat16 inputs: 3 digits.
    np.testing.assert_allclose(grad.astype(jnp.float32), expected,
                               rtol=0.05, atol=0.05 * np.abs(expected).max())


@pytest.mark.parametrize('backend,impl', [('cpu', 'slices'), ('gpu', 'grouped'),
                                          ('tpu', 'grouped')])
def test_depthwise_conv_default_is_chosen_by_backend(monkeypatch, backend,
                                                     impl):
  monkeypatch.setattr(jax, 'default_backend', lambda: backend)
  assert models.default_depthwise_impl() == impl
  grid = jnp.ones((1, 4, 4, 2))
  conv = models.DepthwiseConv(2)
  params = conv.init(jax.random.key(0), grid)
  jaxpr = str(jax.make_jaxpr(conv.apply)(params, grid))
  assert ('conv_general_dilated' in jaxpr) == (impl == 'grouped')


def test_unknown_depthwise_impl_is_a_clear_error():
  conv = models.DepthwiseConv(4, impl='cudnn')
  with pytest.raises(errors.ConfigError, match="impl 'cudnn'.*'grouped'"):
    conv.init(jax.random.key(0), jnp.ones((1, 4, 4, 4)))


def test_locality_mlp_is_conv_then_gelu_of_the_grid():
  mlp = models.MlpBlock(mlp_dim=8, dropout_rate=0.0, locality=True)
  tokens = jax.random.normal(jax.random.key(0), (2, 1 + 12, 4))  # cls + 3x4
  params = jax.eval_shape(functools.partial(
      mlp.init, deterministic=True, grid_shape=(3, 4)), jax.random.key(1),
                          tokens)
  params = jax.tree.map(  # All random, the biases too.
      lambda p: jax.random.normal(jax.random.key(2), p.shape), params)

  @jax.jit
  def out_and_expected(params, tokens):
    out = mlp.apply(params, tokens, deterministic=True, grid_shape=(3, 4))
    p = params['params']
    hidden = flax.linen.gelu(tokens @ p['Dense_0']['kernel']
                             + p['Dense_0']['bias'])
    grid = flax.linen.Conv(8, (3, 3), padding=1, feature_group_count=8).apply(
        {'params': p['locality_conv']}, hidden[:, 1:].reshape(2, 3, 4, 8))
    hidden = jnp.concatenate(
        [hidden[:, :1], flax.linen.gelu(grid).reshape(2, 12, 8)], axis=1)
    return out, hidden @ p['Dense_1']['kernel'] + p['Dense_1']['bias']

  out, expected = out_and_expected(params, tokens)
  np.testing.assert_allclose(out, expected, atol=1e-4, rtol=1e-4)


def train_step_temp_bytes(config, batch=8, image_size=32):
  """XLA's scratch memory for the gradient of a batch (buffers kept for the
  backward pass included)."""
  model = models.VisionTransformer(num_classes=5, **config)
  images = jnp.zeros((batch, image_size, image_size, 3))
  params = jax.eval_shape(functools.partial(model.init, train=False),
                          jax.random.key(0), images[:1])
  grad = jax.jit(jax.grad(lambda p, x: model.apply(p, x, train=False).sum()))
  return grad.lower(params, images).compile().memory_analysis(
  ).temp_size_in_bytes


def test_locality_backward_keeps_little_more_than_without():
  # Each conv keeps its input for the backward pass (one grid per block);
  # its nine taps or a padded copy of the grid kept as well would bring
  # the ratio to ~1.9.
  config = tiny_model_config(hidden_size=32, num_layers=4)  # 8x8 grid
  with_locality = train_step_temp_bytes(tiny_model_config(
      hidden_size=32, num_layers=4, locality=True))
  assert with_locality < 1.5 * train_step_temp_bytes(config)


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
  count = model_stats.count_params(shapes['params'])
  # The paper rounds (and counts L/16 as 307M where the model has 304.3M).
  assert abs(count - paper_count) / paper_count < 0.01


def test_every_preset_builds():
  for name, config in model_configs.MODEL_CONFIGS.items():
    model = model_configs.create_model(
        model_configs.PRESET_MODEL_TYPES[name], config, 10)
    shapes = jax.eval_shape(
        lambda m=model: m.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)),
                               train=False))
    assert model_stats.count_params(shapes['params']) > 0, name


def test_unknown_preset_lists_known_ones():
  with pytest.raises(ValueError, match='ViT-B_16'):
    model_configs.get_model_config('ViT-Q_16')


def test_reduced_preset_alias_is_the_same_model_under_its_old_name():
  new = model_configs.get_model_config('ViT-S_8-depth6')
  old = model_configs.get_model_config('ViT-B_16_reduced')
  assert old.model_name == 'ViT-B_16_reduced'
  assert new.model_name == 'ViT-S_8-depth6'
  old.model_name = new.model_name
  assert old.to_dict() == new.to_dict()
  assert (new.patches.size, new.hidden_size, new.transformer.num_layers) == (
      (8, 8), 384, 6)
