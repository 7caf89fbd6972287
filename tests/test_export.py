"""Tests of vit_flax.export: npz, timm safetensors and HF folders, all or
nothing."""

import functools
import json
import os
import subprocess
import sys

from configs import common
from etils import epath
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import tiny_model_config
from pytorch_layouts import flat
from vit_flax import checkpoint
from vit_flax import checkpointing
from vit_flax import errors
from vit_flax import export
from vit_flax import model_configs
from vit_flax import models_staged
from vit_flax import pytorch_weights

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGES = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))


def run_config(classifier='token', gelu='tanh', **overrides):
  config = common.get_config()
  config.pp.crop = 16
  config.model = tiny_model_config(classifier=classifier, gelu=gelu,
                                   **overrides)
  return config


def random_params(config, num_classes=5, seed=0):
  model = model_configs.create_model(config.get('model_type', 'vit'),
                                     config.model, num_classes)
  params = jax.jit(functools.partial(model.init, train=False))(
      jax.random.key(seed), jnp.ones((1, 16, 16, 3)))['params']
  rng = np.random.RandomState(seed + 1)
  return jax.tree.map(lambda p: 0.5 * rng.randn(*p.shape).astype(p.dtype),
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
  model = model_configs.create_model('vit', config.model, 5)
  apply = jax.jit(functools.partial(model.apply, train=False))
  return np.asarray(apply({'params': params}, IMAGES))


@pytest.mark.parametrize('fmt,classifier,gelu', [
    ('npz', 'token', 'tanh'),
    ('safetensors', 'token', 'exact'),
    ('safetensors', 'gap', 'tanh'),
    ('hf', 'token', 'tanh'),
    ('hf', 'token', 'exact'),
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
    loaded = checkpoint.load(out)
  else:
    loaded, arch = pytorch_weights.load(out)  # Heads from the file itself.
    assert (arch.num_heads, arch.gelu, arch.gelu_stated) == (2, gelu, True)
    assert arch.layout == ('timm' if fmt == 'safetensors' else 'hf')
  got, want = flat(loaded), flat(params)
  assert got.keys() == want.keys()
  for key in want:
    np.testing.assert_array_equal(got[key], want[key], err_msg=key)

  init_params = random_params(config, seed=3)
  restored = checkpoint.load_pretrained(
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
  state, _, _ = pytorch_weights.read(tmp_path / 'model.safetensors')
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
  config.model.locality = True
  assert export.loading_code(params, config, 'm.npz', 'npz').startswith(
      '# timm cannot load this model: ')


# What the formats cannot express, and failures: no output, no temp file.


@pytest.mark.parametrize('fmt,change,feature', [
    ('safetensors', dict(locality=True), 'locality'),
    ('hf', dict(locality=True), 'locality'),
    ('hf', dict(classifier='gap'), "classifier='gap'"),
    ('safetensors', dict(representation_size=4), 'representation_size'),
])
def test_unexpressible_model_is_an_error_naming_the_feature(
    tmp_path, fmt, change, feature):
  config = run_config(**change)
  params = random_params(config)
  with pytest.raises(errors.UserError, match=feature):
    export.write_atomically(tmp_path / 'out', export.encode(params, config,
                                                            fmt))
  assert not os.listdir(tmp_path)


def test_staged_and_hybrid_models_are_errors_naming_the_feature():
  staged = common.get_config()
  staged.model_type = 'staged'
  staged.model = models_staged.staged_config('s', 4, [(1, 8, 2, 16),
                                                      (1, 16, 2, 32)])
  params = random_params(staged)
  for fmt in ('safetensors', 'hf'):
    with pytest.raises(errors.UserError,
                       match=r"model_type='staged' \(staged widths\)"):
      export.encode(params, staged, fmt)
  hybrid = run_config(patch=1)
  hybrid.model.resnet = {'num_layers': (1,), 'width_factor': 0.5}
  with pytest.raises(errors.UserError, match='hybrid ResNet root'):
    export.encode({}, hybrid, 'safetensors')
  assert set(export.encode(params, staged, 'npz')) == {None}  # npz: fine.


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
