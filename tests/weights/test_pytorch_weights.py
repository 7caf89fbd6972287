"""Tests of vit_flax.weights.pytorch_read and pytorch_write, and of
load_pretrained on timm / HF files.

The files are written by the tests (NumPy and safetensors, no torch) with
the key names and shapes of timm and transformers.
"""

import functools
import json
import sys

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy

from vit_flax import errors
from vit_flax.configs import common
from vit_flax.models import vit
from vit_flax.weights import npz
from vit_flax.weights import pretrained as pretrained_lib
from vit_flax.weights import pytorch_layout
from vit_flax.weights import pytorch_read
from vit_flax.weights import pytorch_write

from helpers import tiny_model_config
import pytorch_layouts
from pytorch_layouts import flat

IMAGES = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))


def config_for(classifier='token', gelu='exact', **overrides):
  return tiny_model_config(classifier=classifier, gelu=gelu, **overrides)


@functools.lru_cache(maxsize=None)
def _init(classifier, gelu, image_size, num_classes, seed):
  config = config_for(classifier, gelu)
  model = vit.VisionTransformer(num_classes=num_classes, **config)
  params = jax.jit(functools.partial(model.init, train=False))(
      jax.random.key(seed), jnp.ones((1, image_size, image_size, 3)))['params']
  rng = np.random.RandomState(seed + 1)
  return jax.tree.map(lambda p: 0.5 * rng.randn(*p.shape).astype(p.dtype),
                      jax.device_get(params))


def random_params(classifier='token', gelu='exact', image_size=16,
                  num_classes=5, seed=0):
  """Random (not initial) params: every tensor matters for the logits."""
  return jax.tree.map(np.copy, _init(classifier, gelu, image_size,
                                     num_classes, seed))


def logits(config, params, images=IMAGES, num_classes=5):
  model = vit.VisionTransformer(num_classes=num_classes, **config)
  apply = jax.jit(functools.partial(model.apply, train=False))
  return np.asarray(apply({'params': params}, images))


def load_pretrained(path, config, keep_head=True, image_size=16,
                    num_classes=5):
  init_params = random_params(config.classifier, config.gelu, image_size,
                              num_classes, seed=7)
  return pretrained_lib.load_pretrained(pretrained_path=path,
                                        init_params=init_params,
                                        model_config=config,
                                        keep_head=keep_head)


def assert_same_params(got, want):
  got, want = flat(got), flat(want)
  assert got.keys() == want.keys()
  for key in want:
    np.testing.assert_array_equal(got[key], want[key], err_msg=key)


# timm state dicts.


@pytest.mark.parametrize('classifier', ['token', 'gap'])
def test_timm_safetensors_gives_the_logits_of_the_npz(tmp_path, classifier):
  config = config_for(classifier)
  params = random_params(classifier)
  npz.save(params, tmp_path / 'model.npz')
  state = pytorch_layouts.timm_state(params)
  assert ('cls_token' in state) == (classifier == 'token')
  pytorch_layouts.write_safetensors(tmp_path / 'model.safetensors', state)

  from_timm = load_pretrained(tmp_path / 'model.safetensors', config)
  from_npz = load_pretrained(tmp_path / 'model.npz', config)
  assert_same_params(from_timm, from_npz)
  got = logits(config, from_timm)
  np.testing.assert_allclose(got, logits(config, from_npz), atol=1e-5,
                             rtol=0)
  # And what timm computes from that state dict, in NumPy.
  pool = 'token' if classifier == 'token' else 'avg'
  np.testing.assert_allclose(
      got, pytorch_layouts.timm_forward(state, IMAGES, 2, 'exact', pool),
      atol=1e-4, rtol=1e-4)


def test_timm_architecture_comes_from_shapes_and_heads_from_the_caller(
    tmp_path):
  params = random_params('gap')
  path = tmp_path / 'model.safetensors'
  pytorch_layouts.write_safetensors(path, pytorch_layouts.timm_state(params))
  loaded, arch = pytorch_read.load(path, num_heads=2)
  assert_same_params(loaded, params)
  assert (arch.layout, arch.hidden_size, arch.num_layers, arch.mlp_dim,
          arch.patch_size, arch.class_token, arch.num_classes,
          arch.num_tokens) == ('timm', 16, 2, 32, (4, 4), False, 5, 16)
  assert arch.num_heads is None  # A state dict does not say.
  assert (arch.gelu, arch.gelu_stated) == ('exact', False)
  with pytest.raises(errors.CheckpointError,
                     match='number of attention heads is needed'):
    pytorch_read.load(path)


def test_timm_hub_config_gives_heads_gelu_and_pooling(tmp_path):
  params = random_params('gap')
  pytorch_layouts.write_safetensors(tmp_path / 'model.safetensors',
                                    pytorch_layouts.timm_state(params))
  (tmp_path / 'config.json').write_text(json.dumps({
      'architecture': 'vit_tiny_patch16_224', 'num_classes': 5,
      'global_pool': 'avg',
      'model_args': {'num_heads': 2, 'act_layer': 'gelu_tanh'}}))
  loaded, arch = pytorch_read.load(tmp_path / 'model.safetensors')
  assert_same_params(loaded, params)
  assert (arch.num_heads, arch.gelu, arch.classifier) == (2, 'tanh', 'gap')
  restored = load_pretrained(tmp_path / 'model.safetensors',
                             config_for('gap', gelu='tanh'))
  assert_same_params(restored, params)


def test_pth_without_torch_is_a_clear_error(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, 'torch', None)  # `import torch` fails.
  path = tmp_path / 'deit_tiny.pth'
  path.write_bytes(b'PK\x03\x04archive/data.pkl')
  with pytest.raises(errors.CheckpointError,
                     match=r"torch is not installed.*vit_flax\[torch\].*"
                     r'safetensors\.torch\.save_file'):
    load_pretrained(path, config_for())


def test_bfloat16_safetensors_are_read_as_float32(tmp_path):
  params = random_params()
  state = {k: v.astype(ml_dtypes.bfloat16) if k.startswith('blocks.0.')
           else v for k, v in pytorch_layouts.timm_state(params).items()}
  safetensors.numpy.save_file(state, str(tmp_path / 'bf16.safetensors'))
  loaded, _ = pytorch_read.load(tmp_path / 'bf16.safetensors', 2)
  kernel = flat(loaded)['Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel']
  assert kernel.dtype == np.float32
  np.testing.assert_array_equal(
      kernel, state['blocks.0.mlp.fc1.weight'].astype(np.float32).T)
  np.testing.assert_array_equal(flat(loaded)['cls'], params['cls'])


def test_files_are_told_apart_by_content_not_name(tmp_path):
  params = random_params()
  pytorch_layouts.write_safetensors(tmp_path / 'weights',
                                    pytorch_layouts.timm_state(params))
  npz.save(params, tmp_path / 'official')
  assert pytorch_read.is_pytorch_checkpoint(tmp_path / 'weights')
  assert not pytorch_read.is_pytorch_checkpoint(tmp_path / 'official')
  assert_same_params(load_pretrained(tmp_path / 'weights', config_for()),
                     load_pretrained(tmp_path / 'official', config_for()))


def test_new_class_count_and_resolution_as_for_npz(tmp_path):
  config = config_for()
  params = random_params()
  pytorch_layouts.write_safetensors(tmp_path / 'model.safetensors',
                                    pytorch_layouts.timm_state(params))
  npz.save(params, tmp_path / 'model.npz')
  kwargs = dict(config=config, keep_head=False, image_size=32, num_classes=3)
  from_timm = load_pretrained(tmp_path / 'model.safetensors', **kwargs)
  assert_same_params(from_timm, load_pretrained(tmp_path / 'model.npz',
                                                **kwargs))
  fresh = flat(random_params(image_size=32, num_classes=3, seed=7))
  np.testing.assert_array_equal(flat(from_timm)['head/kernel'],
                                fresh['head/kernel'])
  assert flat(from_timm)[pytorch_layout.POSEMB].shape == (1, 65, 16)


# Hugging Face transformers checkpoints.


@pytest.mark.parametrize('hidden_act,gelu', [('gelu', 'exact'),
                                             ('gelu_pytorch_tanh', 'tanh')])
def test_hf_folder_gives_the_logits_of_the_npz(tmp_path, hidden_act, gelu):
  config = config_for(gelu=gelu)
  params = random_params(gelu=gelu)
  npz.save(params, tmp_path / 'model.npz')
  folder = tmp_path / 'vit-hf'
  pytorch_layouts.write_hf_folder(folder, pytorch_layouts.hf_state(params),
                                  pytorch_layouts.hf_config(
                                      hidden_act=hidden_act))
  from_npz = load_pretrained(tmp_path / 'model.npz', config)
  for path in (folder, folder / 'model.safetensors'):  # config.json beside
    from_hf = load_pretrained(path, config)
    assert_same_params(from_hf, from_npz)
    np.testing.assert_allclose(logits(config, from_hf),
                               logits(config, from_npz), atol=1e-5, rtol=0)
  _, arch = pytorch_read.load(folder)
  assert (arch.layout, arch.num_heads, arch.gelu, arch.classifier,
          arch.layer_norm_eps) == ('hf', 2, gelu, 'token', 1e-12)


def test_hf_vit_model_pooler_is_pre_logits(tmp_path):
  params = random_params()
  del params['head']
  state = pytorch_layouts.hf_state(params, prefix='')
  state['pooler.dense.weight'] = np.eye(16, dtype=np.float32)[::-1].copy()
  state['pooler.dense.bias'] = np.arange(16, dtype=np.float32)
  pytorch_layouts.write_hf_folder(tmp_path / 'bare', state,
                                  pytorch_layouts.hf_config())
  loaded, arch = pytorch_read.load(tmp_path / 'bare')
  assert (arch.representation_size, arch.num_classes) == (16, 0)
  np.testing.assert_array_equal(loaded['pre_logits']['kernel'],
                                state['pooler.dense.weight'].T)
  # Fine-tuning without representation_size drops it, as for .npz files.
  restored = load_pretrained(tmp_path / 'bare', config_for())
  assert 'pre_logits' not in restored


def test_hf_sharded_checkpoint(tmp_path):
  params = random_params()
  state = pytorch_layouts.hf_state(params)
  keys = sorted(state)
  folder = tmp_path / 'sharded'
  folder.mkdir()
  weight_map = {}
  for i, part in enumerate((keys[:10], keys[10:])):
    name = f'model-0000{i + 1}-of-00002.safetensors'
    pytorch_layouts.write_safetensors(folder / name,
                                      {k: state[k] for k in part})
    weight_map.update({k: name for k in part})
  (folder / 'model.safetensors.index.json').write_text(
      json.dumps({'weight_map': weight_map}))
  (folder / 'config.json').write_text(json.dumps(pytorch_layouts.hf_config()))
  assert_same_params(pytorch_read.load(folder)[0], params)


# DeiT: the distillation token and head, at the level of param dicts.


def distilled_params():
  params = random_params()
  rng = np.random.RandomState(3)
  posemb = params['Transformer']['posembed_input']['pos_embedding']
  params['Transformer']['posembed_input']['pos_embedding'] = np.concatenate(
      [posemb[:, :1], rng.randn(1, 1, 16).astype(np.float32), posemb[:, 1:]],
      axis=1)
  params['dist'] = rng.randn(1, 1, 16).astype(np.float32)
  params['head_dist'] = {'kernel': rng.randn(16, 5).astype(np.float32),
                         'bias': rng.randn(5).astype(np.float32)}
  return params


def test_timm_deit_distilled_maps_to_dist_and_head_dist_and_back(tmp_path):
  params = distilled_params()
  state = pytorch_layouts.timm_state(params)
  assert state['dist_token'].shape == (1, 1, 16)
  assert state['pos_embed'].shape == (1, 2 + 16, 16)
  pytorch_layouts.write_safetensors(tmp_path / 'deit.safetensors', state)
  loaded, arch = pytorch_read.load(tmp_path / 'deit.safetensors', 2)
  assert arch.distilled and arch.class_token
  assert_same_params(loaded, params)
  back = pytorch_write.to_timm(loaded, config_for())
  assert back.keys() == state.keys()
  for key in state:
    np.testing.assert_array_equal(back[key], state[key], err_msg=key)
  # What a timm DeiT computes: the mean of the two heads.
  expected = pytorch_layouts.timm_forward(state, IMAGES, 2)
  assert expected.shape == (2, 5)
  assert pytorch_write.timm_base_name(loaded) == (
      'deit_base_distilled_patch16_224')


def test_hf_deit_with_teacher_maps_to_dist_and_head_dist_and_back(tmp_path):
  params = distilled_params()
  state = pytorch_layouts.hf_state(params, prefix='deit.',
                                   distilled_heads=True)
  assert {'deit.embeddings.distillation_token',
          'distillation_classifier.weight', 'cls_classifier.bias'} <= set(
              state)
  pytorch_layouts.write_hf_folder(
      tmp_path / 'deit', state,
      pytorch_layouts.hf_config(model_type='deit', architectures=[
          'DeiTForImageClassificationWithTeacher']))
  loaded, arch = pytorch_read.load(tmp_path / 'deit')
  assert arch.distilled
  assert_same_params(loaded, params)
  back, hf_config = pytorch_write.to_hf(loaded, config_for())
  assert back.keys() == state.keys()
  for key in state:
    np.testing.assert_array_equal(back[key], state[key], err_msg=key)
  assert hf_config['model_type'] == 'deit'
  assert hf_config['architectures'] == [
      'DeiTForImageClassificationWithTeacher']


def test_distilled_checkpoint_into_a_model_without_the_token(tmp_path):
  pytorch_layouts.write_safetensors(
      tmp_path / 'deit.safetensors',
      pytorch_layouts.timm_state(distilled_params()))
  with pytest.raises(errors.CheckpointError,
                     match='has a DeiT distillation token.*that the model '
                     'lacks'):
    load_pretrained(tmp_path / 'deit.safetensors', config_for())


def test_posembed_resize_keeps_both_deit_tokens():
  posemb = np.arange(2 + 4, dtype=np.float32).reshape(1, 6, 1)  # cls, dist
  out = pretrained_lib.interpolate_posembed(posemb,
                                            2 + 9,
                                            True,
                                            num_prefix_tokens=2)
  np.testing.assert_array_equal(out[0, :2, 0], [0, 1])
  np.testing.assert_allclose(out[0, 2:, 0].reshape(3, 3),
                             [[2, 2.5, 3], [3, 3.5, 4], [4, 4.5, 5]])


# Mismatches and bad files: each a clear error naming the difference.


def write_timm(tmp_path, params=None, edit=None, name='model.safetensors'):
  state = pytorch_layouts.timm_state(random_params() if params is None
                                     else params)
  if edit:
    edit(state)
  path = tmp_path / name
  pytorch_layouts.write_safetensors(path, state)
  return path


@pytest.mark.parametrize('overrides,message', [
    (dict(hidden_size=24), r'hidden_size=24 but the checkpoint has 16 '
     r'\(embed_dim\)'),
    (dict(num_layers=3), r'num_layers=3 but the checkpoint has 2 \(depth\)'),
    (dict(patch=8), r'patches.size=\(8, 8\) but the checkpoint has \(4, 4\)'),
    (dict(classifier='gap'), "has a class token but "
     "config.model.classifier='gap' has none; use classifier='token'"),
    (dict(gelu='tanh'), "gelu='tanh' but the checkpoint uses 'exact' GELU "
     r"\(timm's default.*--config.model.gelu=exact.*gelu_tanh"),
    (dict(locality=True), 'locality=True adds a depthwise conv'),
])
def test_timm_mismatch_names_both_values(tmp_path, overrides, message):
  path = write_timm(tmp_path)
  config = config_for(**overrides)
  with pytest.raises(errors.CheckpointError, match=message):
    pretrained_lib.load_pretrained(pretrained_path=path,
                                   init_params={},
                                   model_config=config)


def test_heads_mismatch_with_hf_config_names_both_values(tmp_path):
  params = random_params()
  pytorch_layouts.write_hf_folder(
      tmp_path / 'hf', pytorch_layouts.hf_state(params),
      pytorch_layouts.hf_config(heads=4))
  with pytest.raises(errors.CheckpointError,
                     match=r'num_heads=2 but the checkpoint has 4 '
                     r'\(num_attention_heads\)'):
    load_pretrained(tmp_path / 'hf', config_for())


def test_missing_key_is_named(tmp_path):
  path = write_timm(tmp_path, edit=lambda s: s.pop('blocks.1.mlp.fc2.bias'))
  with pytest.raises(errors.CheckpointError,
                     match=r'lacks 1 keys.*blocks\.1\.mlp\.fc2\.bias'):
    load_pretrained(path, config_for())


@pytest.mark.parametrize('key,feature', [
    ('blocks.0.ls1.gamma', 'layer scale'),
    ('fc_norm.weight', 'fc_norm'),
    ('some.other.weight', None),
])
def test_extra_key_is_named_with_its_feature(tmp_path, key, feature):
  path = write_timm(
      tmp_path, edit=lambda s: s.update({key: np.ones(16, np.float32)}))
  with pytest.raises(errors.CheckpointError,
                     match=rf'1 keys .* no parameter for: {key}') as error:
    load_pretrained(path, config_for())
  if feature:
    assert feature in str(error.value)


def test_hf_config_that_contradicts_its_tensors(tmp_path):
  pytorch_layouts.write_hf_folder(
      tmp_path / 'hf', pytorch_layouts.hf_state(random_params()),
      pytorch_layouts.hf_config(hidden=32))
  with pytest.raises(errors.CheckpointError,
                     match='does not match its weights: hidden_size=32 but '
                     'the tensors have 16'):
    pytorch_read.load(tmp_path / 'hf')


def test_timm_config_that_contradicts_its_tensors(tmp_path):
  path = write_timm(tmp_path)
  (tmp_path / 'config.json').write_text(json.dumps({
      'architecture': 'vit_small_patch16_224',
      'model_args': {'embed_dim': 384, 'patch_size': 16, 'num_heads': 6}}))
  with pytest.raises(errors.CheckpointError,
                     match='timm arguments .* do not match its weights: '
                     'embed_dim=384 but the tensors have 16; patch_size=16 '
                     'but the tensors have 4'):
    pytorch_read.load(path)


def test_hf_config_of_another_model_type(tmp_path):
  pytorch_layouts.write_hf_folder(
      tmp_path / 'hf', pytorch_layouts.hf_state(random_params()),
      pytorch_layouts.hf_config(model_type='beit'))
  with pytest.raises(errors.CheckpointError,
                     match="config of a 'beit' model.*'vit', 'deit'"):
    pytorch_read.load(tmp_path / 'hf')


def test_state_dict_of_another_model(tmp_path):
  pytorch_layouts.write_safetensors(
      tmp_path / 'resnet.safetensors',
      {'conv1.weight': np.zeros((8, 3, 7, 7), np.float32),
       'fc.weight': np.zeros((10, 8), np.float32)})
  with pytest.raises(errors.CheckpointError,
                     match='neither a timm ViT/DeiT.*conv1.weight'):
    load_pretrained(tmp_path / 'resnet.safetensors', config_for())


def test_truncated_safetensors_and_empty_folder(tmp_path):
  path = write_timm(tmp_path)
  data = path.read_bytes()
  (tmp_path / 'cut.safetensors').write_bytes(data[:len(data) // 2])
  with pytest.raises(errors.CheckpointError,
                     match='not a readable safetensors file'):
    pytorch_read.load(tmp_path / 'cut.safetensors', 2)
  (tmp_path / 'empty').mkdir()
  with pytest.raises(errors.CheckpointError,
                     match='holds none of model.safetensors'):
    pytorch_read.load(tmp_path / 'empty')
  with pytest.raises(FileNotFoundError, match='does not exist'):
    pytorch_read.load(tmp_path / 'nope.safetensors')


def test_heads_that_do_not_divide_the_width(tmp_path):
  path = write_timm(tmp_path)
  with pytest.raises(errors.CheckpointError,
                     match=r'does not split into 3 x 3 heads'):
    pytorch_read.load(path, num_heads=3)


def test_export_names_what_the_format_cannot_express():
  params = random_params()
  for overrides, fmt, feature in (
      (dict(locality=True), 'timm', 'locality'),
      (dict(representation_size=8), 'timm', 'representation_size'),
      (dict(classifier='gap'), 'hf', "classifier='gap'"),
  ):
    with pytest.raises(errors.CheckpointError, match=feature):
      if fmt == 'timm':
        pytorch_write.to_timm(params, config_for(**overrides))
      else:
        pytorch_write.to_hf(params, config_for(**overrides))
  with pytest.raises(errors.CheckpointError, match='staged widths'):
    pytorch_write.to_timm(params, config_for(), model_type='staged')
  params['Transformer']['encoderblock_0']['MlpBlock_3']['locality_conv'] = {
      'kernel': np.zeros((3, 3, 1, 32), np.float32)}
  with pytest.raises(errors.CheckpointError,
                     match='no place for: .*locality_conv/kernel'):
    pytorch_write.to_timm(params, config_for())


def test_timm_model_args_of_a_gap_model():
  args = pytorch_write.timm_model_args(random_params('gap', 'tanh'),
                                       config_for('gap', 'tanh'))
  assert args == {
      'img_size': 16, 'patch_size': 4, 'in_chans': 3, 'num_classes': 5,
      'embed_dim': 16, 'depth': 2, 'num_heads': 2, 'mlp_ratio': 2.0,
      'class_token': False, 'global_pool': 'avg', 'fc_norm': False,
      'act_layer': 'gelu_tanh'}
  args = pytorch_write.timm_model_args(random_params(), config_for())
  assert 'fc_norm' not in args and args['act_layer'] == 'gelu'
  assert (args['class_token'], args['global_pool']) == (True, 'token')
  # timm's MLP width is int(embed_dim * mlp_ratio): not every width.
  config = config_for(hidden_size=22)
  config.transformer.mlp_dim = 49
  params = {'embedding': {'kernel': np.zeros((4, 4, 3, 22), np.float32)},
            'cls': np.zeros((1, 1, 22), np.float32),
            'Transformer': {'posembed_input': {
                'pos_embedding': np.zeros((1, 17, 22), np.float32)}}}
  with pytest.raises(errors.CheckpointError,
                     match='cannot express mlp_dim=49 at width 22'):
    pytorch_write.timm_model_args(params, config)



@pytest.mark.slow
def test_training_fine_tunes_from_a_timm_file(tmp_path):
  """config.pretrained_path takes the file: train.py's own call."""
  from vit_flax.configs import common  # pylint: disable=g-import-not-at-top
  from vit_flax.training import loop  # pylint: disable=g-import-not-at-top

  from helpers import write_fashion_mnist  # pylint: disable=g-import-not-at-top
  write_fashion_mnist(str(tmp_path / 'data'), num_train=16, num_test=8)
  pretrained = random_params(image_size=28)
  path = tmp_path / 'vit.safetensors'
  pytorch_layouts.write_safetensors(path,
                                    pytorch_layouts.timm_state(pretrained))
  config = common.get_config()
  config.dataset = 'fashion_mnist'
  config.tfds_manual_dir = str(tmp_path / 'data')
  config.pp.crop = 16  # Another resolution: the grid is resized.
  config.model = config_for(gelu='exact')
  config.pretrained_path = str(path)
  config.optimizer = 'adamw'
  config.optim_dtype = 'float32'
  config.base_lr = 0.0  # The params stay those loaded.
  config.batch = config.batch_eval = 8
  config.total_steps = 1
  config.warmup_steps = 0
  config.eval_every = config.progress_every = 1
  config.checkpoint_every = 0
  config.eval_figures = False
  state = loop.train_and_evaluate(config, str(tmp_path / 'run'))
  got = flat(jax.device_get(state.params))
  want = flat(pretrained)
  assert got['head/kernel'].shape == (16, 10)  # Fashion-MNIST's classes.
  np.testing.assert_array_equal(got['cls'], want['cls'])
  np.testing.assert_array_equal(
      got['Transformer/encoderblock_1/MlpBlock_3/Dense_0/kernel'],
      want['Transformer/encoderblock_1/MlpBlock_3/Dense_0/kernel'])
  np.testing.assert_allclose(
      got[pytorch_layout.POSEMB], pretrained_lib.interpolate_posembed(
          want[pytorch_layout.POSEMB], 1 + 16, True), rtol=1e-6)

  config.model.gelu = 'tanh'  # The default: timm's exact GELU differs.
  with pytest.raises(errors.CheckpointError,
                     match="config.model.gelu='tanh' but the checkpoint"):
    loop.train_and_evaluate(config, str(tmp_path / 'run_tanh'))


@pytest.mark.parametrize('hub', ['hf', 'timm'])
def test_deit_tiny_config_loads_the_hub_layouts(tmp_path, hub):
  """configs/deit_tiny_finetune.py with DeiT-tiny-shaped files as the hubs
  publish them (random values; config.json fields as on the hubs)."""
  from vit_flax.configs import deit_tiny_finetune  # pylint: disable=g-import-not-at-top
  config = deit_tiny_finetune.get_config('cifar10')

  def shapes(image_size, num_classes):
    model = vit.VisionTransformer(num_classes=num_classes, **config.model)
    return jax.eval_shape(
        functools.partial(model.init, train=False), jax.random.key(0),
        jnp.zeros((1, image_size, image_size, 3)))['params']

  rng = np.random.RandomState(0)
  pretrained = jax.tree.map(
      lambda s: rng.randn(*s.shape).astype(np.float32), shapes(224, 1000))
  if hub == 'hf':
    path = tmp_path / 'deit-tiny-patch16-224'
    pytorch_layouts.write_hf_folder(
        path, pytorch_layouts.hf_state(pretrained), pytorch_layouts.hf_config(
            hidden=192, layers=12, heads=3, mlp=768, patch=16, image=224,
            classes=1000, encoder_stride=16, problem_type=None,
            torch_dtype='float32'))
  else:
    path = tmp_path / 'model.safetensors'
    pytorch_layouts.write_safetensors(path,
                                      pytorch_layouts.timm_state(pretrained))
    (tmp_path / 'config.json').write_text(json.dumps({
        'architecture': 'deit_tiny_patch16_224', 'num_classes': 1000,
        'num_features': 192, 'global_pool': 'token',
        'pretrained_cfg': {'tag': 'fb_in1k', 'input_size': [3, 224, 224]}}))
  init_params = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype),
                             shapes(config.pp.crop, 10))
  restored = flat(pretrained_lib.load_pretrained(
      pretrained_path=path, init_params=init_params,
      model_config=config.model))
  want = flat(pretrained)
  assert restored['head/kernel'].shape == (192, 10)
  assert restored[pytorch_layout.POSEMB].shape == (1, 1 + 24 * 24, 192)
  np.testing.assert_array_equal(
      restored['Transformer/encoderblock_11/MultiHeadDotProductAttention_1/'
               'query/kernel'],
      want['Transformer/encoderblock_11/MultiHeadDotProductAttention_1/'
           'query/kernel'])


def test_hf_layer_norm_epsilon_comes_from_its_config_json(tmp_path):
  # Small activations, where LayerNorm's epsilon matters: HF's 1e-12 and
  # vit_flax's 1e-6 then give other logits.
  params = random_params()
  params['embedding']['kernel'] = params['embedding']['kernel'] * 1e-3
  params['embedding']['bias'] = params['embedding']['bias'] * 1e-3
  params['Transformer']['posembed_input']['pos_embedding'] *= 1e-3
  folder = tmp_path / 'vit-hf'
  pytorch_layouts.write_hf_folder(folder, pytorch_layouts.hf_state(params),
                                  pytorch_layouts.hf_config())
  # What transformers computes: timm's math with HF's epsilon.
  want = pytorch_layouts.timm_forward(pytorch_layouts.timm_state(params),
                                      IMAGES, num_heads=2, eps=1e-12)
  run = common.get_config()
  run.model = config_for()
  run.pretrained_path = str(folder)
  pretrained_lib.adopt_checkpoint_settings(run)
  assert run.model.layer_norm_eps == 1e-12
  np.testing.assert_allclose(logits(run.model, params), want, atol=1e-5,
                             rtol=0)
  assert np.abs(logits(config_for(), params) - want).max() > 1e-4
  # A value the config sets is the config's.
  run.model.layer_norm_eps = 1e-5
  pretrained_lib.adopt_checkpoint_settings(run)
  assert run.model.layer_norm_eps == 1e-5
  # timm checkpoints (no HF config.json) leave it unset: timm's is 1e-6.
  pytorch_layouts.write_safetensors(str(tmp_path / 'timm.safetensors'),
                                    pytorch_layouts.timm_state(params))
  run.model.layer_norm_eps = None
  run.pretrained_path = str(tmp_path / 'timm.safetensors')
  pretrained_lib.adopt_checkpoint_settings(run)
  assert run.model.layer_norm_eps is None
