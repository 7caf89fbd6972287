"""Tests of the ViT of vit_flax.models and its layers: shapes, names,
initialisation and the extensions."""

import functools

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import scipy.ndimage
import scipy.special

from vit_flax import errors
from vit_flax.models import attention as attention_lib
from vit_flax.models import depthwise_conv
from vit_flax.models import drop_path
from vit_flax.models import mlp as mlp_lib
from vit_flax.models import patch_embed
from vit_flax.models import posemb as posemb_lib
from vit_flax.models import presets
from vit_flax.models import stats
from vit_flax.models import vit
from vit_flax.weights import pretrained

from helpers import tiny_model_config
from helpers import train_losses


def init(config, image_size=16, num_classes=5, batch=2, seed=0):
  model = vit.VisionTransformer(num_classes=num_classes, **config)
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
  resized = posemb_lib.AddPositionEmbs.resize(jnp.asarray(posemb), 37, (6, 6))
  expected = pretrained.interpolate_posembed(posemb, 37, has_class_token=True)
  np.testing.assert_allclose(resized, expected, atol=1e-6)


@pytest.mark.parametrize('n_in,n_out', [(4, 6), (6, 4), (7, 14), (14, 24)])
def test_linear_resize_matrix_matches_scipy_zoom(n_in, n_out):
  x = np.random.RandomState(0).randn(n_in)
  expected = scipy.ndimage.zoom(x, n_out / n_in, order=1)
  np.testing.assert_allclose(posemb_lib.linear_resize_matrix(n_in, n_out) @ x,
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
    conv = depthwise_conv.DepthwiseConv(features, strides=strides, impl=impl)
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
    monkeypatch.setattr(depthwise_conv, 'KERNEL_GRAD_CHUNK_BYTES', chunk_bytes)
  assert depthwise_conv._kernel_grad_chunk(grid) == (1 if chunk_bytes else 4)
  out, grads = value_and_grads(
      lambda k, g: depthwise_conv.depthwise_conv_slices(g, k, strides), kernel,
      grid, d_out)
  expected, expected_grads = value_and_grads(
      lambda k, g: padded_taps_conv(g, k, strides), kernel, grid, d_out)
  np.testing.assert_allclose(out, expected, atol=1e-5, rtol=1e-5)
  for grad, expected_grad in zip(grads, expected_grads):
    np.testing.assert_allclose(grad, expected_grad, atol=1e-4, rtol=1e-5)


def test_depthwise_slices_keep_the_dtype_and_sum_in_float32():
  grid, params, d_out = random_depthwise_case(1, 8, 8, (8, 8), batch=8)
  kernel = params['params']['kernel']

  def grads(dtype):
    return value_and_grads(depthwise_conv.depthwise_conv_slices,
                           grid.astype(dtype), kernel.astype(dtype),
                           d_out.astype(dtype))[1]

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
  assert depthwise_conv.default_depthwise_impl() == impl
  grid = jnp.ones((1, 4, 4, 2))
  conv = depthwise_conv.DepthwiseConv(2)
  params = conv.init(jax.random.key(0), grid)
  jaxpr = str(jax.make_jaxpr(conv.apply)(params, grid))
  assert ('conv_general_dilated' in jaxpr) == (impl == 'grouped')


def test_unknown_depthwise_impl_is_a_clear_error():
  conv = depthwise_conv.DepthwiseConv(4, impl='cudnn')
  with pytest.raises(errors.ConfigError, match="impl 'cudnn'.*'grouped'"):
    conv.init(jax.random.key(0), jnp.ones((1, 4, 4, 4)))


def test_locality_mlp_is_conv_then_gelu_of_the_grid():
  mlp = mlp_lib.MlpBlock(mlp_dim=8, dropout_rate=0.0, locality=True)
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
  model = vit.VisionTransformer(num_classes=5, **config)
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
  mlp = mlp_lib.MlpBlock(mlp_dim=8, dropout_rate=0.0, locality=locality)
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
  mlp = mlp_lib.MlpBlock(mlp_dim=8,
                         dropout_rate=0.0,
                         locality=locality,
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
    config = presets.staged_config('t', 4, [(1, 8, 2, 16)])
  images = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
  model = presets.create_model(model_type, config, 3)
  params = model.init(jax.random.key(1), images, train=False)
  # Random values: the zero-initialised head would hide the encoder.
  rng = np.random.RandomState(0)
  params = jax.tree.map(lambda p: rng.randn(*p.shape).astype(p.dtype), params)
  config.gelu = 'exact'
  exact = presets.create_model(model_type, config, 3)
  difference = (exact.apply(params, images, train=False) -
                model.apply(params, images, train=False))
  assert np.abs(difference).max() > 1e-4
  config.gelu = 'erf'
  with pytest.raises(errors.ConfigError, match=r"gelu 'erf'.*'tanh', 'exact'"):
    presets.create_model(model_type, config, 3).init(
        jax.random.key(1), images, train=False)


def test_bfloat16_compute_keeps_float32_params():
  config = tiny_model_config(dtype='bfloat16')
  model, params = init(config)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  params = jax.tree.map(lambda p: p + 0.01, params)  # non-zero head
  x = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
  y16 = model.apply({'params': params}, x, train=False)
  config.dtype = 'float32'
  y32 = vit.VisionTransformer(num_classes=5, **config).apply(
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

  value, grads = loss_and_grads(attention_lib.einsum_attention)
  flax_value, flax_grads = loss_and_grads(flax.linen.dot_product_attention)
  np.testing.assert_allclose(value, flax_value, rtol=1e-5)
  for g, flax_g in zip(grads, flax_grads):
    np.testing.assert_allclose(g, flax_g, rtol=1e-4, atol=1e-5)
  if dropout_rate:  # The same dropout mask, so it does drop something.
    undropped = jnp.sum(attention_lib.einsum_attention(q, k, v) * cotangent)
    assert abs(float(undropped) - float(value)) > 1e-3


@pytest.mark.parametrize('attention_fn', ['einsum', 'flax'])
@pytest.mark.parametrize('dropout_rate', [0.0, 0.3])
def test_self_attention_equals_flax_multi_head_attention(attention_fn,
                                                         dropout_rate):
  # One matmul for q, k and v: the same params, init, outputs and
  # gradients as flax's module, which computes three.
  attention_fn = {'einsum': attention_lib.einsum_attention,
                  'flax': flax.linen.dot_product_attention}[attention_fn]
  options = dict(num_heads=3, dropout_rate=dropout_rate,
                 attention_fn=attention_fn)
  ours = attention_lib.MultiHeadSelfAttention(**options)
  theirs = flax.linen.MultiHeadDotProductAttention(
      kernel_init=flax.linen.initializers.xavier_uniform(),
      broadcast_dropout=False, **options)
  x = jax.random.normal(jax.random.key(0), (2, 5, 12))
  params = ours.init(jax.random.key(1), x, deterministic=True)['params']
  their_params = theirs.init(jax.random.key(1), x, x,
                             deterministic=True)['params']
  assert jax.tree.structure(params) == jax.tree.structure(their_params)
  jax.tree.map(np.testing.assert_array_equal, params, their_params)
  assert flat_shapes(params)['query/kernel'] == (12, 3, 4)
  params = random_params(params)
  cotangent = jax.random.normal(jax.random.key(3), x.shape)
  rngs = {'dropout': jax.random.key(4)}

  def loss_and_grads(apply):
    loss = lambda p, x: jnp.sum(apply(p, x) * cotangent)
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(params, x)

  value, grads = loss_and_grads(lambda p, x: ours.apply(
      {'params': p}, x, deterministic=False, rngs=rngs))
  their_value, their_grads = loss_and_grads(lambda p, x: theirs.apply(
      {'params': p}, x, x, deterministic=False, rngs=rngs))
  np.testing.assert_allclose(value, their_value, rtol=1e-5)
  for g, their_g in zip(jax.tree.leaves(grads), jax.tree.leaves(their_grads)):
    np.testing.assert_allclose(g, their_g, rtol=1e-4, atol=1e-5)
  if dropout_rate:  # The same dropout mask, so it does drop something.
    undropped = jnp.sum(ours.apply({'params': params}, x,
                                   deterministic=True) * cotangent)
    assert abs(float(undropped) - float(value)) > 1e-3


def test_self_attention_width_must_divide_into_heads():
  attention = attention_lib.MultiHeadSelfAttention(num_heads=5)
  with pytest.raises(ValueError, match='width 12 is not a multiple of'):
    attention.init(jax.random.key(0), jnp.ones((1, 3, 12)),
                   deterministic=True)


def test_einsum_attention_rejects_a_mask():
  q = jnp.ones((1, 3, 2, 4))
  with pytest.raises(NotImplementedError, match='no attention mask'):
    attention_lib.einsum_attention(q, q, q, mask=jnp.ones((1, 2, 3, 3), bool))


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
  config = presets.get_model_config(name)
  model = vit.VisionTransformer(num_classes=1000, **config)
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)),
                         train=False))
  count = stats.count_params(shapes['params'])
  # The paper rounds (and counts L/16 as 307M where the model has 304.3M).
  assert abs(count - paper_count) / paper_count < 0.01


def test_every_preset_builds():
  for name, config in presets.MODEL_CONFIGS.items():
    if name in presets.ALIASES:  # The same config as the preset's.
      assert config.model_name == name
      continue
    model = presets.create_model(
        presets.PRESET_MODEL_TYPES[name], config, 10)
    shapes = jax.eval_shape(
        lambda m=model: m.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)),
                               train=False))
    assert stats.count_params(shapes['params']) > 0, name


def test_unknown_preset_lists_known_ones():
  with pytest.raises(ValueError, match='ViT-B_16'):
    presets.get_model_config('ViT-Q_16')


@pytest.mark.parametrize('alias', sorted(presets.ALIASES))
def test_aliases_are_the_same_model_under_another_name(alias):
  config = presets.get_model_config(alias)
  assert config.model_name == alias
  config.model_name = presets.ALIASES[alias]
  assert config == presets.get_model_config(presets.ALIASES[alias])


def test_reduced_preset_alias_is_the_same_model_under_its_old_name():
  new = presets.get_model_config('ViT-S_8-depth6')
  old = presets.get_model_config('ViT-B_16_reduced')
  assert old.model_name == 'ViT-B_16_reduced'
  assert new.model_name == 'ViT-S_8-depth6'
  old.model_name = new.model_name
  assert old.to_dict() == new.to_dict()
  assert (new.patches.size, new.hidden_size, new.transformer.num_layers) == (
      (8, 8), 384, 6)


# Small-data options: stochastic depth, SPT, LSA, sincos2d, distillation.


def small_data_config(transformer=None, **overrides):
  config = tiny_model_config(**overrides)
  config.transformer.update(transformer or {})
  return config


def images_of(batch=2, size=16, seed=2):
  return jax.random.normal(jax.random.key(seed), (batch, size, size, 3))


def drop_path_rates_by_block(model, params, images):
  """{block path: drop-path rate} of the DropPath layers a training pass
  calls, read with a flax method interceptor."""
  rates = {}

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, drop_path.DropPath):
      rates['/'.join(context.module.path[:-1])] = context.module.rate
    return next_fun(*args, **kwargs)

  with flax.linen.intercept_methods(record):
    model.apply({'params': params}, images, train=True,
                rngs={'dropout': jax.random.key(0)})
  return rates


def test_stochastic_depth_zero_equals_the_model_without_it():
  base = tiny_model_config()
  base.transformer.dropout_rate = 0.1
  explicit = small_data_config({'stochastic_depth': 0.0, 'dropout_rate': 0.1})
  model, params = init(base)
  params = random_params(params)
  other, other_params = init(explicit)
  assert flat_shapes(other_params) == flat_shapes(params)
  x = images_of()
  rngs = {'dropout': jax.random.key(4)}
  np.testing.assert_array_equal(
      other.apply({'params': params}, x, train=True, rngs=rngs),
      model.apply({'params': params}, x, train=True, rngs=rngs))


def test_stochastic_depth_never_drops_in_evaluation():
  model, params = init(tiny_model_config())
  params = random_params(params)
  dropping = vit.VisionTransformer(
      num_classes=5, **small_data_config({'stochastic_depth': 0.9}))
  x = images_of()
  np.testing.assert_array_equal(
      dropping.apply({'params': params}, x, train=False),
      model.apply({'params': params}, x, train=False))
  trained = dropping.apply({'params': params}, x, train=True,
                           rngs={'dropout': jax.random.key(0)})
  assert not np.allclose(trained, model.apply({'params': params}, x,
                                              train=False))


def test_drop_path_rates_rise_linearly_from_zero():
  np.testing.assert_allclose(drop_path.drop_path_rates(0.2, 5),
                             [0.0, 0.05, 0.1, 0.15, 0.2])
  assert drop_path.drop_path_rates(0.1, 12)[-1] == 0.1
  assert drop_path.drop_path_rates(0.3, 1) == (0.0,)
  config = small_data_config({'stochastic_depth': 0.3, 'num_layers': 3})
  model, params = init(config)
  assert drop_path_rates_by_block(model, params, images_of()) == {
      'Transformer/encoderblock_0': 0.0,
      'Transformer/encoderblock_1': 0.15,
      'Transformer/encoderblock_2': 0.3}


def test_drop_path_zeroes_whole_examples_at_the_rate():
  x = jnp.ones((20_000, 3, 2))
  out = np.asarray(drop_path.drop_path(x, 0.3, jax.random.key(0)))
  dropped = np.all(out == 0, axis=(1, 2))
  kept = np.all(out == np.float32(1 / 0.7), axis=(1, 2))
  assert np.all(dropped | kept)  # Per example: all or nothing.
  # Binomial standard deviation: sqrt(0.3 * 0.7 / 20000) = 0.0032.
  assert abs(dropped.mean() - 0.3) < 0.015


def test_each_branch_of_each_example_drops_independently():
  rate, batch = 0.4, 600
  block = vit.Encoder1DBlock(mlp_dim=16,
                             num_heads=2,
                             dropout_rate=0.0,
                             attention_dropout_rate=0.0,
                             drop_path_rate=rate)
  # Every example holds the same tokens: they differ only by what drops.
  tokens = jnp.broadcast_to(
      jax.random.normal(jax.random.key(0), (1, 5, 8)), (batch, 5, 8))
  params = block.init(jax.random.key(1), tokens[:1], True)['params']
  out = jax.jit(lambda t, r: block.apply(
      {'params': params}, t, False, rngs={'dropout': r}))(
          tokens, jax.random.key(2))

  # The two branches by hand, from the block's own layers.
  layer_norm = lambda name, x: flax.linen.LayerNorm().apply(
      {'params': params[name]}, x)
  attention = flax.linen.MultiHeadDotProductAttention(
      num_heads=2, broadcast_dropout=False)
  mlp = mlp_lib.MlpBlock(mlp_dim=16, dropout_rate=0.0)
  x = tokens[:1]
  scale = 1 / (1 - rate)
  candidates = {}
  for attention_kept in (False, True):
    y = attention.apply({'params': params['MultiHeadDotProductAttention_1']},
                        layer_norm('LayerNorm_0', x), layer_norm(
                            'LayerNorm_0', x))
    x1 = x + scale * y * attention_kept
    y = mlp.apply({'params': params['MlpBlock_3']},
                  layer_norm('LayerNorm_2', x1), deterministic=True)
    for mlp_kept in (False, True):
      candidates[attention_kept, mlp_kept] = x1 + scale * y * mlp_kept
  keys = list(candidates)
  distances = np.stack([np.abs(out - candidates[k]).max(axis=(1, 2))
                        for k in keys], axis=-1)
  assert np.all(distances.min(-1) < 1e-4)  # Each example is one candidate.
  assert np.all(np.sort(distances, -1)[:, 1] > 1e-2)  # And only one.
  which = np.array([keys[i] for i in distances.argmin(-1)])
  attention_dropped, mlp_dropped = ~which[:, 0], ~which[:, 1]
  # Binomial standard deviations: 0.02 for 0.4, 0.015 for 0.16.
  assert abs(attention_dropped.mean() - rate) < 0.07
  assert abs(mlp_dropped.mean() - rate) < 0.07
  assert abs((attention_dropped & mlp_dropped).mean() - rate**2) < 0.05


def test_stochastic_depth_with_remat_gives_the_same_values_and_gradients():
  x = images_of()

  def value_and_grads(remat):
    config = small_data_config({'stochastic_depth': 0.5}, remat=remat)
    model, params = init(config)
    params = random_params(params)
    loss = lambda p: jnp.sum(model.apply(
        {'params': p}, x, train=True,
        rngs={'dropout': jax.random.key(3)}) ** 2)
    return jax.jit(jax.value_and_grad(loss))(params)

  value, grads = value_and_grads(False)
  remat_value, remat_grads = value_and_grads(True)
  np.testing.assert_allclose(remat_value, value, rtol=1e-5)
  for g, rg in zip(jax.tree.leaves(grads), jax.tree.leaves(remat_grads)):
    np.testing.assert_allclose(rg, g, rtol=1e-4, atol=1e-5)


def test_diagonal_shifts_translate_by_half_a_patch_with_zero_fill():
  image = np.arange(1, 4 * 6 + 1, dtype=np.float32).reshape(1, 4, 6, 1)
  shifted = np.asarray(patch_embed.diagonal_shifts(jnp.asarray(image), (1, 2)))
  assert shifted.shape == (1, 4, 6, 5)
  np.testing.assert_array_equal(shifted[..., 0], image[..., 0])
  offsets = [(-1, -2), (-1, 2), (1, -2), (1, 2)]
  for channel, (di, dj) in enumerate(offsets, 1):
    for i in range(4):
      for j in range(6):
        inside = 0 <= i + di < 4 and 0 <= j + dj < 6
        expected = image[0, i + di, j + dj, 0] if inside else 0.0
        assert shifted[0, i, j, channel] == expected, (channel, i, j)
  # Known pixels: the first copy shows pixel (0, 0) at (1, 2); its top row
  # and two left columns are zero fill.
  assert shifted[0, 1, 2, 1] == image[0, 0, 0, 0] == 1
  assert not np.any(shifted[0, 0, :, 1]) and not np.any(shifted[0, :, :2, 1])
  assert shifted[0, 2, 3, 4] == image[0, 3, 5, 0]


def test_space_to_depth_orders_patches_as_a_conv_kernel():
  x = jax.random.normal(jax.random.key(0), (2, 8, 12, 3))
  kernel = jax.random.normal(jax.random.key(1), (4, 4, 3, 5))
  conv = jax.lax.conv_general_dilated(
      x, kernel, (4, 4), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  patches = patch_embed.space_to_depth(x, (4, 4))
  assert patches.shape == (2, 2, 3, 48)
  np.testing.assert_allclose(patches @ kernel.reshape(48, 5), conv,
                             rtol=1e-4, atol=1e-4)


def test_shifted_patch_tokenization_shapes_and_gradients():
  config = small_data_config(patch_embedding='spt')
  model, params = init(config)
  shapes = flat_shapes(params)
  assert not any(k.startswith('embedding/') for k in shapes)
  patch_dim = 4 * 4 * 5 * 3  # 4x4 patches of the image and 4 shifted copies.
  assert {k: v for k, v in shapes.items() if k.startswith('spt/')} == {
      'spt/norm/scale': (patch_dim,), 'spt/norm/bias': (patch_dim,),
      'spt/proj/kernel': (patch_dim, 16), 'spt/proj/bias': (16,)}
  x = images_of()
  _, state = model.apply({'params': params}, x, train=False,
                         capture_intermediates=True, mutable=['intermediates'])
  assert state['intermediates']['spt']['__call__'][0].shape == (2, 4, 4, 16)
  params = random_params(params)
  loss = lambda p: jnp.sum(model.apply({'params': p}, x, train=False) ** 2)
  grads = jax.jit(jax.grad(loss))(params)['spt']
  for name, grad in flax.traverse_util.flatten_dict(grads, sep='/').items():
    assert float(jnp.abs(grad).max()) > 0, name


def test_shifted_patch_tokenization_needs_two_pixel_patches():
  with pytest.raises(errors.ConfigError, match=r'patch size \(1, 1\)'):
    init(small_data_config(patch_embedding='spt', patch=1), image_size=4)


def lsa_reference(q, k, v, temperature, **options):
  return attention_lib.locality_attention(q,
                                          k,
                                          v,
                                          temperature=temperature,
                                          implementation='flax',
                                          **options)


@pytest.mark.parametrize('implementation,dropout_rate', [
    (None, 0.0), (None, 0.3), ('xla', 0.0), ('auto', 0.0)])
def test_locality_attention_matches_flax_values_and_gradients(
    implementation, dropout_rate):
  q, k, v, cotangent = (jax.random.normal(jax.random.key(i), (2, 7, 3, 4))
                        for i in range(4))
  temperature = jnp.float32(1.7)
  options = dict(dropout_rng=jax.random.key(9), dropout_rate=dropout_rate,
                 broadcast_dropout=False, deterministic=dropout_rate == 0)

  def loss_and_grads(attention):
    loss = lambda *args: jnp.sum(attention(*args, **options) * cotangent)
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))(
        q, k, v, temperature)

  attention = functools.partial(attention_lib.locality_attention,
                                implementation=implementation)
  value, grads = loss_and_grads(
      lambda q, k, v, t, **o: attention(q, k, v, temperature=t, **o))
  flax_value, flax_grads = loss_and_grads(
      lambda q, k, v, t, **o: lsa_reference(q, k, v, t, **o))
  np.testing.assert_allclose(value, flax_value, rtol=1e-5)
  for g, flax_g in zip(grads, flax_grads):
    np.testing.assert_allclose(g, flax_g, rtol=1e-4, atol=1e-5)
  assert abs(float(grads[3])) > 1e-4  # The temperature learns.
  mhsa = jnp.sum(flax.linen.dot_product_attention(q, k, v) * cotangent)
  assert abs(float(mhsa) - float(value)) > 1e-3


def test_lsa_gives_the_diagonal_zero_weight_and_learns_its_temperature():
  config = small_data_config({'attention': 'lsa'})
  model, params = init(config)
  shapes = flat_shapes(params)
  assert [k for k in shapes if 'lsa' in k] == [
      f'Transformer/encoderblock_{i}/lsa_temperature' for i in range(2)]
  temperature = params['Transformer']['encoderblock_0']['lsa_temperature']
  assert temperature.shape == ()
  np.testing.assert_allclose(temperature, np.sqrt(8))  # head_dim 16 / 2.
  params = random_params(params)
  x = images_of()
  _, state = jax.jit(functools.partial(
      model.apply, train=False, sow_weights=True, mutable=['intermediates']))(
          {'params': params}, x)
  for _, block in sorted(state['intermediates']['Transformer'].items()):
    (weights,) = block['MultiHeadDotProductAttention_1']['attention_weights']
    assert weights.shape == (2, 2, 17, 17)
    diagonal = np.diagonal(np.asarray(weights), axis1=-2, axis2=-1)
    assert np.all(diagonal == 0.0)
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-5)
  loss = lambda p: jnp.sum(model.apply({'params': p}, x, train=False) ** 2)
  grads = jax.jit(jax.grad(loss))(params)['Transformer']
  for i in range(2):
    assert abs(float(grads[f'encoderblock_{i}']['lsa_temperature'])) > 0


def test_lsa_einsum_and_xla_models_agree():
  x = images_of()

  def value_and_grads(attention_impl):
    config = small_data_config({'attention': 'lsa'},
                               attention_impl=attention_impl)
    model, params = init(config)
    loss = lambda p: jnp.sum(model.apply({'params': p}, x, train=False) ** 2)
    return jax.jit(jax.value_and_grad(loss))(random_params(params))

  value, grads = value_and_grads(None)
  xla_value, xla_grads = value_and_grads('xla')
  np.testing.assert_allclose(xla_value, value, rtol=1e-5)
  for g, xg in zip(jax.tree.leaves(grads), jax.tree.leaves(xla_grads)):
    np.testing.assert_allclose(xg, g, rtol=1e-4, atol=1e-5)


def test_sincos2d_matches_the_closed_form():
  h, w, width = 2, 3, 8
  posemb = posemb_lib.posemb_sincos_2d((h, w), width)
  assert posemb.shape == (h * w, width) and posemb.dtype == np.float32
  omega = [1.0, 1.0 / 10_000]  # temperature ** -(k / (width / 4 - 1))
  for row in range(h):
    for col in range(w):
      expected = ([np.sin(col * o) for o in omega] +
                  [np.cos(col * o) for o in omega] +
                  [np.sin(row * o) for o in omega] +
                  [np.cos(row * o) for o in omega])
      np.testing.assert_allclose(posemb[row * w + col], expected, atol=1e-6)


def test_sincos2d_is_not_a_parameter_and_follows_the_input_grid():
  config = small_data_config(posemb='sincos2d')
  model, params = init(config)
  assert not any('posembed' in k for k in flat_shapes(params))
  tokens = jnp.zeros((1, 1 + 6 * 4, 16))  # A class token and a 6x4 grid.
  added = np.asarray(posemb_lib.add_sincos_posemb(tokens, (6, 4)))[0]
  np.testing.assert_array_equal(added[0], 0.0)
  np.testing.assert_allclose(added[1:], posemb_lib.posemb_sincos_2d((6, 4), 16))
  params = random_params(params)
  for size in (16, 24, 32):
    logits = model.apply({'params': params}, images_of(size=size),
                         train=False)
    assert logits.shape == (2, 5) and np.all(np.isfinite(logits))


def distill_model(**overrides):
  config = small_data_config(classifier='token_distill', head_bias_init=-2.0,
                             **overrides)
  model, params = init(config)
  return model, params


def test_distillation_token_and_head_names_shapes_and_init():
  _, params = distill_model()
  shapes = flat_shapes(params)
  assert shapes['cls'] == shapes['dist'] == (1, 1, 16)
  assert shapes['head_dist/kernel'] == shapes['head/kernel'] == (16, 5)
  assert shapes['head_dist/bias'] == (5,)
  assert shapes['Transformer/posembed_input/pos_embedding'] == (1, 18, 16)
  assert not np.any(params['dist'])
  assert not np.any(params['head_dist']['kernel'])
  np.testing.assert_array_equal(params['head_dist']['bias'], -2.0)
  assert vit.num_prefix_tokens('token_distill') == 2
  assert vit.num_prefix_tokens('token') == 1
  assert vit.num_prefix_tokens('gap') == 0


@pytest.mark.parametrize('representation_size', [None, 6])
def test_distillation_eval_output_is_the_mean_of_the_two_heads(
    representation_size):
  model, params = distill_model(representation_size=representation_size)
  params = random_params(params)
  x = images_of()
  (class_logits, distill_logits), state = jax.jit(functools.partial(
      model.apply, train=False, distill_outputs=True,
      capture_intermediates=True, mutable=['intermediates']))(
          {'params': params}, x)
  assert class_logits.shape == distill_logits.shape == (2, 5)
  assert not np.allclose(class_logits, distill_logits)
  np.testing.assert_allclose(
      jax.jit(functools.partial(model.apply, train=False))(
          {'params': params}, x),
      (class_logits + distill_logits) / 2, rtol=1e-6, atol=1e-6)
  # Each head reads its own token: the distillation head, the second.
  (pre_logits,) = state['intermediates']['pre_logits']['__call__']
  if representation_size:  # Captured before the tanh.
    pre_logits = jnp.tanh(pre_logits)
  head = params['head_dist']
  np.testing.assert_allclose(
      distill_logits, pre_logits[:, 1] @ head['kernel'] + head['bias'],
      rtol=1e-5, atol=1e-5)


def test_distill_outputs_needs_the_distillation_classifier():
  model, params = init(tiny_model_config())
  with pytest.raises(errors.ConfigError, match="classifier='token_distill'"):
    model.apply({'params': params}, images_of(), train=False,
                distill_outputs=True)


@pytest.mark.parametrize('overrides,match', [
    ({'patch_embedding': 'patchify'},
     r"model.patch_embedding='patchify'.*\('conv', 'spt'\)"),
    ({'posemb': 'fixed'}, r"model.posemb='fixed'.*'sincos2d'"),
    ({'transformer': {'attention': 'local'}},
     r"model.transformer.attention='local'.*\('mhsa', 'lsa'\)"),
    ({'transformer': {'stochastic_depth': 1.0}},
     r'stochastic_depth=1.0 must be in \[0, 1\)'),
    ({'transformer': {'stochastic_depth': -0.1}}, 'stochastic_depth=-0.1'),
    ({'transformer': {'attention': 'lsa'}, 'attention_impl': 'cudnn'},
     "attention='lsa' cannot run with attention_impl='cudnn'"),
    ({'posemb': 'sincos2d', 'hidden_size': 4}, 'multiple of 4 and at least 8'),
    ({'posemb': 'sincos2d', 'hidden_size': 10}, 'got 10'),
    ({'classifier': 'distill'}, "classifier 'distill'"),
])
def test_bad_small_data_options_are_clear_errors_before_any_work(overrides,
                                                                 match):
  transformer = overrides.pop('transformer', None)
  config = small_data_config(transformer, **overrides)
  # 18px does not fit the 4px patches: the option's error comes first.
  with pytest.raises(errors.ConfigError, match=match):
    init(config, image_size=18)


def test_the_train_step_trains_a_model_with_every_option_on():
  config = small_data_config(
      {'attention': 'lsa', 'stochastic_depth': 0.1, 'dropout_rate': 0.1},
      classifier='token_distill', patch_embedding='spt', posemb='sincos2d')
  images = images_of(batch=16, seed=5)
  labels = jnp.arange(16) % 4
  losses = train_losses('vit', config, images, labels, 4, steps=12)
  assert losses[0] == pytest.approx(np.log(4), rel=1e-3)  # Zero heads.
  assert losses[-1] < 0.5 * losses[0]
