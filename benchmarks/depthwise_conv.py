"""Memory and speed of the locality conv's implementations, in one process.

Compiles the config's train step (`step_lib.make_train_step`, the optimizer
included) once per variant, prints XLA's buffer sizes for it, then times the
variants in alternating rounds (so that other load on a shared machine hits
them alike), in wall-clock and in CPU seconds of this process (less
sensitive to other processes' load). Variants:

  none      the same model without locality;
  default   locality as the model computes it (`default_depthwise_impl`:
            `depthwise_conv_slices` on CPU);
  autodiff  `depthwise_conv_slices` without its written-out backward pass
            (JAX differentiates the nine slices);
  grouped   `depthwise_conv_grouped`, the default on GPU/TPU.

'none' and 'default' also run against other versions of `vit_flax`
(PYTHONPATH=<their checkout>), for A/B runs in turn.

python -m benchmarks.depthwise_conv --config=configs/vit_b16_reduced.py \\
    --config.batch=64 --variants=none,default,autodiff --rounds=3
"""

import contextlib
import json
import os
import statistics
import time
from unittest import mock

from absl import app
from absl import flags
import jax
from ml_collections import config_flags
import numpy as np

from vit_flax.bench import benchmark
from vit_flax.models import depthwise_conv
from vit_flax.models import presets
from vit_flax.training import mesh as mesh_lib
from vit_flax.training import optim
from vit_flax.training import step as step_lib

VARIANTS = ('none', 'default', 'autodiff', 'grouped')
NUM_CLASSES = 10

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', 'configs/vit_b16_reduced.py',
                                'Training config with a ViT model.',
                                lock_config=True)
flags.DEFINE_list('variants', 'none,default,autodiff',
                  f'Which of {VARIANTS} to compile and time.')
flags.DEFINE_integer('rounds', 3, 'Timed rounds per variant, alternating.')
flags.DEFINE_integer('steps', 2, 'Train steps per round.')
flags.DEFINE_bool('time', True, 'Time the steps (else only compile).')


def implementation(variant: str):
  """A context in which DepthwiseConv traces as `variant` says."""
  if variant == 'autodiff':
    return mock.patch.object(depthwise_conv, 'depthwise_conv_slices',
                             depthwise_conv.depthwise_conv_slices.fun)
  if variant == 'grouped':
    return mock.patch.object(depthwise_conv, 'default_depthwise_impl',
                             lambda: 'grouped')
  return contextlib.nullcontext()


def compile_step(config, variant: str):
  """(compiled step, its state, its batch) for `variant`."""
  config = config.copy_and_resolve_references()
  config.model.locality = variant != 'none'
  mesh = mesh_lib.create_mesh()
  model = presets.create_model('vit', config.model, NUM_CLASSES)
  schedule = optim.create_learning_rate_schedule(
      config.total_steps, config.base_lr, config.decay_type,
      config.warmup_steps)
  tx = optim.create_optimizer(config, schedule)
  state = step_lib.create_train_state(model, tx, config, config.pp.crop, mesh)
  batch = benchmark.synthetic_batch(config, config.pp.crop, config.batch,
                                    NUM_CLASSES, mesh_lib.batch_sharding(mesh))
  step = step_lib.make_train_step(model, tx, schedule, config,
                                  NUM_CLASSES, mesh,
                                  jax.tree.map(lambda x: x.sharding, state))
  with implementation(variant):
    compiled = step.lower(state, batch).compile()
  return compiled, state, batch


def main(argv):
  del argv
  unknown = set(FLAGS.variants) - set(VARIANTS)
  if unknown:
    raise app.UsageError(f'Unknown variants {sorted(unknown)}; expected some '
                         f'of {VARIANTS}.')
  config = FLAGS.config
  runs, results = {}, {}
  for variant in FLAGS.variants:
    compiled, state, batch = compile_step(config, variant)
    memory = compiled.memory_analysis()
    results[variant] = {'temp_bytes': memory.temp_size_in_bytes,
                        'argument_bytes': memory.argument_size_in_bytes,
                        'step_seconds': [], 'step_cpu_seconds': []}
    runs[variant] = [compiled, state, batch]
    print(f'{variant:>9}: temp {memory.temp_size_in_bytes / 1e9:.3f} GB, '
          f'arguments {memory.argument_size_in_bytes / 1e9:.3f} GB',
          flush=True)
  if FLAGS.time:
    for variant, run in runs.items():  # Warm-up.
      run[1], _ = jax.block_until_ready(run[0](run[1], run[2]))
    for _ in range(FLAGS.rounds):
      for variant, run in runs.items():
        start, start_cpu = time.perf_counter(), time.process_time()
        for _ in range(FLAGS.steps):
          run[1], step_metrics = run[0](run[1], run[2])
        jax.block_until_ready(step_metrics)
        results[variant]['step_seconds'].append(
            (time.perf_counter() - start) / FLAGS.steps)
        results[variant]['step_cpu_seconds'].append(
            (time.process_time() - start_cpu) / FLAGS.steps)
  reference = results.get('none', {}).get('temp_bytes')
  for variant, result in results.items():
    line = f'{variant:>9}: temp {result["temp_bytes"] / 1e9:.3f} GB'
    if reference:
      line += f' ({result["temp_bytes"] / reference:.2f}x none)'
    for kind in ('step_seconds', 'step_cpu_seconds'):
      seconds = result[kind]
      if seconds:
        line += (f'\n    {kind} per round {np.round(seconds, 3).tolist()}, '
                 f'median {statistics.median(seconds):.3f}')
    print(line)
  print(json.dumps({'batch': config.batch, 'model': config.model.model_name,
                    'load_average_1min': os.getloadavg()[0],
                    'results': results}))


if __name__ == '__main__':
  app.run(main)
