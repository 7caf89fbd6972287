"""The train step side by side with its peers: `python -m vit_flax.bench.peers`.

Times one train step of the same ViT, batch and optimizer in vit_flax
(`step_lib.make_train_step`, what training runs), the official vit_jax code
(given `--vit_jax_path`) and timm + PyTorch (when importable), on one
synthetic batch, in alternating rounds in one process (A, B, C, A, B, C,
...), so that other work on the machine slows each peer alike. Prints a
table with the fastest and the median round of each peer and its ratio to
the first peer, then every figure as one JSON line.

The optimizer is vit_jax's fine-tuning one: global-norm clipping at 1.0,
then SGD with momentum 0.9; softmax cross entropy. The JAX peers keep the
momentum in bfloat16 (`optax.sgd(accumulator_dtype=bfloat16)`, as vit_jax);
`torch.optim.SGD` has no such option, so PyTorch keeps it in float32 (the
optimizer a PyTorch user gets), with a constant learning rate (the JAX
peers' warm-up and cosine schedule costs a few scalar ops).

torch and timm are not requirements of vit_flax. Install them in a venv
that sees the system's packages (a CPU torch wheel; other versions pull
gigabytes of CUDA libraries), then run the script with its python:

  python -m venv --system-site-packages /work/venvs/torch
  /work/venvs/torch/bin/pip install torch==2.13.0 timm
  git -C /work/.mirror/google-research+vision_transformer/repo archive \\
      --prefix=vision_transformer/ HEAD | tar -x -C /tmp
  LD_PRELOAD=libtcmalloc_minimal.so.4 /work/venvs/torch/bin/python \\
      -m vit_flax.bench.peers --vit_jax_path=/tmp/vision_transformer \\
      --json_out=/tmp/peers.json

Rows: `--row=quickstart` (28 px, patch 7, width 96, 4 blocks, MLP 192, 4
heads, class token, batch 256) and `--row=ti16` (ViT-Ti/16 at 224 px, batch
16), each with overrides such as `--row=ti16:batch=8,image_size=112`; the
fields are those of `Row`. Peers: `--peers=vit_flax,vit_jax,timm` and
`timm_compile` (`torch.compile` of the model); a peer may carry options,
e.g. `vit_flax:attention_impl=xla` or `vit_flax:xla_cpu_use_xnnpack=false`
(options named `xla_*` are XLA compiler options of that peer's step alone,
so that levers can be compared in one process; `--xla_flags` sets them for
every JAX peer). A peer that cannot run here (torch not installed, no
vit_jax checkout) gets a line saying why, not an error.

Fairness: both frameworks run in one process, so they share the allocator
(run it under tcmalloc, as vit_flax trains on CPUs; the JSON says which
malloc was loaded) and the cores. Each framework's worker threads (XLA's
Eigen pool, PyTorch's OpenMP team of `--threads`) wait idle while the other
framework's round runs; only the first step of a round can meet the other
pool's threads still spinning down.
"""

import dataclasses
import gc
import glob
import importlib.util
import json
import os
import statistics
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

from absl import app
from absl import flags
import numpy as np

from vit_flax import errors
from vit_flax.bench import step_profile

# Learning-rate schedule of every peer that has one (vit_jax's defaults).
BASE_LR = 0.03
TOTAL_STEPS = 10_000
WARMUP_STEPS = 500
MOMENTUM = 0.9
GRAD_NORM_CLIP = 1.0

FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class Row:
  """One model shape and batch: a ViT with a class token, no dropout."""
  name: str
  image_size: int
  patch: int
  width: int
  depth: int
  heads: int
  mlp: int
  batch: int
  classes: int = 10


ROWS = {
    'quickstart': Row('quickstart', image_size=28, patch=7, width=96,
                      depth=4, heads=4, mlp=192, batch=256),
    'ti16': Row('ti16', image_size=224, patch=16, width=192, depth=12,
                heads=3, mlp=768, batch=16),
}
PEER_NAMES = ('vit_flax', 'vit_jax', 'timm', 'timm_compile')


class PeerUnavailable(Exception):
  """A peer that cannot run here; the message says why."""


@dataclasses.dataclass
class Batch:
  """One synthetic batch, as numpy arrays: NHWC images, int labels."""
  images: np.ndarray
  labels: np.ndarray


@dataclasses.dataclass
class PeerRun:
  """A built peer: `run_steps(n)` runs n train steps and returns once they
  are done; `loss()` is the loss of the last step."""
  run_steps: Callable[[int], None]
  loss: Callable[[], float]
  num_params: int
  notes: Dict[str, Any] = dataclasses.field(default_factory=dict)
  # () -> ms per kind of op of one step (`step_profile`); None: not offered.
  profile: Optional[Callable[[], Dict[str, float]]] = None


def parse_row(spec: str) -> Row:
  """'quickstart' or 'ti16:batch=8,image_size=112' -> Row."""
  name, _, overrides = spec.partition(':')
  if name not in ROWS:
    raise errors.ConfigError(
        f'Unknown row {name!r} in --row={spec}; expected one of '
        f'{sorted(ROWS)}, optionally with overrides such as '
        f'{name or "quickstart"}:batch=8,width=64.')
  fields = {f.name for f in dataclasses.fields(Row)} - {'name'}
  values = {}
  for item in filter(None, overrides.split(',')):
    key, _, value = item.partition('=')
    if key not in fields or not value.isdigit() or int(value) < 1:
      raise errors.ConfigError(
          f'Bad override {item!r} in --row={spec}: expected field=N with a '
          f'positive integer N and a field of {sorted(fields)}.')
    values[key] = int(value)
  row = dataclasses.replace(ROWS[name], **values)
  if row.image_size % row.patch or row.width % row.heads:
    raise errors.ConfigError(
        f'--row={spec}: the patch ({row.patch}) must divide the image size '
        f'({row.image_size}) and the heads ({row.heads}) the width '
        f'({row.width}).')
  return row


def parse_peer(spec: str):
  """'vit_flax:attention_impl=xla,xla_cpu_use_xnnpack=false' ->
  ('vit_flax', {'attention_impl': 'xla', ...})."""
  name, _, options = spec.partition(':')
  if name not in PEER_NAMES:
    raise errors.ConfigError(
        f'Unknown peer {name!r} in --peers; expected names of '
        f'{PEER_NAMES}, each optionally with options, e.g. '
        'vit_flax:attention_impl=xla.')
  parsed = {}
  for item in filter(None, options.split(',')):
    key, sep, value = item.partition('=')
    if not sep or not key:
      raise errors.ConfigError(
          f'Bad option {item!r} of peer {spec!r}: expected key=value.')
    parsed[key] = value
  return name, parsed


def synthetic_batch(row: Row, seed: int = 0) -> Batch:
  rng = np.random.RandomState(seed)
  images = rng.uniform(-1, 1, (row.batch, row.image_size, row.image_size, 3))
  return Batch(images.astype(np.float32),
               rng.randint(0, row.classes, row.batch).astype(np.int32))


def _option_value(value: str):
  """'true' -> True, '3' -> 3; other strings stay as they are."""
  if value.lower() in ('true', 'false'):
    return value.lower() == 'true'
  try:
    return int(value)
  except ValueError:
    return value


def _compiler_options(options: Dict[str, str]) -> Dict[str, Any]:
  return {k: _option_value(v) for k, v in options.items()
          if k.startswith('xla_')}


def _check_options(peer: str, options: Dict[str, str], known: Sequence[str],
                   compiler_options: bool = False):
  allowed = set(known)
  if compiler_options:
    allowed |= set(_compiler_options(options))
  unknown = sorted(set(options) - allowed)
  if unknown:
    raise errors.ConfigError(
        f'Unknown option(s) {unknown} of peer {peer}; it takes '
        f'{sorted(known)}' + (' and XLA compiler options (xla_*).'
                              if compiler_options else '.'))


# vit_flax's own model and optimizer fields that a peer option may set.
VIT_FLAX_MODEL_OPTIONS = ('attention_impl', 'dtype', 'remat')
VIT_FLAX_CONFIG_OPTIONS = ('optim_dtype',)


def vit_flax_config(row: Row, options: Dict[str, str]):
  """The training config of `row` for vit_flax's `train` functions."""
  import ml_collections  # pylint: disable=g-import-not-at-top

  from vit_flax.models import presets  # pylint: disable=g-import-not-at-top
  _check_options('vit_flax', options,
                 VIT_FLAX_MODEL_OPTIONS + VIT_FLAX_CONFIG_OPTIONS,
                 compiler_options=True)
  model = presets.vit_config(
      f'peers_{row.name}', row.patch, row.width, row.mlp, row.heads,
      row.depth, dropout_rate=0.0, classifier='token')
  model.attention_impl = options.get('attention_impl')
  model.dtype = options.get('dtype', 'float32')
  model.remat = options.get('remat', 'false').lower() == 'true'
  return ml_collections.ConfigDict({
      'model': model, 'seed': 0, 'batch': row.batch,
      'optimizer': 'sgd', 'momentum': MOMENTUM,
      'optim_dtype': options.get('optim_dtype', 'bfloat16'),
      'grad_norm_clip': GRAD_NORM_CLIP, 'accum_steps': 1,
      'label_smoothing': 0.0})


def build_vit_flax(row: Row, batch: Batch, options: Dict[str, str],
                   **unused) -> PeerRun:
  """vit_flax's VisionTransformer and train step, as `benchmark` times it:
  compiled ahead, the state donated step to step, the batch on the mesh."""
  import jax  # pylint: disable=g-import-not-at-top

  from vit_flax.models import presets  # pylint: disable=g-import-not-at-top
  from vit_flax.training import mesh as mesh_lib
  from vit_flax.training import optim  # pylint: disable=g-import-not-at-top
  from vit_flax.training import step as step_lib
  config = vit_flax_config(row, options)
  model = presets.create_model('vit', config.model, row.classes)
  mesh = mesh_lib.create_mesh()
  schedule = optim.create_learning_rate_schedule(
      TOTAL_STEPS, BASE_LR, 'cosine', WARMUP_STEPS)
  tx = optim.create_optimizer(config, schedule)
  state = step_lib.create_train_state(model, tx, config, row.image_size, mesh)
  step = step_lib.make_train_step(model, tx, schedule, config,
                                  row.classes, mesh,
                                  jax.tree.map(lambda x: x.sharding, state))
  data = mesh_lib.to_global({
      'image': batch.images,
      'label': batch.labels
  }, mesh_lib.batch_sharding(mesh))
  compiler_options = _compiler_options(options)
  try:
    compiled = step.lower(state, data).compile(compiler_options or None)
  except jax.errors.JaxRuntimeError as e:
    if not compiler_options or 'option' not in str(e):
      raise
    raise errors.ConfigError(
        f'XLA refused the compiler options {compiler_options} of peer '
        f'vit_flax ({e}); use xla_* flags that this jaxlib knows, with '
        'true/false for booleans.') from e
  holder = {'state': state, 'metrics': None}

  def run_steps(n):
    for _ in range(n):
      holder['state'], holder['metrics'] = compiled(holder['state'], data)
    jax.block_until_ready(holder['metrics'])

  def profile():
    # A second executable, with a trace event per thunk; the timed one
    # runs without them.
    traced = step.lower(holder['state'], data).compile(
        dict(compiler_options, xla_cpu_enable_xprof_traceme=True))
    hlo_text = traced.as_text()

    def traced_steps(n):
      for _ in range(n):
        holder['state'], holder['metrics'] = traced(holder['state'], data)
      jax.block_until_ready(holder['metrics'])

    traced_steps(1)
    return step_profile.jax_breakdown(lambda: traced_steps(1), hlo_text,
                                      os.cpu_count())

  return PeerRun(
      run_steps=run_steps,
      loss=lambda: float(holder['metrics']['loss']),
      num_params=sum(x.size for x in jax.tree.leaves(state.params)),
      notes={'optim_dtype': config.optim_dtype}, profile=profile)


def vit_jax_update_fn(*, apply_fn, tx):
  """What vit_jax's `train.make_update_fn(apply_fn, accum_steps=1, tx)`
  returns, for when `vit_jax.train` cannot be imported (it imports pandas
  and its input pipeline): pmapped over 'batch', dropout key folded with
  the device index, mean cross entropy of one-hot labels from log_softmax,
  gradients and loss averaged over devices, params donated."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top

  def update_fn(params, opt_state, batch, rng):
    _, new_rng = jax.random.split(rng)
    dropout_rng = jax.random.fold_in(rng, jax.lax.axis_index('batch'))

    def loss_fn(params, images, labels):
      logits = apply_fn({'params': params}, rngs={'dropout': dropout_rng},
                        inputs=images, train=True)
      return -jnp.mean(jnp.sum(jax.nn.log_softmax(logits) * labels, axis=1))

    loss, grads = jax.value_and_grad(loss_fn)(params, batch['image'],
                                              batch['label'])
    grads = jax.lax.pmean(grads, axis_name='batch')
    updates, opt_state = tx.update(grads, opt_state)
    params = optax.apply_updates(params, updates)
    return (params, opt_state, jax.lax.pmean(loss, axis_name='batch'),
            new_rng)

  return jax.pmap(update_fn, axis_name='batch', donate_argnums=(0,))


def import_vit_jax(path: Optional[str]):
  """(models_vit, utils, train or None, why train is None) of the official
  checkout at `path`."""
  if not path:
    raise PeerUnavailable('no checkout given (--vit_jax_path)')
  if not os.path.isfile(os.path.join(path, 'vit_jax', 'models_vit.py')):
    raise PeerUnavailable(
        f'{path} has no vit_jax/models_vit.py (give the root of a '
        'google-research/vision_transformer checkout)')
  if path not in sys.path:
    sys.path.insert(0, path)
  from vit_jax import models_vit  # pylint: disable=g-import-not-at-top
  from vit_jax import utils  # pylint: disable=g-import-not-at-top
  try:
    from vit_jax import train  # pylint: disable=g-import-not-at-top
    return models_vit, utils, train, None
  except ImportError as e:
    return models_vit, utils, None, str(e)


def build_vit_jax(row: Row, batch: Batch, options: Dict[str, str],
                  vit_jax_path: Optional[str] = None, **unused) -> PeerRun:
  """The official `models_vit.VisionTransformer` and `update_fn`, with the
  optimizer of vit_jax's `train.py`, fed as its training loop feeds it."""
  _check_options('vit_jax', options, ())
  models_vit, utils, official_train, why = import_vit_jax(vit_jax_path)
  import flax  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  model = models_vit.VisionTransformer(
      num_classes=row.classes,
      patches=ml_collections.ConfigDict({'size': (row.patch, row.patch)}),
      transformer=ml_collections.ConfigDict({
          'mlp_dim': row.mlp, 'num_heads': row.heads,
          'num_layers': row.depth, 'attention_dropout_rate': 0.0,
          'dropout_rate': 0.0}),
      hidden_size=row.width, classifier='token', representation_size=None)
  lr_fn = utils.create_learning_rate_schedule(TOTAL_STEPS, BASE_LR, 'cosine',
                                              WARMUP_STEPS)
  tx = optax.chain(
      optax.clip_by_global_norm(GRAD_NORM_CLIP),
      optax.sgd(learning_rate=lr_fn, momentum=MOMENTUM,
                accumulator_dtype='bfloat16'))
  if official_train is not None:
    update_fn = official_train.make_update_fn(apply_fn=model.apply,
                                              accum_steps=1, tx=tx)
    source = 'vit_jax.train.make_update_fn'
  else:
    update_fn = vit_jax_update_fn(apply_fn=model.apply, tx=tx)
    source = f'vit_flax.bench.peers.vit_jax_update_fn (vit_jax.train: {why})'
  params = jax.jit(lambda: model.init(
      jax.random.PRNGKey(0), np.ones((1,) + batch.images.shape[1:],
                                     np.float32), train=False))()['params']
  num_params = sum(x.size for x in jax.tree.leaves(params))
  params, opt_state = flax.jax_utils.replicate((params, tx.init(params)))
  rng = flax.jax_utils.replicate(jax.random.PRNGKey(0))
  devices = jax.local_device_count()
  if row.batch % devices:
    raise errors.ConfigError(
        f'batch={row.batch} must be divisible by the {devices} devices.')
  per_device = lambda x: x.reshape(devices, -1, *x.shape[1:])
  one_hot = np.eye(row.classes, dtype=np.float32)[batch.labels]
  # On the devices once, as vit_jax's prefetch leaves its batches.
  data = jax.pmap(lambda x: x)({'image': per_device(batch.images),
                                'label': per_device(one_hot)})
  holder = {'state': (params, opt_state), 'rng': rng, 'loss': None}

  def run_steps(n):
    params, opt_state = holder['state']
    rng = holder['rng']
    for _ in range(n):
      params, opt_state, loss, rng = update_fn(params, opt_state, data, rng)
    holder.update(state=(params, opt_state), rng=rng, loss=loss)
    jax.block_until_ready(loss)

  def profile():
    params, opt_state = holder['state']
    traced = update_fn.lower(params, opt_state, data, holder['rng']).compile(
        {'xla_cpu_enable_xprof_traceme': True})

    def traced_step():
      params, opt_state = holder['state']
      params, opt_state, loss, rng = traced(params, opt_state, data,
                                            holder['rng'])
      holder.update(state=(params, opt_state), rng=rng, loss=loss)
      jax.block_until_ready(loss)

    traced_step()
    return step_profile.jax_breakdown(traced_step, traced.as_text(),
                                      os.cpu_count())

  return PeerRun(run_steps=run_steps,
                 loss=lambda: float(holder['loss'][0]),
                 num_params=num_params, notes={'update_fn': source},
                 profile=profile)


def _define_missing_torchvision_ops(torch):
  """Lets timm import torchvision when torchvision's C++ ops cannot load.

  A CUDA torchvision wheel next to a CPU torch (the only torchvision wheels
  here are CUDA builds) fails to load its ops library, then registers fake
  kernels for `torchvision::nms` and `qnms`, which raises. Declaring those
  two schemas lets it import; timm's ViT uses no torchvision op.
  """
  if 'torchvision' in sys.modules:  # Imported already, or not needed.
    return
  spec = importlib.util.find_spec('torchvision')
  if spec is None or not spec.submodule_search_locations:
    return
  libraries = glob.glob(os.path.join(spec.submodule_search_locations[0],
                                     '_C*.so'))
  try:
    for library in libraries:
      torch.ops.load_library(library)
    return
  except (OSError, ImportError, RuntimeError):
    pass
  library = torch.library.Library('torchvision', 'FRAGMENT')
  for op in ('nms', 'qnms'):
    library.define(f'{op}(Tensor dets, Tensor scores, float iou_threshold) '
                   '-> Tensor')
  _define_missing_torchvision_ops.library = library  # Keep it registered.


def import_torch_and_timm():
  """(torch, timm), or PeerUnavailable saying what is missing."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise PeerUnavailable(
        f'torch is not importable ({e}); see this module\'s docstring for '
        'the venv') from e
  _define_missing_torchvision_ops(torch)
  try:
    import timm  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise PeerUnavailable(f'timm is not importable ({e})') from e
  return torch, timm


TIMM_OPTIONS = ('threads',)


def build_timm(row: Row, batch: Batch, options: Dict[str, str],
               compile_model: bool = False, **unused) -> PeerRun:
  """timm's VisionTransformer of the same shape (tanh GELU, no dropout) in
  eager PyTorch (or `torch.compile`d): forward, backward, clipping and an
  SGD step per iteration, `model.train()`."""
  name = 'timm_compile' if compile_model else 'timm'
  _check_options(name, options, TIMM_OPTIONS)
  torch, timm = import_torch_and_timm()
  threads = int(options.get('threads', os.cpu_count()))
  torch.set_num_threads(threads)
  torch.manual_seed(0)
  model = timm.create_model(
      'vit_tiny_patch16_224', pretrained=False, img_size=row.image_size,
      patch_size=row.patch, embed_dim=row.width, depth=row.depth,
      num_heads=row.heads, mlp_ratio=row.mlp / row.width,
      num_classes=row.classes, class_token=True, global_pool='token',
      act_layer='gelu_tanh', drop_rate=0.0, attn_drop_rate=0.0,
      proj_drop_rate=0.0, drop_path_rate=0.0)
  if model.blocks[0].mlp.fc1.out_features != row.mlp:
    raise errors.ConfigError(
        f'timm cannot build an MLP of {row.mlp} from width {row.width}.')
  model.train()
  optimizer = torch.optim.SGD(model.parameters(), lr=BASE_LR,
                              momentum=MOMENTUM)
  forward = torch.compile(model) if compile_model else model
  images = torch.from_numpy(
      np.ascontiguousarray(batch.images.transpose(0, 3, 1, 2)))
  labels = torch.from_numpy(batch.labels.astype(np.int64))
  parameters = list(model.parameters())
  holder = {'loss': None}

  def step():
    optimizer.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(forward(images), labels)
    loss.backward()
    with torch.profiler.record_function(step_profile.OPTIMIZER_RANGE):
      torch.nn.utils.clip_grad_norm_(parameters, GRAD_NORM_CLIP)
      optimizer.step()
    return loss

  def run_steps(n):
    for _ in range(n):
      holder['loss'] = step()

  if compile_model:
    try:
      step()  # Compiles; failures make the peer unavailable.
    except Exception as e:  # pylint: disable=broad-except
      raise PeerUnavailable(
          f'torch.compile failed: {type(e).__name__}: {e}') from e
  def profile():
    return step_profile.torch_breakdown(step, threads)

  return PeerRun(
      run_steps=run_steps, loss=lambda: holder['loss'].item(),
      num_params=sum(p.numel() for p in parameters),
      notes={'threads': threads, 'torch_version': torch.__version__,
             'timm_version': timm.__version__, 'momentum_dtype': 'float32'},
      # Compiled graphs show as one opaque op each.
      profile=None if compile_model else profile)


BUILDERS = {
    'vit_flax': build_vit_flax,
    'vit_jax': build_vit_jax,
    'timm': build_timm,
    'timm_compile': lambda *a, **k: build_timm(*a, compile_model=True, **k),
}


def alternate_rounds(runs: Dict[str, Callable[[int], None]], rounds: int,
                     steps: int, clock: Callable[[], float] = time.perf_counter
                     ) -> Dict[str, List[float]]:
  """Seconds per step of each of `rounds` rounds of `steps` steps, the
  peers taking turns in order within each round."""
  seconds = {name: [] for name in runs}
  for _ in range(rounds):
    for name, run_steps in runs.items():
      start = clock()
      run_steps(steps)
      seconds[name].append((clock() - start) / steps)
  return seconds


def summarize(row: Row, seconds: Dict[str, List[float]]
              ) -> Dict[str, Dict[str, float]]:
  """Fastest and median img/s of each peer, and the first peer's speed as a
  multiple of each peer's (> 1: the first peer is faster)."""
  figures = {}
  reference = None
  for name, per_step in seconds.items():
    fastest, median = min(per_step), statistics.median(per_step)
    if reference is None:
      reference = (fastest, median)
    figures[name] = {
        'step_seconds_fastest': fastest, 'step_seconds_median': median,
        'img_per_sec_fastest': row.batch / fastest,
        'img_per_sec_median': row.batch / median,
        'reference_speedup_fastest': fastest / reference[0],
        'reference_speedup_median': median / reference[1],
        'step_seconds_rounds': list(per_step)}
  return figures


def measure_row(row: Row, peers: Sequence[str], rounds: int, steps: int,
                warmup: int, builders=None, clock=time.perf_counter,
                profile: bool = False, **build_kwargs) -> Dict[str, Any]:
  """Builds each peer of `peers` for `row`, warms it up, then times all in
  alternating rounds, then (if `profile`) profiles one step of each.
  Unavailable peers are listed with the reason."""
  builders = BUILDERS if builders is None else builders
  batch = synthetic_batch(row)
  runs, results = {}, {}
  for spec in peers:
    name, options = parse_peer(spec)
    start = clock()
    try:
      run = builders[name](row, batch, options, **build_kwargs)
    except PeerUnavailable as e:
      results[spec] = {'available': False, 'reason': str(e)}
      continue
    run.run_steps(warmup)
    results[spec] = {
        'available': True, 'num_params': run.num_params,
        'build_and_warmup_seconds': clock() - start,
        'notes': {k: v for k, v in run.notes.items()
                  if isinstance(v, (str, int, float, bool))}}
    runs[spec] = run
  if runs:
    timings = summarize(row, alternate_rounds(
        {spec: run.run_steps for spec, run in runs.items()}, rounds, steps,
        clock))
    for spec, run in runs.items():
      results[spec].update(timings[spec], loss=run.loss())
  for spec, run in runs.items():
    if profile and run.profile:
      results[spec]['profile_ms'] = run.profile()
  return {'row': dataclasses.asdict(row), 'peers': results,
          'reference': next(iter(runs), None)}


def host_description() -> Dict[str, Any]:
  import jax  # pylint: disable=g-import-not-at-top

  from vit_flax.training import host  # pylint: disable=g-import-not-at-top
  return {'host_cpu': host.host_cpu(), 'host_cpus': os.cpu_count(),
          'malloc': host.host_allocator(), 'jax_version': jax.__version__,
          'num_devices': jax.device_count(),
          'xla_flags': os.environ.get('XLA_FLAGS', ''),
          'load_average_1min': os.getloadavg()[0]}


def run(rows: Sequence[Row], peers: Sequence[str], rounds: int = 5,
        steps: int = 5, warmup: int = 2, builders=None,
        clock=time.perf_counter, profile: bool = False,
        **build_kwargs) -> Dict[str, Any]:
  """Every row measured with every peer; one dict of figures."""
  for name, value in (('rounds', rounds), ('steps', steps)):
    if value < 1:
      raise errors.ConfigError(f'--{name}={value} must be >= 1.')
  if warmup < 1:
    raise errors.ConfigError(
        f'--warmup={warmup} must be >= 1 (the first step compiles).')
  for spec in peers:
    parse_peer(spec)  # Bad names fail before any work.
  results = {'host': host_description(), 'rounds': rounds, 'steps': steps,
             'warmup': warmup, 'rows': []}
  for row in rows:
    results['rows'].append(measure_row(row, peers, rounds, steps, warmup,
                                       builders, clock, profile,
                                       **build_kwargs))
    gc.collect()  # Frees the row's peers before the next row is built.
  results['host']['load_average_1min_end'] = os.getloadavg()[0]
  return results


def table(results: Dict[str, Any]) -> str:
  """The figures for people: one line per row and peer."""
  host = results['host']
  lines = [f'{host["host_cpus"]} x {host["host_cpu"]}, {host["malloc"]} '
           f'malloc, load {host["load_average_1min"]:.2f} -> '
           f'{host["load_average_1min_end"]:.2f}; {results["rounds"]} '
           f'rounds of {results["steps"]} steps']
  for entry in results['rows']:
    row, reference = entry['row'], entry['reference']
    lines.append(
        f'{row["name"]}: {row["image_size"]} px, patch {row["patch"]}, width '
        f'{row["width"]}, {row["depth"]} blocks, MLP {row["mlp"]}, '
        f'{row["heads"]} heads, batch {row["batch"]}')
    lines.append(f'  {"peer":<40} {"img/s best":>10} {"median":>8} '
                 f'{"ms/step":>8} {reference or "-"} x (best, median)')
    for spec, figures in entry['peers'].items():
      if not figures['available']:
        lines.append(f'  {spec:<40} unavailable: {figures["reason"]}')
        continue
      lines.append(
          f'  {spec:<40} {figures["img_per_sec_fastest"]:>10.4g} '
          f'{figures["img_per_sec_median"]:>8.4g} '
          f'{figures["step_seconds_fastest"] * 1e3:>8.4g} '
          f'{figures["reference_speedup_fastest"]:.3f}, '
          f'{figures["reference_speedup_median"]:.3f}'
          f'  ({figures["num_params"]:,} params)')
      if 'profile_ms' in figures:
        lines.append('      ms of one step: ' + ', '.join(
            f'{kind} {ms:.3g}' for kind, ms in figures['profile_ms'].items()))
  return '\n'.join(lines)


def define_flags():
  flags.DEFINE_multi_string(
      'row', ['quickstart', 'ti16'], 'Rows to measure: a name of ROWS, '
      'optionally with overrides, e.g. ti16:batch=8,image_size=112.')
  flags.DEFINE_list('peers', ['vit_flax', 'vit_jax', 'timm'],
                    f'Peers to compare, the first is the reference: '
                    f'{PEER_NAMES}, each optionally name:key=value,...')
  flags.DEFINE_integer('rounds', 5, 'Timed rounds of each peer.')
  flags.DEFINE_integer('steps', 5, 'Train steps per timed round.')
  flags.DEFINE_integer('warmup', 2, 'Untimed train steps after building.')
  flags.DEFINE_string('vit_jax_path', None, 'Root of a checkout of '
                      'google-research/vision_transformer, for vit_jax.')
  flags.DEFINE_string('xla_flags', None, 'Appended to XLA_FLAGS, for every '
                      'JAX peer.')
  flags.DEFINE_string('json_out', None, 'Also write the JSON figures here.')
  flags.DEFINE_bool('profile', False, 'After the timed rounds, profile one '
                    'step of each peer: ms per kind of op (step_profile).')


def main(argv):
  del argv
  if FLAGS.xla_flags:
    # Read when JAX starts its CPU backend, which nothing has done yet.
    os.environ['XLA_FLAGS'] = ' '.join(
        filter(None, [os.environ.get('XLA_FLAGS'), FLAGS.xla_flags]))
  try:
    rows = [parse_row(spec) for spec in FLAGS.row]
    results = run(rows, FLAGS.peers, rounds=FLAGS.rounds, steps=FLAGS.steps,
                  warmup=FLAGS.warmup, profile=FLAGS.profile,
                  vit_jax_path=FLAGS.vit_jax_path)
  except errors.UserError as e:
    sys.exit(f'Error: {e}')
  line = json.dumps(results, sort_keys=True)
  if FLAGS.json_out:
    with open(FLAGS.json_out, 'w') as f:
      f.write(line + '\n')
  print(table(results))
  print(line, flush=True)


if __name__ == '__main__':
  define_flags()
  app.run(main)
