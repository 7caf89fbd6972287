"""Tests of vit_flax.checkpoint on .npz files written in the official format."""

import functools
import os

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vit_flax import errors
from vit_flax.models import vit
from vit_flax.weights import npz as npz_lib
from vit_flax.weights import pretrained as pretrained_lib

from helpers import tiny_model_config


def init(config, image_size=16, num_classes=5, seed=0):
  model = vit.VisionTransformer(num_classes=num_classes, **config)
  params = jax.jit(functools.partial(model.init, train=False))(
      jax.random.key(seed), jnp.ones((1, image_size, image_size, 3)))['params']
  return model, jax.device_get(params)


def flat(params):
  return flax.traverse_util.flatten_dict(params, sep='/')


def write_official_npz(path, params):
  """Writes params as the released checkpoints are: np.savez of '/' keys."""
  np.savez(path, **{k: np.asarray(v) for k, v in flat(params).items()})


def random_params(params, seed=1):
  rng = np.random.RandomState(seed)
  return jax.tree.map(
      lambda p: np.asarray(rng.randn(*p.shape), p.dtype), params)


def test_save_load_round_trip_is_exact(tmp_path):
  _, params = init(tiny_model_config(representation_size=6))
  params = random_params(params)
  path = tmp_path / 'model.npz'
  npz_lib.save(params, path)
  assert os.listdir(tmp_path) == ['model.npz']  # No temporary file left.
  loaded = npz_lib.load(path)
  assert flat(loaded).keys() == flat(params).keys()
  for key, value in flat(params).items():
    assert flat(loaded)[key].dtype == value.dtype
    np.testing.assert_array_equal(flat(loaded)[key], value)


def test_saved_file_is_a_flat_official_npz(tmp_path):
  _, params = init(tiny_model_config())
  npz_lib.save(params, tmp_path / 'model.npz')
  with np.load(tmp_path / 'model.npz') as npz:
    assert 'Transformer/encoderblock_0/MultiHeadDotProductAttention_1/' \
        'query/kernel' in npz.files
    assert set(npz.files) == set(flat(params))


def test_official_npz_gives_the_same_logits(tmp_path):
  model, params = init(tiny_model_config())
  params = random_params(params)
  write_official_npz(tmp_path / 'official.npz', params)
  loaded = npz_lib.load(tmp_path / 'official.npz')
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
  np.testing.assert_array_equal(
      model.apply({'params': loaded}, x, train=False),
      model.apply({'params': params}, x, train=False))


def test_load_pretrained_to_new_resolution_and_class_count(tmp_path):
  config = tiny_model_config()
  _, pretrained = init(config, image_size=16, num_classes=5)
  pretrained = random_params(pretrained)
  write_official_npz(tmp_path / 'pre.npz', pretrained)

  _, init_params = init(config, image_size=32, num_classes=3, seed=1)
  restored = pretrained_lib.load_pretrained(
      pretrained_path=tmp_path / 'pre.npz', init_params=init_params,
      model_config=config)

  got, old, fresh = flat(restored), flat(pretrained), flat(init_params)
  assert {k: v.shape for k, v in got.items()} == {
      k: v.shape for k, v in fresh.items()}
  posemb = 'Transformer/posembed_input/pos_embedding'
  assert got[posemb].shape == (1, 65, 16)  # 8x8 grid + class token
  for key in got:
    if key.startswith('head/'):
      np.testing.assert_array_equal(got[key], fresh[key])
    elif key == posemb:
      np.testing.assert_array_equal(got[key][:, :1], old[key][:, :1])
      np.testing.assert_allclose(
          got[key], pretrained_lib.interpolate_posembed(old[key], 65, True))
    else:
      np.testing.assert_array_equal(got[key], old[key])


def test_load_pretrained_keeps_or_drops_pre_logits(tmp_path):
  config = tiny_model_config(representation_size=6)
  _, pretrained = init(config)
  pretrained = random_params(pretrained)
  write_official_npz(tmp_path / 'pre.npz', pretrained)

  _, init_keep = init(config, num_classes=3)
  kept = pretrained_lib.load_pretrained(pretrained_path=tmp_path / 'pre.npz',
                                        init_params=init_keep,
                                        model_config=config)
  np.testing.assert_array_equal(kept['pre_logits']['kernel'],
                                pretrained['pre_logits']['kernel'])

  drop_config = tiny_model_config()
  _, init_drop = init(drop_config, num_classes=3)
  dropped = pretrained_lib.load_pretrained(
      pretrained_path=tmp_path / 'pre.npz', init_params=init_drop,
      model_config=drop_config)
  assert 'pre_logits' not in dropped
  assert dropped['head']['kernel'].shape == (16, 3)


def test_load_pretrained_fixes_hybrid_groupnorm_shapes(tmp_path):
  config = tiny_model_config(patch=1)
  config.resnet = ml_collections.ConfigDict(
      {'num_layers': (1,), 'width_factor': 0.5})
  _, params = init(config, image_size=16)
  params = random_params(params)
  old_style = {k: (v.reshape(1, 1, 1, -1) if '/gn' in f'/{k}' and
                   k.rsplit('/', 1)[-1] in ('scale', 'bias') else v)
               for k, v in flat(params).items()}
  assert old_style['gn_root/scale'].shape == (1, 1, 1, 32)
  np.savez(tmp_path / 'hybrid.npz', **old_style)
  restored = pretrained_lib.load_pretrained(
      pretrained_path=tmp_path / 'hybrid.npz', init_params=params,
      model_config=config)
  np.testing.assert_array_equal(restored['gn_root']['scale'],
                                params['gn_root']['scale'])
  np.testing.assert_array_equal(
      restored['block1']['unit1']['gn_proj']['bias'],
      params['block1']['unit1']['gn_proj']['bias'])


def test_interpolate_posembed_official_zoom_values():
  posemb = np.arange(1 + 4, dtype=np.float32).reshape(1, 5, 1)  # cls, 2x2
  out = pretrained_lib.interpolate_posembed(posemb, 10, has_class_token=True)
  assert out.shape == (1, 10, 1)
  assert out[0, 0, 0] == 0  # class token kept
  # Corners stay, the middle row/column is the mean of the neighbours.
  np.testing.assert_allclose(out[0, 1:, 0].reshape(3, 3),
                             [[1, 1.5, 2], [2, 2.5, 3], [3, 3.5, 4]])


# Bad inputs.


def test_missing_file_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match='does not exist'):
    npz_lib.load(tmp_path / 'nope.npz')


def test_not_an_npz_is_a_clear_error(tmp_path):
  path = tmp_path / 'model.npz'
  path.write_text('this is not a checkpoint')
  with pytest.raises(errors.CheckpointError,
                     match=r'model\.npz is not a readable \.npz'):
    npz_lib.load(path)


def test_truncated_npz_is_a_clear_error(tmp_path):
  _, params = init(tiny_model_config())
  npz_lib.save(params, tmp_path / 'full.npz')
  data = (tmp_path / 'full.npz').read_bytes()
  (tmp_path / 'cut.npz').write_bytes(data[:len(data) // 2])
  with pytest.raises(errors.CheckpointError, match='truncated'):
    npz_lib.load(tmp_path / 'cut.npz')


def test_checkpoint_of_another_depth_names_the_keys(tmp_path):
  _, deeper = init(tiny_model_config(num_layers=3))
  write_official_npz(tmp_path / 'deep.npz', deeper)
  config = tiny_model_config(num_layers=2)
  _, init_params = init(config)
  with pytest.raises(errors.CheckpointError,
                     match=r'extra in the checkpoint \(Transformer/'
                     r'encoderblock_2/'):
    pretrained_lib.load_pretrained(pretrained_path=tmp_path / 'deep.npz',
                                   init_params=init_params,
                                   model_config=config)


def test_checkpoint_with_missing_keys_names_them(tmp_path):
  _, shallow = init(tiny_model_config(num_layers=1))
  write_official_npz(tmp_path / 'shallow.npz', shallow)
  config = tiny_model_config(num_layers=2)
  _, init_params = init(config)
  with pytest.raises(errors.CheckpointError,
                     match='missing from the checkpoint.*encoderblock_1'):
    pretrained_lib.load_pretrained(pretrained_path=tmp_path / 'shallow.npz',
                                   init_params=init_params,
                                   model_config=config)


def test_checkpoint_of_another_width_names_the_shapes(tmp_path):
  _, wide = init(tiny_model_config(hidden_size=32))
  write_official_npz(tmp_path / 'wide.npz', wide)
  config = tiny_model_config(hidden_size=16)
  _, init_params = init(config)
  with pytest.raises(errors.CheckpointError,
                     match=r'encoder_norm/bias: checkpoint \(32,\) vs model '
                     r'\(16,\)'):
    pretrained_lib.load_pretrained(pretrained_path=tmp_path / 'wide.npz',
                                   init_params=init_params,
                                   model_config=config)


def test_non_square_grid_is_a_clear_error():
  posemb = np.zeros((1, 1 + 6, 4), np.float32)  # a 2x3 grid
  with pytest.raises(errors.CheckpointError, match='not a square grid'):
    pretrained_lib.interpolate_posembed(posemb, 17, has_class_token=True)
  with pytest.raises(errors.CheckpointError, match='not a square grid'):
    pretrained_lib.interpolate_posembed(np.zeros((1, 17, 4)), 13, True)


def test_load_params_checks_shapes(tmp_path):
  _, wide = init(tiny_model_config(hidden_size=32))
  npz_lib.save(wide, tmp_path / 'wide.npz')
  _, narrow = init(tiny_model_config(hidden_size=16))
  with pytest.raises(errors.CheckpointError, match='other shapes'):
    npz_lib.load_params(tmp_path / 'wide.npz', init_params=narrow)


# Distillation tokens, LSA temperatures and fixed position embeddings.


def distill_config(**overrides):
  return tiny_model_config(classifier='token_distill', **overrides)


def test_interpolate_posembed_keeps_two_prefix_rows():
  posemb = np.arange(2 + 4, dtype=np.float32).reshape(1, 6, 1)  # 2 + 2x2
  out = pretrained_lib.interpolate_posembed(posemb, 11, num_prefix_tokens=2)
  assert out.shape == (1, 11, 1)
  np.testing.assert_array_equal(out[0, :2, 0], [0, 1])
  np.testing.assert_allclose(out[0, 2:, 0].reshape(3, 3),
                             [[2, 2.5, 3], [3, 3.5, 4], [4, 4.5, 5]])
  with pytest.raises(TypeError, match='needs has_class_token or'):
    pretrained_lib.interpolate_posembed(posemb, 11)
  # vit_jax's has_class_token beside the count: the count holds.
  np.testing.assert_array_equal(
      pretrained_lib.interpolate_posembed(posemb, 11, True, 2), out)


@pytest.mark.parametrize('overrides', [
    {'classifier': 'token_distill'},
    {'patch_embedding': 'spt', 'posemb': 'sincos2d'},
])
def test_npz_round_trip_of_the_small_data_options(tmp_path, overrides):
  config = tiny_model_config(**overrides)
  config.transformer.attention = 'lsa'  # A scalar parameter per block.
  model, params = init(config)
  params = random_params(params)
  npz_lib.save(params, tmp_path / 'model.npz')
  loaded = npz_lib.load(tmp_path / 'model.npz')
  assert flat(loaded).keys() == flat(params).keys()
  assert flat(loaded)['Transformer/encoderblock_0/lsa_temperature'].shape == ()
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
  outputs = dict(distill_outputs=True) if 'classifier' in overrides else {}
  np.testing.assert_array_equal(
      model.apply({'params': loaded}, x, train=False, **outputs),
      model.apply({'params': params}, x, train=False, **outputs))


def test_load_pretrained_distilled_model_at_another_resolution(tmp_path):
  config = distill_config()
  _, pretrained = init(config, image_size=16)
  pretrained = random_params(pretrained)
  npz_lib.save(pretrained, tmp_path / 'deit.npz')
  _, init_params = init(config, image_size=32, num_classes=3, seed=1)
  restored = flat(pretrained_lib.load_pretrained(
      pretrained_path=tmp_path / 'deit.npz', init_params=init_params,
      model_config=config))
  old, fresh = flat(pretrained), flat(init_params)
  posemb = 'Transformer/posembed_input/pos_embedding'
  assert restored[posemb].shape == (1, 2 + 64, 16)
  np.testing.assert_array_equal(restored[posemb][:, :2], old[posemb][:, :2])
  np.testing.assert_allclose(
      restored[posemb], pretrained_lib.interpolate_posembed(
          old[posemb], 66, num_prefix_tokens=2), rtol=1e-6)
  np.testing.assert_array_equal(restored['dist'], old['dist'])
  for head in ('head', 'head_dist'):  # New task, new heads.
    np.testing.assert_array_equal(restored[f'{head}/kernel'],
                                  fresh[f'{head}/kernel'])


def test_load_pretrained_keep_head_keeps_both_heads(tmp_path):
  config = distill_config()
  _, pretrained = init(config)
  pretrained = random_params(pretrained)
  npz_lib.save(pretrained, tmp_path / 'deit.npz')
  _, init_params = init(config, seed=1)
  restored = flat(pretrained_lib.load_pretrained(
      pretrained_path=tmp_path / 'deit.npz', init_params=init_params,
      model_config=config, keep_head=True))
  for key, value in flat(pretrained).items():
    np.testing.assert_array_equal(restored[key], value)


def test_token_checkpoint_into_a_distilled_model_starts_dist_fresh(tmp_path):
  _, pretrained = init(tiny_model_config())
  pretrained = random_params(pretrained)
  write_official_npz(tmp_path / 'vit.npz', pretrained)
  config = distill_config()
  _, init_params = init(config, seed=1)
  restored = flat(pretrained_lib.load_pretrained(
      pretrained_path=tmp_path / 'vit.npz', init_params=init_params,
      model_config=config))
  old, fresh = flat(pretrained), flat(init_params)
  assert {k: v.shape for k, v in restored.items()} == {
      k: v.shape for k, v in fresh.items()}
  for key in ('dist', 'head_dist/kernel', 'head_dist/bias', 'head/kernel'):
    np.testing.assert_array_equal(restored[key], fresh[key])
  np.testing.assert_array_equal(restored['cls'], old['cls'])
  posemb = 'Transformer/posembed_input/pos_embedding'
  np.testing.assert_array_equal(restored[posemb][:, 0], old[posemb][:, 0])
  np.testing.assert_array_equal(restored[posemb][:, 1], fresh[posemb][:, 1])
  np.testing.assert_array_equal(restored[posemb][:, 2:], old[posemb][:, 1:])
  np.testing.assert_array_equal(
      restored['Transformer/encoder_norm/scale'],
      old['Transformer/encoder_norm/scale'])


def test_distilled_checkpoint_into_a_token_model_drops_dist(tmp_path):
  _, pretrained = init(distill_config())
  pretrained = random_params(pretrained)
  npz_lib.save(pretrained, tmp_path / 'deit.npz')
  config = tiny_model_config()
  _, init_params = init(config, image_size=24, seed=1)
  restored = flat(pretrained_lib.load_pretrained(
      pretrained_path=tmp_path / 'deit.npz', init_params=init_params,
      model_config=config))
  assert 'dist' not in restored and 'head_dist/kernel' not in restored
  old = flat(pretrained)
  posemb = 'Transformer/posembed_input/pos_embedding'
  assert restored[posemb].shape == (1, 1 + 36, 16)
  expected = pretrained_lib.interpolate_posembed(
      np.delete(old[posemb], 1, axis=1), 37, has_class_token=True)
  np.testing.assert_allclose(restored[posemb], expected, rtol=1e-6)


def test_sincos_model_saved_and_loaded_at_another_resolution(tmp_path):
  config = tiny_model_config(posemb='sincos2d')
  model, params = init(config, image_size=16)
  params = random_params(params)
  npz_lib.save(params, tmp_path / 'sincos.npz')
  _, init_params = init(config, image_size=32, seed=1)
  restored = pretrained_lib.load_pretrained(
      pretrained_path=tmp_path / 'sincos.npz', init_params=init_params,
      model_config=config, keep_head=True)
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  logits = model.apply({'params': restored}, x, train=False)
  np.testing.assert_array_equal(
      logits, model.apply({'params': params}, x, train=False))
  assert logits.shape == (2, 5) and np.all(np.isfinite(logits))
