"""vit_flax.benchmark: sane figures for every preset; the table and JSON line.

Not timed: the figures only have to be possible ones (and the model FLOPs
right). Presets run one block deep (every other dimension as released) at a
small batch and image size, so that each compiles in seconds on a CPU.
"""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from vit_flax.bench import benchmark
from vit_flax.configs import common
from vit_flax.data import pipeline
from vit_flax.models import presets

import helpers
from helpers import write_fashion_mnist

REPO = helpers.REPO
POSITIVE = ('step_img_per_sec_per_device', 'eval_img_per_sec_per_device',
            'flops_per_image', 'compiled_flops_per_device_step',
            'achieved_flops_per_sec_per_device', 'compile_seconds',
            'peak_memory_bytes', 'state_bytes', 'state_bytes_per_device')

def preset_params():
  """Every ViT and Mixer preset. ResNet roots compile for 10-20 s each on
  XLA:CPU even one unit deep: the hybrids are slow tests, and the BiT
  ResNets (not ViTs, nor cheap) are left to `test_models_resnet.py`."""
  params = []
  for name in sorted(presets.MODEL_CONFIGS):
    model_type = presets.PRESET_MODEL_TYPES[name]
    if model_type == 'resnet' or name in presets.ALIASES:
      continue
    hybrid = presets.MODEL_CONFIGS[name].get('resnet')
    params.append(pytest.param(name, marks=pytest.mark.slow) if hybrid
                  else name)
  return params


@pytest.fixture(scope='module')
def data(tmp_path_factory):
  directory = tmp_path_factory.mktemp('fashion_mnist')
  write_fashion_mnist(str(directory), num_train=64, num_test=16)
  return str(directory)


def one_block_deep(config):
  """The preset with one block (and one unit per ResNet stage)."""
  model = config.model
  if model.get('transformer'):
    model.transformer.num_layers = 1
  if model.get('resnet'):
    model.resnet.num_layers = (1,) * len(model.resnet.num_layers)
  if config.model_type == 'resnet':
    model.num_layers = (1,) * len(model.num_layers)
  if config.model_type == 'mixer':
    model.num_blocks = 1


def preset_config(name, image_size, batch=8):
  config = common.get_config()
  config.model = presets.get_model_config(name)
  config.model_type = presets.PRESET_MODEL_TYPES[name]
  one_block_deep(config)
  config.pp.crop = image_size
  config.batch = batch
  config.batch_eval = batch
  return config


def vit_train_flops(config, num_classes):
  """Analytic FLOPs of one training image of a plain ViT: 2 per multiply-add
  of the dense layers and attention, 3x that for forward and backward (2x for
  the patch embedding, whose input needs no gradient)."""
  model, size = config.model, config.pp.crop
  width, mlp = model.hidden_size, model.transformer.mlp_dim
  patch = model.patches.size[0]
  grid = (size // patch)**2
  tokens = grid + (model.classifier == 'token')
  blocks = model.transformer.num_layers * (
      tokens * (4 * width * width + 2 * width * mlp) +
      2 * tokens * tokens * width)
  embedding = grid * patch * patch * 3 * width
  return 2 * (3 * (blocks + width * num_classes) + 2 * embedding)


def assert_sane(results):
  for key in POSITIVE:
    assert math.isfinite(results[key]) and results[key] > 0, (key, results)
  assert 0 < results['mfu'] < 1
  assert results['state_bytes_per_device'] <= results['state_bytes']
  assert math.isfinite(results['loss'])


def preset_image_size(name):
  """4x4 patches (so that the model's FLOPs dominate the optimizer's), or
  32 px for Mixers and hybrids (a grid of at most 2x2)."""
  preset = presets.MODEL_CONFIGS[name]
  if presets.PRESET_MODEL_TYPES[name] != 'vit' or preset.get('resnet'):
    return 32
  return 4 * preset.patches.size[0]


@pytest.mark.slow
@pytest.mark.parametrize('name', preset_params())
def test_every_preset_gives_sane_figures(name):
  config = preset_config(name, preset_image_size(name))
  results = benchmark.run(config, steps=1, rounds=1, warmup=1, eval_steps=1,
                          synthetic_only=True, peak_flops=1e13)
  assert_sane(results)
  assert results['model'] == name
  if config.model_type == 'vit' and not config.model.get('resnet'):
    want = vit_train_flops(config, benchmark.SYNTHETIC_NUM_CLASSES)
    if config.model.get('patch_embedding') in ('cct', 'conv_stem'):
      # Convolutional tokenizers (CCT) add their convs to the blocks'.
      assert want < results['flops_per_image']
    else:
      # The optimizer and the element-wise ops add a little to XLA's count.
      assert want <= results['flops_per_image'] <= 1.3 * want


@pytest.mark.slow
def test_model_flops_are_the_math_of_the_model_once():
  """Neither remat recompute nor the accumulation loop change them."""
  def figures(**model_overrides):
    config = preset_config('ViT-Ti_16', 64)
    config.accum_steps = model_overrides.pop('accum_steps', 1)
    config.model.update(model_overrides)
    return benchmark.run(config, steps=1, rounds=1, warmup=0, eval_steps=1,
                         synthetic_only=True, peak_flops=1e13)

  plain, remat, accumulated = (figures(), figures(remat=True),
                               figures(accum_steps=4))
  assert remat['flops_per_image'] == plain['flops_per_image']
  # The optimizer update, once per step, is now spread over 2 images, not 8.
  assert (plain['flops_per_image'] < accumulated['flops_per_image'] <
          1.1 * plain['flops_per_image'])
  # The devices do compute the blocks' forward pass twice.
  assert (remat['compiled_flops_per_device_step'] >
          1.1 * plain['compiled_flops_per_device_step'])


@pytest.mark.slow
def test_command_line_prints_a_table_and_a_json_line(data):
  """Two devices, params split over both; the data read from files."""
  result = subprocess.run(
      [sys.executable, '-m', 'vit_flax.bench.benchmark',
       '--config=configs/quickstart.py', f'--config.tfds_manual_dir={data}',
       '--config.batch=16', '--config.batch_eval=16', '--config.mesh_fsdp=2',
       '--steps=2', '--rounds=1', '--warmup=1', '--eval_steps=1',
       '--pipeline_batches=2', '--loop_steps=2'],
      capture_output=True, text=True, cwd=REPO,
      env=dict(os.environ,
               XLA_FLAGS=os.environ.get('XLA_FLAGS', '') +
               ' --xla_force_host_platform_device_count=2'))
  assert result.returncode == 0, result.stderr
  lines = result.stdout.strip().splitlines()
  results = json.loads(lines[-1])
  table = '\n'.join(lines[:-1])
  for row in ('train step', 'eval step', 'model FLOPs', 'MFU', 'compile',
              'peak memory', 'input pipeline', 'training loop'):
    assert f'{row}: ' in table, table
  assert_sane(results)
  assert results['num_devices'] == 2 and results['mesh_fsdp'] == 2
  for key in ('pipeline_img_per_sec', 'loop_img_per_sec_per_device',
              'peak_flops_per_sec_per_device'):
    assert math.isfinite(results[key]) and results[key] > 0, key
  assert results['peak_flops_source'].startswith('measured')
  # FSDP: each device holds about half of the state (small tensors whole).
  assert results['state_bytes_per_device'] < 0.7 * results['state_bytes']


@pytest.mark.parametrize('size', [28, 32])
def test_batched_preprocessing_gives_the_same_batches(data, size):
  """The fast path of the input (whole batches converted at once, when
  nothing is random) against the per-example one."""
  config = common.get_config()
  config.dataset = 'fashion_mnist'
  config.tfds_manual_dir = data
  config.pp.augment = 'none'
  config.pp.crop = size
  config.batch = 8
  config.total_steps = 12
  batched = pipeline.Pipeline(config)
  per_example = pipeline.Pipeline(config)
  per_example.source.image_shape = None  # Shapes may differ: one by one.
  got, want = (list(p.train_batches(start_step=3))
               for p in (batched, per_example))
  assert len(got) == len(want) == 9
  for g, w in zip(got, want):
    assert g['image'].shape == (8, size, size, 3)
    np.testing.assert_array_equal(g['image'], w['image'])
    np.testing.assert_array_equal(g['label'], w['label'])


@pytest.mark.slow
def test_bad_config_is_a_clear_error():
  result = subprocess.run(
      [sys.executable, '-m', 'vit_flax.bench.benchmark',
       '--config=configs/quickstart.py', '--config.mesh_fsdp=3'],
      capture_output=True, text=True, cwd=REPO)
  assert result.returncode != 0
  assert 'Error: config.mesh_fsdp=3 must be >= 1 and divide the device count (1)' in (
      result.stderr)
  assert 'Traceback' not in result.stderr
