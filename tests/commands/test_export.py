"""Tests of vit_flax.export: npz, timm safetensors and HF folders, all or
nothing."""

import functools
import json
import os
import re
import signal
import subprocess
import sys

from etils import epath
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

from vit_flax import errors
from vit_flax.commands import export
from vit_flax.configs import common
from vit_flax.models import posemb as posemb_lib
from vit_flax.models import presets
from vit_flax.models import vit
from vit_flax.training import checkpointing
from vit_flax.weights import npz
from vit_flax.weights import pretrained
from vit_flax.weights import pytorch_layout
from vit_flax.weights import pytorch_read
from vit_flax.weights import pytorch_write

import helpers
from helpers import tiny_model_config
import pytorch_layouts
from pytorch_layouts import flat

REPO = helpers.REPO
IMAGES = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))


def run_config(classifier='token', gelu='tanh', **overrides):
  config = common.get_config()
  config.pp.crop = 16
  config.model = tiny_model_config(classifier=classifier, gelu=gelu,
                                   **overrides)
  return config


def random_params(config, num_classes=5, seed=0):
  model = presets.create_model(config.get('model_type', 'vit'), config.model,
                               num_classes)
  params = jax.jit(functools.partial(model.init, train=False))(
      jax.random.key(seed), jnp.ones((1, 16, 16, 3)))['params']
  rng = np.random.RandomState(seed + 1)
  return jax.tree.map(
      lambda p: np.asarray(0.5 * rng.randn(*p.shape), p.dtype),
      jax.device_get(params))


def make_workdir(path, config, params):
  """A workdir whose best checkpoint holds `params` and `config`."""
  checkpointer = checkpointing.Checkpointer(path, asynchronous=False)
  try:
    checkpointer.save_if_best(1, params, config, accuracy=0.5)
    checkpointer.wait()
  finally:
    checkpointer.close()
  return str(path)


def logits(config, params):
  model = presets.create_model('vit', config.model, 5)
  apply = jax.jit(functools.partial(model.apply, train=False))
  return np.asarray(apply({'params': params}, IMAGES))


@pytest.mark.parametrize('fmt,classifier,gelu', [
    ('npz', 'token', 'tanh'),
    ('safetensors', 'token', 'exact'),
    ('safetensors', 'gap', 'tanh'),
    ('hf', 'token', 'tanh'),
    ('hf', 'token', 'exact'),
    # DeiT's distillation token: timm's VisionTransformerDistilled, HF's
    # DeiTForImageClassificationWithTeacher.
    ('npz', 'token_distill', 'tanh'),
    ('safetensors', 'token_distill', 'tanh'),
    ('hf', 'token_distill', 'exact'),
])
def test_export_and_import_back_is_exact(tmp_path, fmt, classifier, gelu):
  config = run_config(classifier, gelu)
  params = random_params(config)
  workdir = make_workdir(tmp_path / 'run', config, params)
  out = tmp_path / {'npz': 'model.npz', 'safetensors': 'model.safetensors',
                    'hf': 'model_hf'}[fmt]
  count = export.export(workdir, str(out), best=True, fmt=fmt)
  assert count == sum(x.size for x in jax.tree.leaves(params))
  assert sorted(os.listdir(tmp_path)) == sorted(['run', out.name])

  if fmt == 'npz':
    loaded = npz.load(out)
  else:
    loaded, arch = pytorch_read.load(out)  # Heads from the file itself.
    assert (arch.num_heads, arch.gelu, arch.gelu_stated) == (2, gelu, True)
    assert arch.layout == ('timm' if fmt == 'safetensors' else 'hf')
  got, want = flat(loaded), flat(params)
  assert got.keys() == want.keys()
  for key in want:
    np.testing.assert_array_equal(got[key], want[key], err_msg=key)

  init_params = random_params(config, seed=3)
  restored = pretrained.load_pretrained(
      pretrained_path=out, init_params=init_params, model_config=config.model,
      keep_head=True)
  np.testing.assert_array_equal(logits(config, restored),
                                logits(config, params))


def test_hf_config_json_is_the_transformers_layout(tmp_path):
  config = run_config(gelu='tanh')
  params = random_params(config)
  files = export.encode(params, config, 'hf')
  assert sorted(files) == ['config.json', 'model.safetensors']
  hf_config = json.loads(files['config.json'])
  assert {k: hf_config[k] for k in (
      'architectures', 'model_type', 'hidden_size', 'num_hidden_layers',
      'num_attention_heads', 'intermediate_size', 'hidden_act', 'image_size',
      'patch_size', 'layer_norm_eps')} == {
          'architectures': ['ViTForImageClassification'], 'model_type': 'vit',
          'hidden_size': 16, 'num_hidden_layers': 2, 'num_attention_heads': 2,
          'intermediate_size': 32, 'hidden_act': 'gelu_pytorch_tanh',
          'image_size': 16, 'patch_size': 4, 'layer_norm_eps': 1e-6}
  assert len(hf_config['id2label']) == 5
  (tmp_path / 'model.safetensors').write_bytes(files['model.safetensors'])
  state, _, _ = pytorch_read.read(tmp_path / 'model.safetensors')
  assert 'vit.encoder.layer.1.attention.attention.query.weight' in state
  assert state['classifier.weight'].shape == (5, 16)


def test_loading_code_gives_the_exact_timm_arguments(tmp_path):
  config = run_config('gap', 'tanh')
  params = random_params(config)
  code = export.loading_code(params, config, tmp_path / 'm.npz', 'npz')
  for part in ("'vit_base_patch16_224', pretrained=False", 'img_size=16',
               'patch_size=4', 'embed_dim=16', 'depth=2', 'num_heads=2',
               'mlp_ratio=2.0', 'num_classes=5', 'class_token=False',
               "global_pool='avg'", 'fc_norm=False', "act_layer='gelu_tanh'",
               f"model.load_pretrained('{tmp_path / 'm.npz'}')"):
    assert part in code
  code = export.loading_code(params, config, 'm.safetensors', 'safetensors')
  assert "load_state_dict(safetensors.torch.load_file('m.safetensors'))" in (
      code)
  assert 'from_pretrained' in export.loading_code(params, config, 'd', 'hf')
  config.model.locality = True  # timm cannot compute it: vit_flax's lines.
  code = export.loading_code(params, config, 'm.npz', 'npz')
  assert code.startswith('# model.locality=True (a depthwise conv in every')
  assert 'timm.create_model' not in code and 'create_model(' in code


# DeiT's distillation token (classifier='token_distill').


def test_distilled_model_is_timms_deit_with_its_keys_and_logits():
  config = run_config('token_distill')
  params = random_params(config)
  state = pytorch_write.to_timm(params, config.model)
  assert state['dist_token'].shape == (1, 1, 16)
  assert state['cls_token'].shape == (1, 1, 16)
  assert state['pos_embed'].shape == (1, 2 + 16, 16)
  assert state['head_dist.weight'].shape == (5, 16)
  assert state.keys() == pytorch_layouts.timm_state(params).keys()
  # What timm's DeiT computes from it (tests/pytorch_layouts.py, NumPy).
  np.testing.assert_allclose(
      pytorch_layouts.timm_forward(state, IMAGES, 2, 'tanh'),
      logits(config, params), atol=1e-4, rtol=1e-4)
  args = pytorch_write.timm_model_args(params, config.model)
  assert (args['class_token'], args['global_pool']) == (True, 'token')
  code = export.loading_code(params, config, 'm.safetensors', 'safetensors')
  assert "'deit_base_distilled_patch16_224', pretrained=False" in code
  assert "global_pool='token'" in code


def test_distilled_model_is_hf_deit_with_teacher():
  config = run_config('token_distill')
  params = random_params(config)
  files = export.encode(params, config, 'hf')
  hf_config = json.loads(files['config.json'])
  assert hf_config['architectures'] == [
      'DeiTForImageClassificationWithTeacher']
  assert (hf_config['model_type'], hf_config['image_size']) == ('deit', 16)
  state = safetensors.numpy.load(files['model.safetensors'])
  want = pytorch_layouts.hf_state(params, prefix='deit.',
                                  distilled_heads=True)
  assert state.keys() == want.keys()
  for key in want:
    np.testing.assert_array_equal(state[key], want[key], err_msg=key)
  assert state['deit.embeddings.distillation_token'].shape == (1, 1, 16)
  assert state['distillation_classifier.weight'].shape == (5, 16)


# Fixed sin-cos position embeddings (posemb='sincos2d'): no param.


def sincos_table(num_prefix, grid=(4, 4), width=16):
  return np.concatenate([np.zeros((num_prefix, width), np.float32),
                         posemb_lib.posemb_sincos_2d(grid, width)])[None]


def test_sincos2d_npz_export_reads_back_with_the_same_config(tmp_path):
  config = run_config(posemb='sincos2d')
  params = random_params(config)
  assert pytorch_layout.POSEMB not in flat(params)
  workdir = make_workdir(tmp_path / 'run', config, params)
  out = tmp_path / 'model.npz'
  export.export(workdir, str(out), best=True, fmt='npz')
  restored = pretrained.load_pretrained(
      pretrained_path=out, init_params=random_params(config, seed=3),
      model_config=config.model, keep_head=True)
  np.testing.assert_array_equal(logits(config, restored),
                                logits(config, params))
  code = export.loading_code(params, config, out, 'npz')
  assert 'timm.create_model' not in code  # timm's npz reader needs a table.
  assert "model.posemb='sincos2d' does" in code


@pytest.mark.parametrize('classifier', ['token', 'gap', 'token_distill'])
def test_sincos2d_is_written_as_the_table_timm_adds(tmp_path, classifier):
  config = run_config(classifier, posemb='sincos2d')
  params = random_params(config)
  num_prefix = vit.num_prefix_tokens(classifier)
  state = pytorch_write.to_timm(params, config.model, image_size=16)
  np.testing.assert_array_equal(state['pos_embed'], sincos_table(num_prefix))
  # timm adds pos_embed to [prefix tokens, patches in row-major order]:
  # the logits of vit_flax's sincos2d model.
  pool = 'avg' if classifier == 'gap' else 'token'
  np.testing.assert_allclose(
      pytorch_layouts.timm_forward(state, IMAGES, 2, 'tanh', pool),
      logits(config, params), atol=1e-4, rtol=1e-4)
  args = pytorch_write.timm_model_args(params, config.model, image_size=16)
  assert (args['img_size'], args['patch_size']) == (16, 4)
  # The file loads as a learned table, computing the same at that size.
  out = tmp_path / 'model.safetensors'
  export.write_atomically(out, export.encode(params, config, 'safetensors'))
  learned = run_config(classifier)
  restored = pretrained.load_pretrained(
      pretrained_path=out, init_params=random_params(learned, seed=3),
      model_config=learned.model, keep_head=True)
  np.testing.assert_allclose(logits(learned, restored),
                             logits(config, params), atol=1e-5, rtol=0)
  with pytest.raises(errors.CheckpointError,
                     match="posemb='sincos2d' computes fixed position "
                     "embeddings.*use posemb='learned'"):
    pretrained.load_pretrained(
        pretrained_path=out, init_params=random_params(config, seed=3),
        model_config=config.model, keep_head=True)


def test_sincos2d_is_written_as_the_hf_position_embeddings(tmp_path):
  config = run_config('token_distill', posemb='sincos2d')
  params = random_params(config)
  files = export.encode(params, config, 'hf')
  state = safetensors.numpy.load(files['model.safetensors'])
  np.testing.assert_array_equal(
      state['deit.embeddings.position_embeddings'], sincos_table(2))
  assert json.loads(files['config.json'])['image_size'] == 16
  out = tmp_path / 'model_hf'
  export.write_atomically(out, files)
  loaded, _ = pytorch_read.load(out)
  want = {**flat(params), pytorch_layout.POSEMB: sincos_table(2)}
  got = flat(loaded)
  assert got.keys() == want.keys()
  for key in want:
    np.testing.assert_array_equal(got[key], want[key], err_msg=key)
  code = export.loading_code(params, config, out, 'hf')
  assert "model.posemb='sincos2d' as a fixed table for\n# 16x16 images" in (
      code)


def test_sincos2d_without_an_image_size_is_a_clear_error():
  config = run_config(posemb='sincos2d')
  with pytest.raises(errors.UserError, match=r"posemb='sincos2d'.*image size"
                     r'.*config\.pp\.crop'):
    pytorch_write.to_timm(random_params(config), config.model)


# SPT and LSA: npz only, with vit_flax's loading lines.


def lsa_config():
  config = run_config()
  config.model.transformer.attention = 'lsa'
  return config


SMALL_DATA_MODELS = {
    'spt': (lambda: run_config(patch_embedding='spt'),
            "model.patch_embedding='spt' (Shifted Patch Tokenization)"),
    'lsa': (lsa_config, "model.transformer.attention='lsa' (Locality "
            'Self-Attention'),
}


@pytest.mark.parametrize('name', sorted(SMALL_DATA_MODELS))
def test_spt_and_lsa_npz_prints_vit_flax_loading_code_that_works(
    tmp_path, name):
  make_config, feature = SMALL_DATA_MODELS[name]
  config = make_config()
  params = random_params(config)
  out = tmp_path / 'model.npz'
  export.write_atomically(out, export.encode(params, config, 'npz'))
  code = export.loading_code(params, config, out, 'npz')
  assert code.startswith(f'# {feature[:40]}')
  assert 'import timm' not in code and 'load_pretrained' not in code
  namespace = {'images': IMAGES}
  exec(code, namespace)  # pylint: disable=exec-used
  np.testing.assert_allclose(np.asarray(namespace['logits']),
                             logits(config, params), atol=1e-5, rtol=0)


@pytest.mark.parametrize('name', sorted(SMALL_DATA_MODELS))
@pytest.mark.parametrize('fmt', ['safetensors', 'hf'])
def test_spt_and_lsa_are_refused_for_timm_and_hf_naming_the_feature(
    tmp_path, name, fmt):
  make_config, feature = SMALL_DATA_MODELS[name]
  config = make_config()
  workdir = make_workdir(tmp_path / 'run', config, random_params(config))
  with pytest.raises(errors.UserError) as e:
    export.export(workdir, str(tmp_path / 'out'), best=True, fmt=fmt)
  message = str(e.value)
  assert message.startswith(f'{feature}')
  assert 'no timm equivalent' in message or (
      'no Hugging Face transformers equivalent' in message)
  assert message.endswith('Export it with --format=npz instead; vit_flax '
                          'reads it.')
  assert '\n' not in message and 'vit_jax' not in message
  assert os.listdir(tmp_path) == ['run']


def test_a_layer_norm_epsilon_other_than_timms_goes_to_hf_but_not_timm():
  # A Hugging Face import (eps 1e-12): transformers' config.json says the
  # epsilon; timm's ViT has 1e-6 built in, so its logits would differ.
  config = run_config(layer_norm_eps=1e-12)
  params = random_params(config)
  hf_config = json.loads(export.encode(params, config, 'hf')['config.json'])
  assert hf_config['layer_norm_eps'] == 1e-12
  with pytest.raises(errors.UserError) as e:
    export.encode(params, config, 'safetensors')
  assert str(e.value).startswith(
      'model.layer_norm_eps=1e-12 (LayerNorm epsilon; timm ViTs use 1e-06) '
      'has no timm equivalent')
  # Nor does vit_jax (also 1e-6) compute this model from its npz.
  assert pytorch_write.npz_readers('vit', config.model) == 'vit_flax reads it'
  # The default, given explicitly, is timm's and vit_jax's.
  config = run_config(layer_norm_eps=1e-6)
  assert export.encode(random_params(config), config, 'safetensors')
  assert pytorch_write.npz_readers('vit', config.model) == (
      'vit_flax and vit_jax read it')


# What the formats cannot express, and failures: no output, no temp file.


@pytest.mark.parametrize('fmt,change,feature', [
    ('safetensors', dict(locality=True), 'locality'),
    ('hf', dict(locality=True), 'locality'),
    ('hf', dict(classifier='gap'), "classifier='gap'"),
    ('safetensors', dict(representation_size=4), 'representation_size'),
    ('hf', dict(patch_embedding='spt'), "patch_embedding='spt'"),
    ('safetensors', dict(posemb='sincos2d', locality=True), 'locality'),
])
def test_unexpressible_model_is_an_error_naming_the_feature(
    tmp_path, fmt, change, feature):
  config = run_config(**change)
  params = random_params(config)
  workdir = make_workdir(tmp_path / 'run', config, params)
  with pytest.raises(errors.UserError, match=feature):
    export.export(workdir, str(tmp_path / 'out'), best=True, fmt=fmt)
  assert os.listdir(tmp_path) == ['run']  # No output, no temp file.


def test_refusal_is_one_sentence_and_names_who_reads_the_npz():
  config = run_config(locality=True)
  params = random_params(config)
  with pytest.raises(errors.UserError) as e:
    export.encode(params, config, 'safetensors')
  assert str(e.value) == (
      'model.locality=True (a depthwise conv in every MLP) has no timm '
      'equivalent, so this model cannot be exported for timm '
      '(--format=safetensors). Export it with --format=npz instead; '
      'vit_flax reads it.')
  # vit_jax builds a ViT with pre_logits, and so reads its npz.
  config = run_config(representation_size=4)
  with pytest.raises(errors.UserError,
                     match='vit_flax and vit_jax read it.$'):
    export.encode(random_params(config), config, 'safetensors')
  assert pytorch_write.npz_readers('vit', run_config().model) == (
      'vit_flax and vit_jax read it')
  for change in (dict(locality=True), dict(patch_embedding='spt'),
                 dict(posemb='sincos2d'), dict(classifier='token_distill'),
                 dict(gelu='exact')):
    assert pytorch_write.npz_readers(
        'vit', run_config(**change).model) == 'vit_flax reads it', change
  assert pytorch_write.npz_readers('vit', lsa_config().model) == (
      'vit_flax reads it')


def test_staged_and_hybrid_models_are_errors_naming_the_feature():
  staged = common.get_config()
  staged.model_type = 'staged'
  staged.model = presets.staged_config('s', 4, [(1, 8, 2, 16), (1, 16, 2, 32)])
  params = random_params(staged)
  for fmt in ('safetensors', 'hf'):
    with pytest.raises(errors.UserError,
                       match=r"model_type='staged' \(staged widths\) has no "
                       '.*; vit_flax reads it.$'):
      export.encode(params, staged, fmt)
  hybrid = run_config(patch=1)
  hybrid.model.resnet = {'num_layers': (1,), 'width_factor': 0.5}
  with pytest.raises(errors.UserError, match='hybrid ResNet root'):
    export.encode({}, hybrid, 'safetensors')
  assert set(export.encode(params, staged, 'npz')) == {None}  # npz: fine.


def cct_config():
  """A tiny CCT: conv tokenizer, SeqPool, q/k/v without biases, CCT's block."""
  config = run_config(classifier='seqpool', patch_embedding='cct',
                      tokenizer={'layers': 2, 'kernel': 3, 'width': 8})
  config.model.transformer.qkv_bias = False
  config.model.transformer.norm_placement = 'cct'
  return config


CCT_FEATURES = (
    "model.patch_embedding='cct' (a conv tokenizer: CCT's tokenizer)",
    "model.classifier='seqpool' (CCT's sequence pooling)",
    'model.transformer.qkv_bias=False',
    "model.transformer.norm_placement='cct'")


@pytest.mark.parametrize('fmt', ['safetensors', 'hf'])
def test_cct_models_are_refused_naming_each_feature(fmt):
  config = cct_config()
  params = random_params(config)
  with pytest.raises(errors.UserError) as e:
    export.encode(params, config, fmt)
  message = str(e.value)
  assert message.startswith(CCT_FEATURES[0])
  for feature in CCT_FEATURES:
    assert feature in message
  assert message.endswith('Export it with --format=npz instead; vit_flax '
                          'reads it.')
  stem = run_config(patch_embedding='conv_stem')
  with pytest.raises(errors.UserError, match=re.escape(
      "model.patch_embedding='conv_stem' (a conv tokenizer: an "
      'early-convolution stem) has no')):
    export.encode(random_params(stem), stem, fmt)
  # Each on its own is the one feature named.
  alone = {'seqpool': run_config(classifier='seqpool'),
           'qkv_bias=False': run_config(), 'norm_placement': run_config()}
  alone['qkv_bias=False'].model.transformer.qkv_bias = False
  alone['norm_placement'].model.transformer.norm_placement = 'cct'
  for feature, config in alone.items():
    features = pytorch_write.unexportable_features(
        'vit', config.model, {'safetensors': 'timm', 'hf': 'hf'}[fmt])
    assert len(features) == 1 and feature in features[0], features


def test_cct_npz_prints_vit_flax_loading_code_that_works(tmp_path):
  config = cct_config()
  params = random_params(config)
  out = tmp_path / 'model.npz'
  export.write_atomically(out, export.encode(params, config, 'npz'))
  code = export.loading_code(params, config, out, 'npz')
  assert 'import timm' not in code and 'load_pretrained' not in code
  namespace = {'images': IMAGES}
  exec(code, namespace)  # pylint: disable=exec-used
  np.testing.assert_allclose(np.asarray(namespace['logits']),
                             logits(config, params), atol=1e-5, rtol=0)
  assert pytorch_write.npz_readers('vit', config.model) == 'vit_flax reads it'
  hybrid = run_config(patch=1)
  hybrid.model.resnet = {'num_layers': (1,), 'width_factor': 0.5}
  assert pytorch_write.vit_jax_builds('vit', hybrid.model)
  hybrid.model.resnet['stem'] = 'cifar'
  assert not pytorch_write.vit_jax_builds('vit', hybrid.model)


def test_existing_output_is_an_error_unless_overwrite(tmp_path):
  out = tmp_path / 'model.npz'
  out.write_bytes(b'old')
  with pytest.raises(errors.UserError, match='exists; choose another --out, '
                     'or pass --overwrite'):
    export.write_atomically(out, {None: b'new'})
  assert out.read_bytes() == b'old'
  export.write_atomically(out, {None: b'new'}, overwrite=True)
  assert out.read_bytes() == b'new'
  folder = tmp_path / 'hf'
  export.write_atomically(folder, {'a': b'1', 'b': b'2'})
  export.write_atomically(folder, {'c': b'3'}, overwrite=True)
  assert os.listdir(folder) == ['c']
  assert sorted(os.listdir(tmp_path)) == ['hf', 'model.npz']


def test_unwritable_path_is_a_clear_error(tmp_path):
  (tmp_path / 'a_file').write_text('not a folder')
  with pytest.raises(errors.UserError,
                     match=r'Cannot write .*a_file/model.npz \(.*Error.*\); '
                     'nothing was written'):
    export.write_atomically(tmp_path / 'a_file' / 'model.npz',
                            {None: b'data'})
  assert os.listdir(tmp_path) == ['a_file']


@pytest.mark.parametrize('files', [{None: b'0123456789'},
                                   {'model.safetensors': b'0123456789',
                                    'config.json': b'{}'}])
def test_failure_while_writing_leaves_no_temp_file(tmp_path, monkeypatch,
                                                   files):
  path_class = type(epath.Path(tmp_path))
  real_write = path_class.write_bytes
  written = []

  def disk_full_on_last(self, data):
    written.append(self.name)
    if len(written) == len(files):  # Half of the last file, then the error.
      real_write(self, data[:len(data) // 2])
      raise OSError(28, 'No space left on device')
    return real_write(self, data)

  monkeypatch.setattr(path_class, 'write_bytes', disk_full_on_last)
  with pytest.raises(errors.UserError, match='No space left on device'):
    export.write_atomically(tmp_path / 'out', files)
  assert written  # It did start writing.
  assert not os.listdir(tmp_path)


@pytest.mark.slow
def test_command_prints_the_loading_code_and_fails_clearly(tmp_path):
  config = run_config('gap', 'tanh')
  workdir = make_workdir(tmp_path / 'run', config, random_params(config))
  command = [sys.executable, '-m', 'vit_flax.export', f'--workdir={workdir}',
             '--best', '--format=safetensors']
  out = tmp_path / 'model.safetensors'
  done = subprocess.run(command + [f'--out={out}'], capture_output=True,
                        text=True, cwd=REPO, timeout=300)
  assert done.returncode == 0, done.stderr
  assert f'Wrote {out}' in done.stdout
  assert "global_pool='avg'" in done.stdout and 'fc_norm=False' in done.stdout
  again = subprocess.run(command + [f'--out={out}'], capture_output=True,
                         text=True, cwd=REPO, timeout=300)
  assert again.returncode != 0
  assert again.stderr.strip().splitlines()[-1].startswith(
      f'Error: {out} exists')
  assert 'Traceback' not in again.stderr


# Writes `out` with write_atomically, stopping for good at a point of the
# write so that the test can kill -9 it there.
KILLED_EXPORT_SCRIPT = """
import sys, time
sys.path[:0] = [%r]
from etils import epath
from vit_flax.commands import export
out, where = epath.Path(%r), %r
path_class = type(out)
if where == 'writing':  # Half of the data written, then hang.
  real_write = path_class.write_bytes
  def hang(self, data):
    real_write(self, data[:len(data) // 2])
    print('ready', flush=True)
    time.sleep(600)
  path_class.write_bytes = hang
else:  # --overwrite: the old output moved aside, the new not yet in place.
  real_rename = path_class.rename
  def hang(self, target):
    if '.tmp-' in self.name:
      print('ready', flush=True)
      time.sleep(600)
    return real_rename(self, target)
  path_class.rename = hang
files = ({None: b'new' * 100} if out.suffix else
         {'model.safetensors': b'new' * 100, 'config.json': b'{}'})
export.write_atomically(out, files, overwrite=True)
"""


# A file killed while written, a folder killed between the two renames.
@pytest.mark.slow
@pytest.mark.parametrize('name, where', [('model.safetensors', 'writing'),
                                         ('hf', 'swapping')])
def test_a_later_export_cleans_up_after_one_killed_midway(tmp_path, name,
                                                          where):
  out = tmp_path / name
  previous = ({None: b'old'} if out.suffix else {'config.json': b'old'})
  export.write_atomically(out, previous)
  process = subprocess.Popen(
      [sys.executable, '-c', KILLED_EXPORT_SCRIPT % (REPO, str(out), where)],
      stdout=subprocess.PIPE, text=True)
  assert process.stdout.readline().strip() == 'ready'
  os.kill(process.pid, signal.SIGKILL)
  process.wait()
  left = [n for n in os.listdir(tmp_path) if n.startswith(f'.{name}.')]
  assert left  # What the killed export left behind.
  # A live export's files are not touched (the pid of this test is alive).
  live = tmp_path / f'.{name}.tmp-{os.getpid()}-0123abcd'
  live.write_bytes(b'in progress')
  # The next export cleans up first: the previous output is whole again
  # (--overwrite was killed between its two renames) or never left.
  with pytest.raises(errors.UserError, match='exists'):
    export.write_atomically(out, {None: b'newer'})
  assert sorted(os.listdir(tmp_path)) == sorted([name, live.name])
  if out.suffix:
    assert out.read_bytes() == b'old'
  else:
    assert (out / 'config.json').read_bytes() == b'old'
