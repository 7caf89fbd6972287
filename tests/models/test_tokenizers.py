"""Conv tokenizers (CCT's, the early-convolution stem), SeqPool, q/k/v without
biases, CCT's block, the CCT presets and small hybrid roots."""

import functools

from flax import traverse_util
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vit_flax import errors
from vit_flax.commands import inference
from vit_flax.figures import drawing
from vit_flax.figures import probe as probe_lib
from vit_flax.models import patch_embed
from vit_flax.models import presets
from vit_flax.models import stats
from vit_flax.models import vit
from vit_flax.training import loop

from helpers import small_fashion_mnist_config
from helpers import tiny_model_config
from helpers import train_losses
from helpers import write_fashion_mnist


def tokenizer_config(patch_embedding='cct', tokenizer=None, **overrides):
  config = tiny_model_config(**overrides)
  config.patch_embedding = patch_embedding
  config.tokenizer = tokenizer
  return config


def init(config, image_size=16, num_classes=5):
  model = vit.VisionTransformer(num_classes=num_classes, **config)
  params = jax.jit(functools.partial(model.init, train=False))(
      jax.random.key(0), jnp.ones((1, image_size, image_size, 3)))['params']
  return model, params


def abstract_params(config, image_size, num_classes=5,
                    model_type='vit'):
  model = presets.create_model(model_type, config, num_classes)
  return presets.abstract_params(model, image_size)


def flat_shapes(params):
  return {name: value.shape for name, value in
          traverse_util.flatten_dict(params, sep='/').items()}


def images_of(batch=2, size=16, seed=2):
  return jax.random.normal(jax.random.key(seed), (batch, size, size, 3))


# The grid: conv arithmetic, out = floor((in + 2 pad - kernel) / stride) + 1.


def conv_output(size, kernel, stride, padding):
  return (size + 2 * padding - kernel) // stride + 1


def expected_grid(patch_embedding, tokenizer, size):
  """The grid side by the arithmetic of each layer, written out here."""
  if patch_embedding == 'cct':
    kernel = tokenizer['kernel']
    # CCT's `_cct`: stride max(1, k // 2 - 1), padding max(1, k // 2).
    stride, padding = max(1, kernel // 2 - 1), max(1, kernel // 2)
    for _ in range(tokenizer['layers']):
      size = conv_output(size, kernel, stride, padding)
      size = conv_output(size, 3, 2, 1)  # MaxPool2d(3, 2, padding=1).
    return size
  for _ in range(tokenizer['layers']):
    size = conv_output(size, 3, 2, 1)  # 3x3/2 conv, padding 1.
  return size  # The 1x1 projection keeps it.


TOKENIZERS = [
    ('cct', {'layers': 1, 'kernel': 3, 'width': 64}),  # CCT-x/3x1.
    ('cct', {'layers': 2, 'kernel': 3, 'width': 64}),  # CCT-x/3x2.
    ('cct', {'layers': 2, 'kernel': 7, 'width': 64}),  # CCT-x/7x2.
    ('conv_stem', {'layers': 2, 'width': 32, 'norm_groups': 8}),
    ('conv_stem', {'layers': 4, 'width': 24, 'norm_groups': 8}),  # ViT_C.
]


@pytest.mark.parametrize('size', [28, 32, 64, 224])
@pytest.mark.parametrize('patch_embedding,tokenizer', TOKENIZERS)
def test_grid_of_each_tokenizer_follows_the_conv_arithmetic(
    patch_embedding, tokenizer, size):
  module = {'cct': patch_embed.ConvTokenizer,
            'conv_stem': patch_embed.ConvStem}[patch_embedding](
                hidden_size=8, **tokenizer)
  out = jax.eval_shape(
      lambda: module.init_with_output(jax.random.key(0),
                                      jnp.zeros((1, size, size, 3)))[0])
  side = expected_grid(patch_embedding, tokenizer, size)
  assert out.shape == (1, side, side, 8)
  assert patch_embed.token_grid((size, size), patch_embedding,
                                tokenizer=tokenizer) == (side, side)


@pytest.mark.parametrize('classifier,prefix', [('seqpool', 0), ('token', 1)])
@pytest.mark.parametrize('patch_embedding,tokenizer', TOKENIZERS[::2])
def test_learned_position_embeddings_are_sized_to_the_grid(
    patch_embedding, tokenizer, classifier, prefix):
  config = tokenizer_config(patch_embedding, tokenizer, classifier=classifier)
  params = abstract_params(config, 32)
  side = expected_grid(patch_embedding, tokenizer, 32)
  assert params['Transformer']['posembed_input']['pos_embedding'].shape == (
      1, prefix + side * side, 16)


@pytest.mark.parametrize('posemb', ['learned', 'sincos2d'])
def test_other_resolutions_resize_the_position_embeddings_in_graph(posemb):
  config = tokenizer_config('cct', {'layers': 2, 'kernel': 3, 'width': 8},
                            classifier='seqpool', posemb=posemb)
  model, params = init(config, image_size=16)  # A 4x4 grid.
  for size in (16, 24):  # 4x4 and 6x6 grids.
    logits = model.apply({'params': params}, images_of(size=size),
                         train=False)
    assert logits.shape == (2, 5) and np.all(np.isfinite(logits))


def test_cct_tokenizer_is_conv_relu_max_pool_with_symmetric_padding():
  # A 7x7/2 conv of an even image: 'SAME' would pad (2, 3), CCT (3, 3).
  tokenizer = {'layers': 1, 'kernel': 7, 'width': 4}
  module = patch_embed.ConvTokenizer(hidden_size=6, **tokenizer)
  images = images_of(size=20)
  params = module.init(jax.random.key(0), images)['params']
  kernel = params['conv_0']['kernel']
  assert set(params['conv_0']) == {'kernel'}  # No bias.
  conv = jax.lax.conv_general_dilated(
      images, kernel, (2, 2), ((3, 3), (3, 3)),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  expected = jax.lax.reduce_window(
      jnp.maximum(conv, 0), -jnp.inf, jax.lax.max, (1, 3, 3, 1),
      (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0)))
  np.testing.assert_allclose(module.apply({'params': params}, images),
                             expected, rtol=1e-5, atol=1e-5)


def test_tokenizer_params_names_shapes_and_init():
  config = tokenizer_config('cct', {'layers': 2, 'kernel': 3, 'width': 64},
                            hidden_size=128)
  _, params = init(config, image_size=32)
  assert set(params['tokenizer']) == {'conv_0', 'conv_1'}
  assert params['tokenizer']['conv_0']['kernel'].shape == (3, 3, 3, 64)
  kernel = params['tokenizer']['conv_1']['kernel']
  assert kernel.shape == (3, 3, 64, 128)
  # Kaiming normal, as CCT: std sqrt(2 / fan_in), not truncated at 2 std.
  std = np.sqrt(2 / (3 * 3 * 64))
  assert np.std(kernel) == pytest.approx(std, rel=0.05)
  assert np.max(np.abs(kernel)) > 3 * std
  assert 'embedding' not in params

  config = tokenizer_config('conv_stem', {'layers': 3, 'width': 8,
                                          'norm_groups': 4})
  _, params = init(config, image_size=32)
  shapes = {name: {k: v.shape for k, v in layer.items()}
            for name, layer in params['conv_stem'].items()}
  assert shapes == {
      'conv_0': {'kernel': (3, 3, 3, 8)}, 'gn_0': {'scale': (8,),
                                                   'bias': (8,)},
      'conv_1': {'kernel': (3, 3, 8, 16)}, 'gn_1': {'scale': (16,),
                                                    'bias': (16,)},
      'conv_2': {'kernel': (3, 3, 16, 32)}, 'gn_2': {'scale': (32,),
                                                     'bias': (32,)},
      'proj': {'kernel': (1, 1, 32, 16), 'bias': (16,)}}


def test_staged_model_takes_a_tokenizer_and_seqpool():
  config = presets.staged_config('s', 4, [(1, 8, 2, 16), (1, 16, 2, 32)],
                                 classifier='seqpool')
  config.patch_embedding = 'conv_stem'
  config.tokenizer = {'layers': 1, 'width': 8, 'norm_groups': 4}
  model = presets.create_model('staged', config, 5)
  assert model.grid_shapes((16, 16)) == [(8, 8), (4, 4)]
  params = jax.jit(functools.partial(model.init, train=False))(
      jax.random.key(0), jnp.ones((1, 16, 16, 3)))['params']
  assert params['Transformer']['posembed_input']['pos_embedding'].shape == (
      1, 64, 8)
  assert params['seqpool']['score']['kernel'].shape == (16, 1)
  assert 'conv_stem' in params and 'cls' not in params
  logits = model.apply({'params': params}, images_of(), train=False)
  assert logits.shape == (2, 5)


# SeqPool.


def test_seqpool_weights_sum_to_one_and_equal_scores_give_the_mean():
  pool = vit.SeqPool()
  tokens = images_of(batch=3, size=5).reshape(3, 25, 3)
  params = pool.init(jax.random.key(1), tokens)['params']
  weights = pool.apply({'params': params}, tokens,
                       method=vit.SeqPool.token_weights)
  assert weights.shape == (3, 25)
  np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-6)
  assert np.all(weights > 0) and np.ptp(np.asarray(weights)) > 0
  np.testing.assert_allclose(
      pool.apply({'params': params}, tokens),
      np.einsum('bn,bnc->bc', weights, tokens), rtol=1e-5, atol=1e-6)
  # Equal scores (a zero kernel): the plain mean of the tokens.
  params = jax.tree.map(jnp.zeros_like, params)
  np.testing.assert_allclose(pool.apply({'params': params}, tokens),
                             tokens.mean(axis=1), rtol=1e-5, atol=1e-6)


def test_seqpool_pools_the_normalised_tokens_without_a_class_token():
  config = tiny_model_config(classifier='seqpool')
  model, params = init(config)
  assert 'cls' not in params
  assert params['seqpool']['score']['kernel'].shape == (16, 1)
  assert params['seqpool']['score']['bias'].shape == (1,)
  assert params['Transformer']['posembed_input']['pos_embedding'].shape == (
      1, 16, 16)
  images = images_of()
  _, state = model.apply({'params': params}, images, train=False,
                         capture_intermediates=True, mutable=['intermediates'])
  inter = state['intermediates']
  (encoded,) = inter['Transformer']['encoder_norm']['__call__']
  (pooled,) = inter['pre_logits']['__call__']
  expected = vit.SeqPool().apply({'params': params['seqpool']}, encoded)
  np.testing.assert_allclose(pooled, expected, rtol=1e-6, atol=1e-6)


def test_seqpool_has_no_distillation_outputs():
  model, params = init(tiny_model_config(classifier='seqpool'))
  with pytest.raises(errors.ConfigError,
                     match="classifier='seqpool' pools every token"):
    model.apply({'params': params}, images_of(), train=False,
                distill_outputs=True)


# q/k/v without biases; CCT's block.


def test_qkv_without_bias_drops_only_those_params_and_equals_zero_biases():
  without = tiny_model_config()
  without.transformer.qkv_bias = False
  model, params = init(tiny_model_config())
  model_nb, params_nb = init(without)
  flat = traverse_util.flatten_dict(params)
  is_qkv_bias = lambda path: path[-2:] in {(n, 'bias') for n in (
      'query', 'key', 'value')}
  assert {path for path in flat if is_qkv_bias(path)} == {
      ('Transformer', f'encoderblock_{i}', 'MultiHeadDotProductAttention_1',
       name, 'bias') for i in range(2) for name in ('query', 'key', 'value')}
  # Those biases are the only difference (the out projection keeps its).
  assert set(traverse_util.flatten_dict(params_nb)) == {
      path for path in flat if not is_qkv_bias(path)}
  # The same kernels compute what zero biases would.
  zeroed = {path: jnp.zeros_like(v) if is_qkv_bias(path) else v
            for path, v in flat.items()}
  kept = {path: v for path, v in flat.items() if not is_qkv_bias(path)}
  images = images_of()
  np.testing.assert_allclose(
      model_nb.apply({'params': traverse_util.unflatten_dict(kept)}, images,
                     train=False),
      model.apply({'params': traverse_util.unflatten_dict(zeroed)}, images,
                  train=False), rtol=1e-5, atol=1e-6)


def test_cct_block_adds_the_mlp_to_the_normalised_stream():
  inputs = images_of(size=4).reshape(2, 16, 3) * 2 + 1
  blocks = {placement: vit.Encoder1DBlock(
      mlp_dim=8, num_heads=1, dropout_rate=0.0, attention_dropout_rate=0.0,
      norm_placement=placement) for placement in vit.NORM_PLACEMENTS}
  params = blocks['pre'].init(jax.random.key(0), inputs, True)['params']
  outputs = {}
  for placement, block in blocks.items():
    outputs[placement], state = block.apply(
        {'params': params}, inputs, True, capture_intermediates=True,
        mutable=['intermediates'])
  inter = state['intermediates']  # Of 'cct': the same params and inputs.
  (attended,) = inter['MultiHeadDotProductAttention_1']['__call__']
  (normed,) = inter['LayerNorm_2']['__call__']
  residual = inputs + attended
  # pre: residual + MLP(LN(residual)); cct: LN(residual) + MLP(LN(residual)).
  np.testing.assert_allclose(outputs['cct'],
                             outputs['pre'] - residual + normed,
                             rtol=1e-5, atol=1e-5)
  assert not np.allclose(outputs['cct'], outputs['pre'])


# The CCT presets.

# Published parameter counts, in millions, at the paper's input sizes and
# class counts (CIFAR-10 at 32 px; ImageNet at 224 px): the reference the
# presets must match, so hard-coded. From SHI-Labs/Compact-Transformers'
# README tables (arXiv 2104.05704's Table; 0.28M / 3.76M / 3.85M / 3.72M
# there). CCT-6/3x1's 3.168M is of the model with sine position embeddings
# (a table, not params), hence posemb='sincos2d' for it.
PUBLISHED = [
    # name, image size, classes, posemb, millions, digits published.
    ('CCT-2/3x2', 32, 10, 'learned', 0.284, 3),
    ('CCT-4/3x2', 32, 10, 'learned', 0.482, 3),
    ('CCT-6/3x1', 32, 10, 'sincos2d', 3.168, 3),
    ('CCT-6/3x2', 32, 10, 'learned', 3.327, 3),
    ('CCT-7/3x1', 32, 10, 'learned', 3.760, 3),
    ('CCT-7/3x2', 32, 10, 'learned', 3.853, 3),
    ('CCT-14/7x2', 224, 1000, 'learned', 22.36, 2),
    ('ViT-Lite-7/4', 32, 10, 'learned', 3.717, 3),
    ('CVT-7/4', 32, 10, 'learned', 3.717, 3),
]


def cct_count(config, image_size, classes):
  """The parameter count by hand: tokenizer + blocks + final LayerNorm +
  pooling + head + position embeddings."""
  d = config.hidden_size
  h = config.transformer.mlp_dim
  blocks = config.transformer.num_layers * (4 * d * d + 2 * d * h + 6 * d + h)
  if config.patch_embedding == 'cct':
    kernel, layers = config.tokenizer.kernel, config.tokenizer.layers
    widths = [3] + [config.tokenizer.width] * (layers - 1) + [d]
    embedding = sum(kernel * kernel * c_in * c_out
                    for c_in, c_out in zip(widths, widths[1:]))  # No bias.
    side = expected_grid('cct', config.tokenizer, image_size)
  else:
    patch = config.patches.size[0]
    embedding = patch * patch * 3 * d + d
    side = image_size // patch
  tokens = side * side
  if config.classifier == 'seqpool':
    pooling = d + 1
  else:
    pooling, tokens = d, tokens + 1  # The class token and its embedding.
  posemb = tokens * d if config.posemb == 'learned' else 0
  return embedding + blocks + 2 * d + pooling + d * classes + classes + posemb


@pytest.mark.parametrize('name,size,classes,posemb,millions,digits',
                         PUBLISHED)
def test_preset_parameter_counts_match_the_paper(name, size, classes, posemb,
                                                 millions, digits):
  config = presets.get_model_config(name)
  config.posemb = posemb
  count = stats.count_params(abstract_params(config, size, classes))
  assert count == cct_count(config, size, classes)
  # Published to `digits` decimals of a million (rounded or truncated).
  assert abs(count / 1e6 - millions) < 10**-digits, count


def test_presets_are_cct_and_take_both_spellings():
  config = presets.get_model_config('CCT-7/3x1')
  assert config.patch_embedding == 'cct'
  assert config.tokenizer.to_dict() == {'layers': 1, 'kernel': 3,
                                        'width': 64, 'norm_groups': None}
  assert config.classifier == 'seqpool'
  assert not config.transformer.qkv_bias
  assert config.transformer.norm_placement == 'cct'
  assert (config.transformer.num_layers, config.transformer.num_heads,
          config.hidden_size, config.transformer.mlp_dim) == (7, 4, 256, 512)
  alias = presets.get_model_config('CCT-7_3x1')
  assert alias.model_name == 'CCT-7_3x1'
  alias.model_name = config.model_name
  assert alias.to_dict() == config.to_dict()
  lite = presets.get_model_config('ViT-Lite-7/4')
  assert (lite.patch_embedding, lite.classifier, lite.patches.size) == (
      'conv', 'token', (4, 4))
  # A field of the preset can be overridden as any other.
  config.tokenizer.layers = 2
  params = abstract_params(config, 32)
  assert params['tokenizer']['conv_0']['kernel'].shape == (3, 3, 3, 64)
  # Any ViT preset holds every tokenizer field, typed, None where unset.
  plain = presets.get_model_config('ViT-Ti_16')
  assert plain.tokenizer.to_dict() == dict.fromkeys(
      ('layers', 'kernel', 'width', 'norm_groups'))
  plain.patch_embedding = 'conv_stem'
  plain.tokenizer.layers = 4  # Its defaults for the rest.
  params = abstract_params(plain, 32)
  assert params['conv_stem']['conv_3']['kernel'].shape == (3, 3, 128, 256)
  with pytest.raises(TypeError):
    plain.tokenizer.layers = 'four'


def test_inference_knows_the_pixels_per_token_of_tokenizers_and_stems():
  config = presets.get_model_config('CCT-7/3x1')
  assert inference.pixels_per_patch(config) == 2
  config.tokenizer.layers = 2
  assert inference.pixels_per_patch(config) == 4
  config = tokenizer_config('cct', {'layers': 1, 'kernel': 3, 'width': 8},
                            classifier='seqpool')
  _, params = init(config, image_size=24)  # A 12x12 grid.
  assert inference.native_image_size(config, params) == 24
  stem = tokenizer_config('conv_stem', {'layers': 3})
  assert inference.pixels_per_patch(stem) == 8
  hybrid = presets.get_model_config('R50+ViT-B_16')
  assert inference.pixels_per_patch(hybrid) == 16
  hybrid.resnet.stem = 'cifar'
  assert inference.pixels_per_patch(hybrid) == 4


# Hybrid roots at small scale.


def small_hybrid_config(**resnet):
  config = tiny_model_config(patch=1, classifier='gap')
  config.resnet = ml_collections.ConfigDict(dict(
      {'num_layers': (1, 1), 'width_factor': 0.25, 'stem': 'cifar',
       'bottleneck': False, 'norm_groups': 8}, **resnet))
  return config


def test_small_hybrid_root_names_shapes_and_grid():
  params = abstract_params(small_hybrid_config(), 16)
  shapes = flat_shapes(params)
  assert shapes['conv_root/kernel'] == (3, 3, 3, 16)  # 3x3/1 stem.
  assert shapes['gn_root/scale'] == (16,)
  assert shapes['block1/unit1/conv1/kernel'] == (3, 3, 16, 16)  # Basic.
  assert shapes['block2/unit1/conv2/kernel'] == (3, 3, 32, 32)
  assert shapes['embedding/kernel'] == (1, 1, 32, 16)
  # 16 px, /1 stem, /2 second stage: an 8x8 grid.
  assert shapes['Transformer/posembed_input/pos_embedding'] == (1, 64, 16)
  bottleneck = abstract_params(
      small_hybrid_config(bottleneck=True, stem='imagenet',
                          width_factor=0.5), 32)
  assert bottleneck['block2']['unit1']['conv3']['kernel'].shape == (
      1, 1, 64, 256)
  assert bottleneck['Transformer']['posembed_input']['pos_embedding'].shape \
      == (1, 16, 16)  # 32 px / 4 / 2.


def test_small_hybrid_trains():
  images = images_of(batch=16, size=16, seed=5)
  labels = jnp.arange(16) % 4
  losses = train_losses('vit', small_hybrid_config(), images, labels, 4,
                        steps=16)
  assert losses[-1] < 0.5 * losses[0]


def test_hybrid_preset_gets_the_official_root_by_default():
  config = presets.get_model_config('R50+ViT-B_16')
  assert config.resnet.to_dict() == {
      'num_layers': (3, 4, 9), 'width_factor': 1.0, 'stem': 'imagenet',
      'bottleneck': True, 'norm_groups': 32}


# Bad values: one clear error before any work.


@pytest.mark.parametrize('overrides,match', [
    ({'patch_embedding': 'cct2'},
     r"model.patch_embedding='cct2'.*\('cct', 'conv_stem'\)"),
    ({'tokenizer': {'layer': 2}},
     r"fields \['layer'\].*'kernel', 'layers', 'width'"),
    ({'tokenizer': 3}, 'model.tokenizer=3 must be a dict'),
    ({'tokenizer': {'layers': 0}}, r'model.tokenizer.layers=0 must be an '
     r'integer >= 1'),
    ({'tokenizer': {'layers': 5}},
     r'layers=5 would shrink the \(16, 16\) input below one token.*strides '
     r'32 pixels.*at most 4 layers'),
    ({'tokenizer': {'kernel': 4}}, r'model.tokenizer.kernel=4 must be an odd'),
    ({'tokenizer': {'kernel': 7, 'layers': 3}},
     r'strides 64 pixels.*at most 2 layers'),
    ({'tokenizer': {'kernel': 21, 'layers': 1}},
     'Even one layer strides more than the image'),
    ({'tokenizer': {'width': 0}}, r'model.tokenizer.width=0 must be'),
    ({'tokenizer': {'width': 2.5}}, r'model.tokenizer.width=2.5 must be'),
    ({'patch_embedding': 'conv_stem', 'tokenizer': {'width': 12}},
     r'width=12 cannot be split into model.tokenizer.norm_groups=8'),
    ({'patch_embedding': 'conv_stem', 'tokenizer': {'layers': 5}},
     r'layers=5 would shrink'),
    ({'patch_embedding': 'conv_stem', 'tokenizer': {'kernel': 3}},
     r"fields \['kernel'\].*'conv_stem'"),
    ({'transformer': {'norm_placement': 'post'}},
     r"model.transformer.norm_placement='post'.*\('pre', 'cct'\)"),
    ({'transformer': {'qkv_bias': 0}}, r'model.transformer.qkv_bias=0 must '
     'be True'),
    ({'resnet': {'num_layers': (1,), 'width_factor': 0.1, 'norm_groups': 4}},
     r'model.resnet.width_factor=0.1 gives a root width of 6'),
    ({'resnet': {'num_layers': (1,), 'stem': 'tiny'}},
     r"Unknown model.resnet.stem 'tiny'"),
    ({'resnet': {'num_layers': (1,), 'units': 'basic'}},
     r"model.resnet has the fields \['num_layers', 'units'\]"),
    ({'resnet': {'num_layers': ()}}, r'model.resnet.num_layers=\(\)'),
])
def test_bad_values_are_clear_errors_before_any_work(overrides, match):
  config = tokenizer_config()
  transformer = overrides.pop('transformer', {})
  config.update(overrides)
  config.transformer.update(transformer)
  with pytest.raises(errors.ConfigError, match=match):
    abstract_params(config, 16)


def test_a_too_deep_tokenizer_fails_before_the_workdir_is_made(tmp_path):
  write_fashion_mnist(tmp_path / 'data', 16, 8)
  config = small_fashion_mnist_config(str(tmp_path / 'data'))
  config.model.patch_embedding = 'cct'
  config.model.tokenizer = {'layers': 5, 'kernel': 3, 'width': 8}
  workdir = tmp_path / 'run'
  with pytest.raises(errors.ConfigError, match='below one token'):
    loop.train_and_evaluate(config, str(workdir))
  assert not workdir.exists()


# Figures.


@pytest.mark.parametrize('patch_embedding,tokenizer,module', [
    ('cct', {'layers': 2, 'kernel': 3, 'width': 8}, 'tokenizer'),
    ('conv_stem', {'layers': 2, 'width': 8, 'norm_groups': 4}, 'conv_stem'),
])
def test_summary_images_of_tokenizer_models(patch_embedding, tokenizer,
                                            module):
  config = tokenizer_config(patch_embedding, tokenizer, classifier='seqpool')
  model, params = init(config)
  figures = probe_lib.summary_images(model, params, images_of(), config)
  assert set(figures) == {'attention_maps', 'attention_rollout',
                          'patch_filters', 'posemb_similarity',
                          'attention_distance', 'embedding_activations'}
  # The filters shown are those of the first conv, which reads the pixels.
  np.testing.assert_array_equal(
      figures['patch_filters'],
      drawing.patch_filters_figure(
          np.asarray(params[module]['conv_0']['kernel'])))
  probe = probe_lib.probe(model, params, images_of())
  assert probe.patch_embeddings.shape == (2, 4, 4, 16)
  assert probe.attentions[0].shape == (2, 2, 16, 16)  # No class token.
  assert probe.num_prefix('seqpool') == 0
