"""Checks vit_flax's timm / transformers import and export against the real
libraries; not a test (it needs torch, timm and transformers):

python -m venv --system-site-packages /work/venvs/torch
/work/venvs/torch/bin/pip install torch timm transformers
/work/venvs/torch/bin/python tools/check_torch_interop.py

It exports tiny vit_flax runs with `python -m vit_flax.export` and runs the
code the export prints; saves tiny timm and transformers models (random
weights) and loads them with `pretrained_lib.load_pretrained`; and compares the
logits, and those of the tests' NumPy model (tests/pytorch_layouts.py).
Exits 1 if a comparison is off by more than its tolerance.
"""


import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np


def _torchvision_without_its_ops():
  """Lets timm import PyPI's torchvision beside the CPU torch wheel.

  PyPI's torchvision is a CUDA build: beside CPU torch its C++ ops cannot
  load, and its import fails registering fake kernels for two of them.
  Declaring those two op schemas first lets its Python parts (transforms,
  FrozenBatchNorm2d, which timm imports) load. A no-op where the ops load.
  """
  import importlib.util  # pylint: disable=g-import-not-at-top

  import torch  # pylint: disable=g-import-not-at-top
  spec = importlib.util.find_spec('torchvision')
  try:
    torch.ops.load_library(os.path.join(os.path.dirname(spec.origin),
                                        '_C.so'))
    return None
  except OSError:
    library = torch.library.Library('torchvision', 'DEF')
    for op in ('nms', 'qnms'):
      library.define(f'{op}(Tensor dets, Tensor scores, '
                     'float iou_threshold) -> Tensor')
    return library


_TORCHVISION_LIBRARY = _torchvision_without_its_ops()

# pylint: disable=g-import-not-at-top,wrong-import-position
import safetensors.torch
import timm
import torch
import transformers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, 'tests')]
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from vit_flax import errors
from vit_flax.configs import common  # noqa: E402
from vit_flax.models import presets
from vit_flax.training import checkpointing  # noqa: E402
from vit_flax.weights import pretrained as pretrained_lib
from vit_flax.weights import pytorch_read
from vit_flax.weights import pytorch_write

import pytorch_layouts  # noqa: E402

TMP = tempfile.mkdtemp(prefix='verify_torch_')
IMAGES = np.random.RandomState(0).uniform(-1, 1, (2, 32, 32, 3)).astype(
    np.float32)
TORCH_IMAGES = torch.from_numpy(IMAGES.transpose(0, 3, 1, 2).copy())
RESULTS = []


def report(name, got, want, tol=1e-5):
  diff = float(np.abs(np.asarray(got) - np.asarray(want)).max())
  ok = diff <= tol
  RESULTS.append((name, diff, ok))
  print(f'{"OK " if ok else "BAD"} {name}: max |diff| = {diff:.2e}')


def tiny_config(classifier='token', gelu='tanh'):
  config = common.get_config()
  config.pp.crop = 32
  config.model = presets.vit_config(
      't', patch=8, hidden_size=32, mlp_dim=64, num_heads=2, num_layers=2,
      classifier=classifier)
  config.model.gelu = gelu
  return config


def vit_flax_logits(model_config, params, num_classes=5):
  model = presets.create_model('vit', model_config, num_classes)
  return np.asarray(model.apply({'params': params}, IMAGES, train=False))


def init_params(model_config, num_classes=5, seed=1):
  model = presets.create_model('vit', model_config, num_classes)
  return jax.device_get(model.init(jax.random.key(seed),
                                   jnp.zeros((1, 32, 32, 3)),
                                   train=False)['params'])


def randomize_torch(model, seed=0):
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.copy_(0.3 * torch.randn(p.shape, generator=gen))
  return model.eval()


# A. vit_flax runs exported with `python -m vit_flax.export`, loaded with
# the code it prints.
def part_a():
  for classifier, gelu in (('token', 'tanh'), ('gap', 'tanh'),
                           ('token', 'exact'), ('gap', 'exact')):
    config = tiny_config(classifier, gelu)
    rng = np.random.RandomState(2)
    params = jax.tree.map(lambda p: (0.3 * rng.randn(*p.shape)).astype(
        np.float32), init_params(config.model))
    workdir = os.path.join(TMP, f'run_{classifier}_{gelu}')
    ckpt = checkpointing.Checkpointer(workdir, asynchronous=False)
    ckpt.save_if_best(1, params, config, accuracy=0.5)
    ckpt.wait()
    ckpt.close()
    want = vit_flax_logits(config.model, params)
    formats = ['npz', 'safetensors'] + (['hf'] if classifier == 'token' else [])
    for fmt in formats:
      out = os.path.join(TMP, f'{classifier}_{gelu}.{fmt}')
      done = subprocess.run(
          [sys.executable, '-m', 'vit_flax.export', f'--workdir={workdir}',
           f'--out={out}', f'--format={fmt}', '--best'], cwd=REPO,
          capture_output=True, text=True)
      assert done.returncode == 0, done.stderr
      code = done.stdout.split('To load it:\n\n', 1)[1]
      print(f'--- {fmt} {classifier} {gelu}:\n{code}')
      namespace = {'images': TORCH_IMAGES}
      with torch.no_grad():
        exec(code, namespace)  # pylint: disable=exec-used
      report(f'export {fmt} {classifier} gelu={gelu} -> '
             f'{"transformers" if fmt == "hf" else "timm"}',
             namespace['logits'].numpy(), want)
    # timm's default fc_norm for a gap model: the error the issue names.
    if classifier == 'gap' and gelu == 'tanh':
      args = pytorch_write.timm_model_args(params, config.model)
      args.pop('fc_norm')
      model = timm.create_model('vit_base_patch16_224', pretrained=False,
                                **args)
      model.load_pretrained(os.path.join(TMP, 'gap_tanh.npz'))
      with torch.no_grad():
        diff = np.abs(model.eval()(TORCH_IMAGES).numpy() - want).max()
      print(f'    (timm with its default fc_norm for global_pool=avg: max '
            f'|diff| = {diff:.3f})')


# B. timm-made models into vit_flax.
def part_b():
  for pool, class_token in (('token', True), ('avg', False)):
    kwargs = dict(img_size=32, patch_size=8, embed_dim=32, depth=2,
                  num_heads=2, mlp_ratio=2.0, num_classes=5, global_pool=pool,
                  class_token=class_token)
    if pool == 'avg':
      kwargs['fc_norm'] = False
    model = randomize_torch(timm.create_model(
        'vit_tiny_patch16_224', pretrained=False, **kwargs))
    with torch.no_grad():
      want = model(TORCH_IMAGES).numpy()
    state = model.state_dict()
    paths = {'safetensors': os.path.join(TMP, f'timm_{pool}.safetensors'),
             'pth': os.path.join(TMP, f'timm_{pool}.pth')}
    safetensors.torch.save_file(state, paths['safetensors'])
    torch.save(state, paths['pth'])
    config = tiny_config('token' if class_token else 'gap', 'exact')
    for kind, path in paths.items():
      params = pretrained_lib.load_pretrained(
          pretrained_path=path, init_params=init_params(config.model),
          model_config=config.model, keep_head=True)
      report(f'timm {pool} ({kind}) -> vit_flax',
             vit_flax_logits(config.model, params), want)
      report(f'timm {pool} ({kind}) -> NumPy reference of the tests',
             pytorch_layouts.timm_forward(
                 {k: v.numpy() for k, v in state.items()}, IMAGES, 2,
                 'exact', pool), want)
  # timm's default fc_norm=True for avg pooling: a clear error.
  model = timm.create_model('vit_tiny_patch16_224', pretrained=False,
                            img_size=32, patch_size=8, embed_dim=32, depth=2,
                            num_heads=2, mlp_ratio=2.0, num_classes=5,
                            global_pool='avg',
                            class_token=False)
  path = os.path.join(TMP, 'timm_fc_norm.safetensors')
  safetensors.torch.save_file(model.state_dict(), path)
  config = tiny_config('gap', 'exact')
  try:
    pretrained_lib.load_pretrained(pretrained_path=path,
                                   init_params=init_params(config.model),
                                   model_config=config.model)
    print('BAD fc_norm loaded')
  except errors.CheckpointError as e:
    print(f'OK  fc_norm refused: {str(e)[:160]}...')
  # DeiT distilled: param level, and the NumPy reference against timm.
  model = randomize_torch(timm.create_model(
      'deit_tiny_distilled_patch16_224', pretrained=False, img_size=32,
      patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0,
      num_classes=5))
  with torch.no_grad():
    want = model(TORCH_IMAGES).numpy()
  state = {k: v.numpy() for k, v in model.state_dict().items()}
  path = os.path.join(TMP, 'deit.safetensors')
  safetensors.torch.save_file(model.state_dict(), path)
  params, arch = pytorch_read.load(path, num_heads=2)
  assert arch.distilled and sorted(params)[:3] == ['Transformer', 'cls',
                                                   'dist'], sorted(params)
  back = pytorch_write.to_timm(params, tiny_config().model)
  assert back.keys() == state.keys()
  assert all(np.array_equal(back[k], state[k]) for k in state)
  print('OK  timm DeiT distilled -> dist/head_dist -> timm: bit-identical')
  report('timm DeiT distilled -> NumPy reference (via vit_flax params)',
         pytorch_layouts.timm_forward(back, IMAGES, 2, 'exact'), want)
  return params


# C. transformers-made models into vit_flax, and DeiT back out.
def part_c(deit_params):
  for eps in (1e-6, 1e-12):
    hf_config = transformers.ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, image_size=32, patch_size=8, num_labels=5,
        layer_norm_eps=eps)
    model = randomize_torch(
        transformers.ViTForImageClassification(hf_config))
    with torch.no_grad():
      want = model(pixel_values=TORCH_IMAGES).logits.numpy()
    folder = os.path.join(TMP, f'hf_vit_{eps}')
    model.save_pretrained(folder)
    print('    saved:', sorted(os.listdir(folder)))
    config = tiny_config('token', 'exact')
    params = pretrained_lib.load_pretrained(
        pretrained_path=folder, init_params=init_params(config.model),
        model_config=config.model, keep_head=True)
    report(f'transformers ViT (layer_norm_eps={eps}) -> vit_flax',
           vit_flax_logits(config.model, params), want,
           tol=1e-5 if eps == 1e-6 else 1e-3)
  # DeiT with teacher.
  hf_config = transformers.DeiTConfig(
      hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
      intermediate_size=64, image_size=32, patch_size=8, num_labels=5,
      layer_norm_eps=1e-6)
  model = randomize_torch(
      transformers.DeiTForImageClassificationWithTeacher(hf_config))
  with torch.no_grad():
    want = model(pixel_values=TORCH_IMAGES).logits.numpy()
  folder = os.path.join(TMP, 'hf_deit')
  model.save_pretrained(folder)
  params, arch = pytorch_read.load(folder)
  assert arch.distilled
  report('transformers DeiT with teacher -> vit_flax params -> NumPy',
         pytorch_layouts.timm_forward(
             pytorch_write.to_timm(params, tiny_config().model), IMAGES, 2,
             'exact'), want)
  # vit_flax DeiT params (from timm above) out to transformers and timm.
  config = tiny_config('token', 'exact')
  state, hf_json = pytorch_write.to_hf(deit_params, config.model)
  folder = os.path.join(TMP, 'deit_out_hf')
  os.makedirs(folder)
  with open(os.path.join(folder, 'model.safetensors'), 'wb') as f:
    f.write(pytorch_write.safetensors_bytes(state))
  with open(os.path.join(folder, 'config.json'), 'w') as f:
    json.dump(hf_json, f)
  hf_model = transformers.AutoModelForImageClassification.from_pretrained(
      folder).eval()
  print('    loaded as', type(hf_model).__name__)
  timm_state = pytorch_write.to_timm(deit_params, config.model)
  want = pytorch_layouts.timm_forward(timm_state, IMAGES, 2, 'exact')
  with torch.no_grad():
    report('vit_flax DeiT params -> transformers',
           hf_model(pixel_values=TORCH_IMAGES).logits.numpy(), want)
  args = pytorch_write.timm_model_args(deit_params, config.model)
  timm_model = timm.create_model(pytorch_write.timm_base_name(deit_params),
                                 pretrained=False, **args)
  timm_model.load_state_dict({k: torch.from_numpy(v)
                              for k, v in timm_state.items()})
  with torch.no_grad():
    report('vit_flax DeiT params -> timm',
           timm_model.eval()(TORCH_IMAGES).numpy(), want)


print('torch', torch.__version__, 'timm', timm.__version__, 'transformers',
      transformers.__version__)
try:
  part_a()
  part_c(part_b())
finally:
  shutil.rmtree(TMP)
bad = [r for r in RESULTS if not r[2]]
print(f'{len(RESULTS) - len(bad)} of {len(RESULTS)} comparisons within '
      'tolerance.')
sys.exit(1 if bad else 0)
