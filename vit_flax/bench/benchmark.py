"""How fast a config trains: `python -m vit_flax.bench.benchmark --config=...`.

After warm-up and compilation it measures the train step and the eval step
on synthetic batches already on the devices, model FLOPs from XLA's cost
analysis, MFU against the devices' peak, compile time and peak memory; then,
with the config's data, the input pipeline alone and the whole training loop
(`loop_lib.train_and_evaluate`, the code `main.py` runs: input pipeline, step
and logging), so that the cost of everything around the step shows. Prints
a table, then every figure as one JSON line.

python -m vit_flax.bench.benchmark --config=configs/quickstart.py
python -m vit_flax.bench.benchmark --config=benchmarks/preset.py:ViT-B_16 \\
    --config.batch=32 --config.model.dtype=bfloat16

Every measurement uses the final image size (`pp.crop`; curricula are off)
and random init (`pretrained_path` is ignored: the speed is the same).
"""

import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from typing import Any, Dict, Optional, Tuple

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import ml_collections
from ml_collections import config_flags
import numpy as np

from vit_flax import errors
from vit_flax.commands import cli
from vit_flax.models import presets
from vit_flax.models import stats as stats_lib
from vit_flax.training import distributed
from vit_flax.training import host
from vit_flax.training import loop as loop_lib
from vit_flax.training import mesh as mesh_lib
from vit_flax.training import metrics
from vit_flax.training import optim
from vit_flax.training import step

# Dense peak FLOP/s of one JAX device, (bfloat16, float32), from the vendors'
# data sheets. GPU float32 is TF32 on tensor cores, what XLA uses for f32
# matmuls at default precision; TPUs run f32 matmuls as bf16 passes at default
# precision. The first entry whose name is part of device_kind counts.
DEVICE_PEAK_FLOPS = (
    ('H100 PCIe', 756e12, 378e12),
    ('H100', 989e12, 494e12),  # SXM.
    ('H200', 989e12, 494e12),
    ('A100', 312e12, 156e12),
    ('TPU v6 lite', 918e12, 918e12),  # v6e.
    ('TPU v6e', 918e12, 918e12),
    ('TPU v5 lite', 197e12, 197e12),  # v5e.
    ('TPU v5e', 197e12, 197e12),
    ('TPU v5', 459e12, 459e12),  # v5p.
    ('TPU v4', 275e12, 275e12),
    ('TPU v3', 61.5e12, 61.5e12),  # A device is one of a chip's two cores.
    ('TPU v2', 22.5e12, 22.5e12),
)
# Side of the matmuls that measure a CPU's peak.
MATMUL_SIZE = 2048
# Classes of the synthetic labels when the config's data is not read.
SYNTHETIC_NUM_CLASSES = 1000

FLAGS = flags.FLAGS


def define_flags():
  """The command's flags; defined only when it runs, so that other commands
  can import this module's functions (and define flags of the same names)."""
  config_flags.DEFINE_config_file(
      'config', None, 'Training config, e.g. configs/quickstart.py or '
      'benchmarks/preset.py:ViT-B_16; fields can be overridden with '
      '--config.field=value.', lock_config=True)
  flags.DEFINE_integer('steps', 10, 'Train steps per timed round.')
  flags.DEFINE_integer('rounds', 3, 'Timed rounds of each measurement; the '
                       'fastest counts (the others lost time to other work).')
  flags.DEFINE_integer('warmup', 2, 'Untimed train steps after compilation.')
  flags.DEFINE_integer('eval_steps', 5, 'Eval batches per timed round.')
  flags.DEFINE_integer('pipeline_batches', 20,
                       'Input pipeline batches per timed round.')
  flags.DEFINE_integer('loop_steps', None, 'Steps per logging window of the '
                       'training loop, each a round (after an untimed one); '
                       'default: --steps.')
  flags.DEFINE_bool('synthetic_only', False, 'Skip the input pipeline and the '
                    'training loop (which read config.dataset).')
  flags.DEFINE_float(
      'peak_flops', None, 'Peak FLOP/s of one device, for MFU; '
      'default: known accelerators, or a measured matmul on CPU.')
  flags.DEFINE_string('json_out', None, 'Also write the JSON figures here.')


def timed(fn, *args):
  """(fn(*args), seconds), waiting for the devices."""
  start = time.perf_counter()
  out = jax.block_until_ready(fn(*args))
  return out, time.perf_counter() - start


def fastest_round(run_round, rounds: int) -> float:
  """Seconds of the fastest of `rounds` calls of `run_round()`."""
  seconds = []
  for _ in range(rounds):
    start = time.perf_counter()
    run_round()
    seconds.append(time.perf_counter() - start)
  return min(seconds)


def measure_matmul_peak(dtype, devices, size: int = MATMUL_SIZE) -> float:
  """FLOP/s per device of large matmuls, one per device at once."""
  mesh = jax.sharding.Mesh(np.asarray(devices), ('d',))
  sharding = NamedSharding(mesh, P('d'))
  x = jax.device_put(jnp.ones((len(devices), size, size), dtype), sharding)
  matmul = jax.jit(lambda a: jnp.einsum('bij,bjk->bik', a, a),
                   out_shardings=sharding)
  timed(matmul, x)  # Compile.
  seconds = min(timed(matmul, x)[1] for _ in range(5))
  return 2 * size**3 / seconds


def device_peak_flops(device, dtype) -> Tuple[Optional[float], str]:
  """(peak FLOP/s of `device` in `dtype`, where the number comes from)."""
  if device.platform == 'cpu':
    peak = measure_matmul_peak(dtype, jax.local_devices())
    return peak, (f'measured {MATMUL_SIZE}x{MATMUL_SIZE} {jnp.dtype(dtype)} '
                  'matmul')
  for name, bf16, fp32 in DEVICE_PEAK_FLOPS:
    if name in device.device_kind:
      is_bf16 = jnp.dtype(dtype) == jnp.bfloat16
      return (bf16 if is_bf16 else fp32), (
          f'{name} dense {"bf16" if is_bf16 else "fp32"} data sheet')
  return None, f'unknown for {device.device_kind}; pass --peak_flops'


def peak_memory() -> Tuple[int, str]:
  """(bytes, what) of the peak memory use so far."""
  stats = jax.local_devices()[0].memory_stats()
  if stats and 'peak_bytes_in_use' in stats:
    return int(stats['peak_bytes_in_use']), 'device 0 peak'
  # Linux reports kilobytes.
  return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
          'host max RSS')


def state_bytes_per_device(state) -> int:
  """Bytes of the train state on the first local device."""
  device = jax.local_devices()[0]
  return sum(shard.data.nbytes for x in jax.tree.leaves(state)
             for shard in x.addressable_shards if shard.device == device)


def synthetic_batch(config, size: int, batch: int, num_classes: int,
                    sharding, with_mask: bool = False):
  """This process's part of a random batch, placed on the mesh."""
  rng = np.random.RandomState(jax.process_index())
  local = batch // jax.process_count()
  data = {'image': rng.uniform(-1, 1, (local, size, size, 3)).astype(
              np.float32),
          'label': rng.randint(0, num_classes, local)}
  if with_mask:
    data['mask'] = np.ones(local, np.float32)
  return mesh_lib.to_global(data, sharding)


def reference_config(config) -> ml_collections.ConfigDict:
  """One micro-batch of the model's math as written: no gradient
  accumulation loop (XLA's cost analysis counts a loop body once), no remat
  recompute, XLA attention (cuDNN kernels are opaque to it)."""
  reference = config.copy_and_resolve_references()
  reference.unlock()
  reference.batch = config.batch // config.get('accum_steps', 1)
  reference.accum_steps = 1
  if 'remat' in reference.model:
    reference.model.remat = False
  if 'attention_impl' in reference.model:
    reference.model.attention_impl = None
  return reference


def measure_steps(config, num_classes: int, steps: int, rounds: int,
                  warmup: int, eval_steps: int) -> Dict[str, Any]:
  """Train and eval steps on synthetic batches, as the training loop builds
  them (`step.create_train_state`, `step.make_train_step`, ...)."""
  mesh = mesh_lib.create_mesh(fsdp=config.get('mesh_fsdp', 1))
  data_sharding = mesh_lib.batch_sharding(mesh)
  size = config.pp.crop
  model = presets.create_model_for(config, num_classes)
  schedule = optim.create_learning_rate_schedule(
      config.total_steps, config.base_lr, config.decay_type,
      config.warmup_steps)
  tx = optim.create_optimizer(config, schedule)
  state, init_seconds = timed(step.create_train_state, model, tx, config,
                              size, mesh)
  shardings = jax.tree.map(lambda x: x.sharding, state)
  train_step = step.make_train_step(model, tx, schedule, config, num_classes,
                                    mesh, shardings)
  batch = synthetic_batch(config, size, config.batch, num_classes,
                          data_sharding)

  start = time.perf_counter()
  lowered = train_step.lower(state, batch)
  compiled = lowered.compile()
  compile_seconds = time.perf_counter() - start
  # Model FLOPs: XLA's count of the reference step before it is partitioned,
  # so once for the whole micro-batch.
  reference = reference_config(config)
  if reference.to_dict() != config.to_dict():
    reference_model = presets.create_model_for(reference, num_classes)
    micro_batch = {
        'image': jax.ShapeDtypeStruct((reference.batch, size, size, 3),
                                      jnp.float32, sharding=data_sharding),
        'label': jax.ShapeDtypeStruct((reference.batch,), jnp.int32,
                                      sharding=data_sharding)}
    lowered = step.make_train_step(
        reference_model, tx, schedule, reference, num_classes, mesh,
        shardings).lower(state, micro_batch)
  model_flops = stats_lib.cost_flops(lowered)
  # What the devices run; a loop body counts once, so x accum_steps (which
  # counts the optimizer update that many times too).
  device_flops = (stats_lib.cost_flops(compiled) *
                  config.get('accum_steps', 1))

  def train_steps(n):
    nonlocal state
    step_metrics = None
    for _ in range(n):
      state, step_metrics = compiled(state, batch)
    return jax.block_until_ready(step_metrics)

  train_steps(warmup)
  step_seconds = fastest_round(lambda: train_steps(steps), rounds) / steps
  loss = float(train_steps(1)['loss'])
  memory, memory_kind = peak_memory()
  results = {
      'step_seconds': step_seconds,
      'step_img_per_sec_per_device':
          config.batch / step_seconds / jax.device_count(),
      'flops_per_image': model_flops / reference.batch,
      'compiled_flops_per_device_step': device_flops,
      'compile_seconds': compile_seconds,
      'init_seconds': init_seconds,
      'peak_memory_bytes': memory,
      'peak_memory_kind': memory_kind,
      'state_bytes': sum(x.nbytes for x in jax.tree.leaves(state)),
      'state_bytes_per_device': state_bytes_per_device(state),
      'loss': loss,
  }
  params = state.params
  del state, compiled

  eval_step = step.make_eval_step(model, num_classes, mesh)
  eval_batch = synthetic_batch(config, size, config.batch_eval, num_classes,
                               data_sharding, with_mask=True)
  timed(eval_step, params, eval_batch)  # Compile and warm up.
  seconds = fastest_round(lambda: jax.block_until_ready(
      [eval_step(params, eval_batch) for _ in range(eval_steps)]), rounds)
  results['eval_img_per_sec_per_device'] = (
      eval_steps * config.batch_eval / seconds / jax.device_count())
  return results


def measure_pipeline(config, batches: int,
                     rounds: int) -> Tuple[float, int]:
  """(images/s of this process's training input, number of classes).

  The host pipeline's batches as numpy; with `config.data_on_device`, the
  batches gathered and augmented on the devices (`TrainData.batch_at`
  alone, without the step).
  """
  mesh = mesh_lib.create_mesh(fsdp=config.get('mesh_fsdp', 1))
  pipeline = loop_lib.create_pipeline(config, mesh)
  iterator = pipeline.train_batches()
  if getattr(pipeline, 'on_device', False):
    batch_at = jax.jit(lambda data, step: data.batch_at(step))
    data = next(iterator)
    jax.block_until_ready(batch_at(data, 0))  # Compile.
    next_batch = lambda step: batch_at(data, step)
    local_batch = config.batch // jax.process_count()
  else:
    next_batch = lambda step: next(iterator)
    local_batch = pipeline.local_batch
  for step in range(2):  # Start-up: threads, shuffle buffer.
    next_batch(step)
  seconds = fastest_round(
      lambda: jax.block_until_ready([next_batch(s) for s in range(batches)]),
      rounds)
  del iterator  # Stops its threads before the devices are timed.
  return batches * local_batch / seconds, pipeline.num_classes


def loop_config(config, steps: int,
                rounds: int) -> ml_collections.ConfigDict:
  """`config` as a run of 1 + `rounds` logging windows of `steps` steps: the
  first holds compilation and start-up. No checkpoints or figures; a
  one-batch evaluation at the end where the split allows it."""
  loop = config.copy_and_resolve_references()
  loop.unlock()
  loop.total_steps = (1 + rounds) * steps
  loop.progress_every = steps
  loop.eval_every = loop.total_steps
  loop.warmup_steps = min(loop.warmup_steps, steps)
  loop.checkpoint_every = 0
  loop.checkpoint_every_minutes = 0.0
  loop.eval_figures = False
  loop.profile = False
  loop.pretrained_path = None
  loop.pp.curriculum = ()
  if '[' not in loop.pp.test and '+' not in loop.pp.test:
    loop.pp.test = f'{loop.pp.test}[:{loop.batch_eval}]'
  return loop


def measure_loop(config, steps: int, rounds: int) -> Optional[float]:
  """Images/s per device that the training loop itself reports, in its
  fastest logging window after the first.

  None on processes other than 0, which write no metrics.
  """
  workdir = tempfile.mkdtemp(prefix='vit_flax_benchmark_')
  try:
    loop_lib.train_and_evaluate(loop_config(config, steps, rounds), workdir)
    if jax.process_index() > 0:
      return None
    rates = dict(metrics.read_scalars(workdir)['img_per_sec_per_device'])
    return max(rates[(1 + r) * steps] for r in range(1, rounds + 1))
  finally:
    shutil.rmtree(workdir, ignore_errors=True)


def describe(config) -> Dict[str, Any]:
  device = jax.devices()[0]
  return {
      'model': config.model.get('model_name'),
      'model_type': config.get('model_type', 'vit'),
      'image_size': config.pp.crop,
      'batch': config.batch,
      'batch_eval': config.batch_eval,
      'dtype': str(config.model.get('dtype', 'float32')),
      'attention_impl': config.model.get('attention_impl'),
      'remat': bool(config.model.get('remat', False)),
      'optimizer': config.optimizer,
      'accum_steps': config.get('accum_steps', 1),
      'mesh_fsdp': config.get('mesh_fsdp', 1),
      'dataset': config.dataset,
      'platform': device.platform,
      'device_kind': device.device_kind,
      'num_devices': jax.device_count(),
      'num_processes': jax.process_count(),
      'host_cpu': host.host_cpu(),
      'host_cpus': os.cpu_count(),
      'malloc': host.host_allocator(),
      'host': platform.node(),
      'jax_version': jax.__version__,
      'load_average_1min': os.getloadavg()[0],
  }


def run(config: ml_collections.ConfigDict, steps: int = 10, rounds: int = 3,
        warmup: int = 2, eval_steps: int = 5, pipeline_batches: int = 20,
        loop_steps: Optional[int] = None, synthetic_only: bool = False,
        peak_flops: Optional[float] = None,
        num_classes: Optional[int] = None) -> Dict[str, Any]:
  """Every measurement of `config`, as a flat dict of figures.

  `num_classes`: of the synthetic labels when `synthetic_only` (default
  SYNTHETIC_NUM_CLASSES); otherwise the data's.
  """
  for name, value in (('steps', steps), ('rounds', rounds),
                      ('eval_steps', eval_steps),
                      ('pipeline_batches', pipeline_batches)):
    if value < 1:
      raise errors.ConfigError(f'--{name}={value} must be >= 1.')
  loop_lib.validate_config(config, jax.device_count())
  results = describe(config)
  results.update(steps=steps, rounds=rounds)
  num_classes = num_classes or SYNTHETIC_NUM_CLASSES
  if not synthetic_only:
    (results['pipeline_img_per_sec'],
     num_classes) = measure_pipeline(config, pipeline_batches, rounds)
  results.update(measure_steps(config, num_classes, steps, rounds, warmup,
                               eval_steps))
  if not synthetic_only:
    results['loop_img_per_sec_per_device'] = measure_loop(
        config, loop_steps or steps, rounds)

  dtype = jnp.dtype(config.model.get('dtype', 'float32'))
  if peak_flops:
    peak, peak_source = peak_flops, 'given'
  else:
    peak, peak_source = device_peak_flops(jax.devices()[0], dtype)
  achieved = (results['flops_per_image'] *
              results['step_img_per_sec_per_device'])
  results.update({
      'achieved_flops_per_sec_per_device': achieved,
      'hardware_flops_per_sec_per_device':
          results['compiled_flops_per_device_step'] / results['step_seconds'],
      'peak_flops_per_sec_per_device': peak,
      'peak_flops_source': peak_source,
      'mfu': achieved / peak if peak else None,
  })
  step_rate = results['step_img_per_sec_per_device']
  if results.get('pipeline_img_per_sec'):
    results['pipeline_over_step'] = results['pipeline_img_per_sec'] / (
        step_rate * jax.local_device_count())
  if results.get('loop_img_per_sec_per_device'):
    results['loop_over_step'] = (results['loop_img_per_sec_per_device'] /
                                 step_rate)
  results['load_average_1min_end'] = os.getloadavg()[0]
  return results


def _si(value: Optional[float], unit: str) -> str:
  if value is None:
    return 'n/a'
  for prefix, scale in (('T', 1e12), ('G', 1e9), ('M', 1e6), ('k', 1e3)):
    if abs(value) >= scale:
      return f'{value / scale:.3g} {prefix}{unit}'
  return f'{value:.3g} {unit}'


def table(results: Dict[str, Any]) -> str:
  """The figures for people, one per line."""
  r = results
  rows = [
      ('model', f'{r["model"]} ({r["model_type"]}), {r["image_size"]} px, '
                f'{r["dtype"]}, attention {r["attention_impl"] or "einsum"}, '
                f'remat {r["remat"]}, mesh_fsdp {r["mesh_fsdp"]}'),
      ('machine', f'{r["num_devices"]} x {r["device_kind"]} '
                  f'({r["platform"]}), {r["num_processes"]} process(es); '
                  f'host: {r["host_cpus"]} x {r["host_cpu"]}, '
                  f'{r["malloc"]} malloc, load '
                  f'{r["load_average_1min"]:.2f} -> '
                  f'{r["load_average_1min_end"]:.2f}'),
      ('train step', f'{r["step_img_per_sec_per_device"]:.4g} img/s per '
                     f'device ({r["step_seconds"] * 1e3:.4g} ms per step of '
                     f'{r["batch"]})'),
      ('eval step', f'{r["eval_img_per_sec_per_device"]:.4g} img/s per '
                    f'device (batch {r["batch_eval"]})'),
      ('model FLOPs', f'{_si(r["flops_per_image"], "FLOP")} per image '
                      '(XLA cost analysis of the train step)'),
      ('achieved', f'{_si(r["achieved_flops_per_sec_per_device"], "FLOP/s")}'
                   ' per device (hardware: '
                   f'{_si(r["hardware_flops_per_sec_per_device"], "FLOP/s")})'),
      ('peak', f'{_si(r["peak_flops_per_sec_per_device"], "FLOP/s")} per '
               f'device ({r["peak_flops_source"]})'),
      ('MFU', 'n/a' if r['mfu'] is None else f'{100 * r["mfu"]:.1f} %'),
      ('compile', f'{r["compile_seconds"]:.3g} s (train step)'),
      ('peak memory', f'{_si(r["peak_memory_bytes"], "B")} '
                      f'({r["peak_memory_kind"]}); train state '
                      f'{_si(r["state_bytes_per_device"], "B")} per device '
                      f'of {_si(r["state_bytes"], "B")}'),
  ]
  if 'pipeline_img_per_sec' in r:
    rows.append(('input pipeline',
                 f'{r["pipeline_img_per_sec"]:.4g} img/s on this host '
                 f'({r["pipeline_over_step"]:.3g}x the step)'))
  if r.get('loop_img_per_sec_per_device'):
    rows.append(('training loop',
                 f'{r["loop_img_per_sec_per_device"]:.4g} img/s per device '
                 f'({100 * r["loop_over_step"]:.1f} % of the step)'))
  return '\n'.join(f'{name:>15}: {text}' for name, text in rows)


def main(argv):
  del argv
  host.hide_gpus_from_tensorflow()
  distributed.initialize()
  try:
    results = run(FLAGS.config, steps=FLAGS.steps, rounds=FLAGS.rounds,
                  warmup=FLAGS.warmup,
                  eval_steps=FLAGS.eval_steps,
                  pipeline_batches=FLAGS.pipeline_batches,
                  loop_steps=FLAGS.loop_steps,
                  synthetic_only=FLAGS.synthetic_only,
                  peak_flops=FLAGS.peak_flops)
  except errors.UserError as e:
    logging.error('%s', e)
    sys.exit(f'Error: {e}')
  if jax.process_index() > 0:
    return
  line = json.dumps(results, sort_keys=True)
  if FLAGS.json_out:
    with open(FLAGS.json_out, 'w') as f:
      f.write(line + '\n')
  print(table(results))
  print(line, flush=True)


if __name__ == '__main__':
  cli.add_config_roots()  # --config=quickstart names a shipped config.
  define_flags()
  app.run(main)
