"""Tests of vit_flax.models.staged: shapes, names, counts, errors, training."""

import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vit_flax import errors
from vit_flax.configs import vit_staged_quickstart
from vit_flax.configs import vit_tower_quickstart
from vit_flax.models import drop_path
from vit_flax.models import presets
from vit_flax.models import staged as staged_lib
from vit_flax.models import stats
from vit_flax.models import vit
from vit_flax.weights import npz

import staged_attention

# (num_layers, hidden_size, num_heads, mlp_dim): widths 8 then 16.
TINY_STAGES = ((1, 8, 2, 16), (2, 16, 2, 32))


def tiny_config(transition='pool', classifier='token', stages=TINY_STAGES,
                **overrides):
  config = presets.staged_config('tiny_staged', 4, stages, transition,
                                 classifier)
  config.update(overrides)
  return config


def init(config, image_size=16, num_classes=5, batch=2):
  model = presets.create_model('staged', config, num_classes)
  variables = jax.jit(functools.partial(model.init, train=False))(
      jax.random.key(0), jnp.ones((batch, image_size, image_size, 3)))
  return model, variables['params']


def forward(model, params, images):
  return jax.jit(functools.partial(model.apply, train=False))(
      {'params': params}, images)


def flat_shapes(params):
  return {k: tuple(v.shape) for k, v in
          flax.traverse_util.flatten_dict(params, sep='/').items()}


def random_images(batch=2, size=16, seed=1):
  return jax.random.normal(jax.random.key(seed), (batch, size, size, 3))


@pytest.mark.parametrize('transition', ['linear', 'pool'])
@pytest.mark.parametrize('classifier', ['token', 'gap'])
def test_forward_shapes(transition, classifier):
  model, params = init(tiny_config(transition, classifier))
  logits = forward(model, params, random_images())
  assert logits.shape == (2, 5)
  assert logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))


def block_params(width, mlp_dim):
  layer_norms = 2 * 2 * width
  attention = 4 * (width * width + width)  # query, key, value, out.
  mlp = width * mlp_dim + mlp_dim + mlp_dim * width + width
  return layer_norms + attention + mlp


@pytest.mark.parametrize('transition', ['linear', 'pool'])
@pytest.mark.parametrize('classifier', ['token', 'gap'])
def test_parameter_count_equals_hand_count(transition, classifier):
  # 16px images, 4px patches: a 4x4 grid; widths 8 -> 16; 5 classes.
  has_cls = classifier == 'token'
  expected = 4 * 4 * 3 * 8 + 8  # embedding conv
  expected += (16 + has_cls) * 8  # position embeddings
  expected += 8 * has_cls  # class token
  expected += block_params(8, 16) + 2 * block_params(16, 32)
  if transition == 'linear':
    expected += 8 * 16 + 16  # dense projection of every token
  else:
    expected += 3 * 3 * 16 + 16  # depthwise conv, channel multiplier 2
    expected += (8 * 16 + 16) * has_cls  # dense layer for the class token
  expected += 2 * 16  # encoder_norm
  expected += 16 * 5 + 5  # head
  _, params = init(tiny_config(transition, classifier))
  assert stats.count_params(params) == expected


def test_parameter_names_follow_the_block_scheme():
  _, params = init(tiny_config('pool'))
  shapes = flat_shapes(params)
  block = 'Transformer/stage_1/encoderblock_1'
  assert shapes[f'{block}/MultiHeadDotProductAttention_1/query/kernel'] == (
      16, 2, 8)
  assert shapes[f'{block}/MlpBlock_3/Dense_0/kernel'] == (16, 32)
  assert shapes['Transformer/stage_1/transition/pool_conv/kernel'] == (
      3, 3, 1, 16)
  assert shapes['Transformer/stage_1/transition/cls_proj/kernel'] == (8, 16)
  assert shapes['Transformer/posembed_input/pos_embedding'] == (1, 17, 8)
  assert shapes['Transformer/encoder_norm/scale'] == (16,)
  blocks = {'/'.join(k.split('/')[:3]) for k in shapes
            if 'encoderblock' in k}
  assert blocks == {'Transformer/stage_0/encoderblock_0',
                    'Transformer/stage_1/encoderblock_0',
                    'Transformer/stage_1/encoderblock_1'}
  # Blocks have the names (and so the code) of the plain ViT's blocks.
  tower_block = {k.split('/', 2)[2] for k in flat_shapes(
      init_tower_block()) if k.startswith('Transformer/encoderblock_0/')}
  staged_block = {k.split('/', 3)[3] for k in shapes
                  if k.startswith('Transformer/stage_0/encoderblock_0/')}
  assert staged_block == tower_block


def init_tower_block():
  config = presets.vit_config('t', 4, 8, 16, 2, 1)
  model = vit.VisionTransformer(num_classes=5, **config)
  return jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.ones((1, 16, 16, 3)), train=False))['params']


def test_linear_transition_projects_every_token():
  _, params = init(tiny_config('linear', 'gap'))
  assert flat_shapes(params)['Transformer/stage_1/transition/proj/kernel'] == (
      8, 16)


def test_save_load_round_trip_is_exact(tmp_path):
  model, params = init(tiny_config('pool'))
  params = jax.tree.map(
      lambda p: p + jax.random.normal(jax.random.key(3), p.shape), params)
  path = tmp_path / 'staged.npz'
  npz.save(params, path)
  loaded = npz.load(path)
  assert flat_shapes(loaded) == flat_shapes(params)
  for key, value in flax.traverse_util.flatten_dict(params, sep='/').items():
    np.testing.assert_array_equal(
        flax.traverse_util.flatten_dict(loaded, sep='/')[key], value)
  apply = jax.jit(functools.partial(model.apply, train=False))
  images = random_images()
  np.testing.assert_array_equal(apply({'params': loaded}, images),
                                apply({'params': params}, images))


def test_pool_on_an_odd_grid_is_a_clear_error():
  # 12px / 4px patches: a 3x3 grid, which a stride-2 pool cannot halve.
  with pytest.raises(errors.ConfigError, match=r'cannot halve the 3x3 patch'):
    init(tiny_config('pool'), image_size=12)
  # 24px: 6x6, pooled to 3x3, which a third stage cannot halve again.
  three = TINY_STAGES + ((1, 32, 2, 64),)
  with pytest.raises(errors.ConfigError, match=r'3x3 patch grid of stage 1'):
    init(tiny_config('pool', stages=three), image_size=24)
  # The linear transition keeps the grid, so any grid works.
  model, params = init(tiny_config('linear'), image_size=12)
  assert forward(model, params, random_images(size=12)).shape == (2, 5)


@pytest.mark.parametrize('overrides,match', [
    ({'transition': 'conv'}, "Unknown transition 'conv'"),
    ({'classifier': 'unpooled'}, "classifier 'unpooled'"),
    ({'stages': ((1, 8, 2, 16), (1, 12, 2, 24))}, 'multiple of the one'),
    ({'stages': ((1, 8, 3, 16),)}, 'not divisible by num_heads=3'),
    ({'stages': ({'num_layers': 1, 'hidden_size': 8, 'num_heads': 2},)},
     r"stages\[0\] has the fields"),
    ({'stages': ()}, 'model.stages is empty'),
])
def test_bad_configs_are_clear_errors(overrides, match):
  config = tiny_config()
  for key, value in overrides.items():
    if key == 'stages' and value and isinstance(value[0], tuple):
      value = tuple(dict(zip(staged_lib.STAGE_FIELDS, s)) for s in value)
    config[key] = value
  with pytest.raises(errors.ConfigError, match=match):
    init(config)


def test_a_few_train_steps_lower_the_loss():
  model, params = init(tiny_config('pool', dropout_rate=0.1))
  images = random_images(batch=16, seed=4)
  labels = jnp.arange(16) % 5
  tx = optax.adam(1e-2)

  @jax.jit
  def step(params, opt_state, rng):
    def loss_fn(p):
      logits = model.apply({'params': p}, images, train=True,
                           rngs={'dropout': rng})
      return optax.softmax_cross_entropy_with_integer_labels(
          logits, labels).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  opt_state = tx.init(params)
  losses = []
  for i in range(20):
    params, opt_state, loss = step(params, opt_state, jax.random.key(i))
    losses.append(float(loss))
  assert losses[0] == pytest.approx(np.log(5), rel=1e-3)  # zero head
  assert losses[-1] < 0.5 * losses[0]


def test_attention_weights_of_every_block_in_order():
  model, params = init(tiny_config('pool'))
  blocks = staged_attention.attention_weights(model, params,
                                              random_images(batch=1))
  assert [(b.stage, b.block) for b in blocks] == [(0, 0), (1, 0), (1, 1)]
  assert [b.num_tokens for b in blocks] == [17, 5, 5]
  assert [b.grid_shape for b in blocks] == [(4, 4), (2, 2), (2, 2)]
  assert [b.cell_size for b in blocks] == [(4, 4), (8, 8), (8, 8)]
  for b in blocks:
    assert b.weights.shape == (1, 2, b.num_tokens, b.num_tokens)
    np.testing.assert_allclose(b.weights.sum(-1), 1.0, rtol=1e-5)


def test_rollout_needs_one_token_count():
  model, params = init(tiny_config('pool'))
  blocks = staged_attention.attention_weights(model, params,
                                              random_images(batch=1))
  with pytest.raises(errors.UserError, match=r'\[17, 5, 5\]'):
    staged_attention.blocks_for_rollout(blocks)
  last = staged_attention.blocks_for_rollout(blocks, last_stage_only=True)
  assert [(b.stage, b.block) for b in last] == [(1, 0), (1, 1)]
  model, params = init(tiny_config('linear'))
  blocks = staged_attention.attention_weights(model, params,
                                              random_images(batch=1))
  assert len(staged_attention.blocks_for_rollout(blocks)) == 3


def test_locality_uses_each_stage_grid():
  model, params = init(tiny_config('pool', locality=True))
  shapes = flat_shapes(params)
  assert shapes['Transformer/stage_0/encoderblock_0/MlpBlock_3/locality_conv/'
                'kernel'] == (3, 3, 1, 16)
  assert shapes['Transformer/stage_1/encoderblock_1/MlpBlock_3/locality_conv/'
                'kernel'] == (3, 3, 1, 32)
  assert forward(model, params, random_images()).shape == (2, 5)


def test_other_image_size_resizes_position_embeddings_once():
  model, params = init(tiny_config('pool'), image_size=16)
  # 32px: an 8x8 grid, pooled to 4x4; the stored 4x4 table is resized.
  logits = forward(model, params, random_images(size=32))
  assert logits.shape == (2, 5)
  assert model.grid_shapes((32, 32)) == [(8, 8), (4, 4)]


def test_bfloat16_compute_keeps_float32_params_and_logits():
  model, params = init(tiny_config('pool', dtype='bfloat16'))
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  params = jax.tree.map(lambda p: p + 0.01, params)  # non-zero head
  images = random_images()
  y16 = forward(model, params, images)
  y32 = forward(staged_lib.StagedVisionTransformer(
      num_classes=5, **tiny_config('pool')), params, images)
  assert y16.dtype == jnp.float32
  np.testing.assert_allclose(y16, y32, atol=0.05, rtol=0.05)


def count_config_params(config):
  model = presets.create_model(config.model_type, config.model, 10)
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, config.pp.crop, config.pp.crop, 3)),
      train=False))
  return stats.count_params(shapes['params'])


def test_quickstart_twins_have_matched_parameter_counts():
  staged = vit_staged_quickstart.get_config()
  tower = vit_tower_quickstart.get_config()
  assert staged.model_type == 'staged' and tower.model_type == 'vit'
  tower_count = count_config_params(tower)
  for transition in staged_lib.TRANSITIONS:
    with staged.unlocked():
      staged.model.transition = transition
    staged_count = count_config_params(staged)
    assert abs(staged_count - tower_count) / staged_count < 0.1, transition
  # Same data and recipe: only the model differs.
  differs = {k for k in staged.keys() if staged[k] != tower[k]}
  assert differs == {'model', 'model_type'}


# Small-data options.


def test_stochastic_depth_rises_over_all_blocks_of_all_stages():
  model, params = init(tiny_config('pool', stochastic_depth=0.2))
  rates = {}

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, drop_path.DropPath):
      rates['/'.join(context.module.path[:-1])] = context.module.rate
    return next_fun(*args, **kwargs)

  images = random_images()
  with flax.linen.intercept_methods(record):
    trained = model.apply({'params': params}, images, train=True,
                          rngs={'dropout': jax.random.key(0)})
  assert rates == {'Transformer/stage_0/encoderblock_0': 0.0,
                   'Transformer/stage_1/encoderblock_0': 0.1,
                   'Transformer/stage_1/encoderblock_1': 0.2}
  # Evaluation never drops: it equals the model without stochastic depth.
  plain = staged_lib.StagedVisionTransformer(num_classes=5,
                                             **tiny_config('pool'))
  np.testing.assert_array_equal(forward(model, params, images),
                                forward(plain, params, images))
  assert trained.shape == (2, 5)


@pytest.mark.parametrize('overrides,added,removed', [
    ({'patch_embedding': 'spt'},
     {'spt/norm/scale': (4 * 4 * 15,), 'spt/proj/kernel': (4 * 4 * 15, 8)},
     {'embedding/kernel'}),
    ({'attention': 'lsa'},
     {'Transformer/stage_1/encoderblock_1/lsa_temperature': ()}, set()),
    ({'posemb': 'sincos2d'}, {}, {'Transformer/posembed_input/pos_embedding'}),
    ({'classifier': 'token_distill'},
     {'dist': (1, 1, 8), 'head_dist/kernel': (16, 5)}, set()),
])
def test_small_data_options_add_and_remove_these_params(overrides, added,
                                                        removed):
  base_model = presets.create_model('staged', tiny_config('pool'), 5)
  base = flat_shapes(jax.eval_shape(lambda: base_model.init(
      jax.random.key(0), jnp.ones((1, 16, 16, 3)), train=False))['params'])
  model, params = init(tiny_config('pool', **overrides))
  shapes = flat_shapes(params)
  for name, shape in added.items():
    assert shapes[name] == shape
  assert removed <= set(base) and not removed & set(shapes)
  logits = forward(model, params, random_images())
  assert logits.shape == (2, 5) and np.all(np.isfinite(logits))


def test_staged_lsa_masks_the_diagonal_of_every_block():
  model, params = init(tiny_config('pool', attention='lsa'))
  blocks = staged_attention.attention_weights(model, params,
                                              random_images(batch=1))
  for b in blocks:
    diagonal = np.diagonal(np.asarray(b.weights), axis1=-2, axis2=-1)
    assert np.all(diagonal == 0.0), (b.stage, b.block)


def test_staged_distillation_eval_is_the_mean_of_the_pair():
  model, params = init(tiny_config('pool', classifier='token_distill'))
  params = jax.tree.map(
      lambda p: p + jax.random.normal(jax.random.key(3), p.shape), params)
  images = random_images()
  class_logits, distill_logits = model.apply(
      {'params': params}, images, train=False, distill_outputs=True)
  np.testing.assert_allclose(forward(model, params, images),
                             (class_logits + distill_logits) / 2, rtol=1e-5,
                             atol=1e-6)
  assert model.num_prefix_tokens == 2


@pytest.mark.parametrize('overrides,match', [
    ({'attention': 'local'}, r"model.attention='local'"),
    ({'patch_embedding': 'linear'}, r"model.patch_embedding='linear'"),
    ({'posemb': 'none'}, r"model.posemb='none'"),
    ({'stochastic_depth': 1.5}, r'model.stochastic_depth=1.5'),
])
def test_bad_small_data_options_are_clear_errors(overrides, match):
  with pytest.raises(errors.ConfigError, match=match):
    init(tiny_config(**overrides))
