"""The GPU check: `sh benchmarks/gpu.sh` (docs/benchmarks.md, "The GPU check").

One command, offline and without TensorFlow, for a bare GPU image (jax with
CUDA, flax, optax, orbax-checkpoint, tensorboard, numpy, scipy, pillow,
matplotlib, safetensors) plus the wheels gpu.sh installs (ml_collections,
PyYAML, absl-py). About 5 minutes on one H100 and at most
--budget_minutes: a part that would start later is skipped. It writes, after
every part, OUT_DIR/gpu_check.json and OUT_DIR/gpu_check.md (a table).

The parts, in this order (PARTS):
- reduced: configs/vit_b16_reduced.py's train step at its final 64 px on
  synthetic batches: img/s and the device's peak memory (first, so that the
  peak is its own: the process's peak is never reset).
- cifar_steps: the train step of each config of CIFAR_STEP_CONFIGS on
  synthetic CIFAR-shaped batches (32 px, 10 classes); --step_configs adds
  more by name.
- vit_ti16, vit_b16: ViT-Ti/16 and ViT-B/16 at 224 px in bfloat16 with
  attention_impl='cudnn': img/s and MFU against the device's dense bf16 peak
  (goal for B/16: MFU_GOAL).
- quickstart: configs/quickstart.py end to end with the data on the device
  (config.data_on_device=True): wall seconds, final accuracy, the loop's
  img/s.
- input: the quickstart's training input alone: the device's batches
  (gathered and augmented in jit) and the host tf.data pipeline's, the
  latter skipped where TensorFlow is not installed.

--dry_run runs every part on the CPU at tiny shapes (small images, batches
and models, a few steps; random Fashion-MNIST files), to check that all of
it works; its figures mean nothing.

python -m vit_flax.bench.gpu_check --out_dir=/tmp/gpu [--dry_run]
"""

import importlib.util
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from typing import Any, Dict, List, Optional

from absl import app
from absl import flags
from absl import logging
import flax
import jax
import ml_collections
import numpy as np

from vit_flax.bench import benchmark
from vit_flax.commands import cli
from vit_flax.data import idx
from vit_flax.training import host
from vit_flax.training import loop
from vit_flax.training import metrics

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
CONFIGS = os.path.join(REPO, 'vit_flax', 'configs')
# Configs whose train step is timed on CIFAR-shaped synthetic batches, by
# the name of their file in vit_flax/configs/ (append new CIFAR recipes).
CIFAR_STEP_CONFIGS = ['vit_cifar10_scratch']
CIFAR_CLASSES = 10
# MFU the ViT-B/16 bf16 train step should reach on an H100 (dense peak).
MFU_GOAL = 0.45
# Where Fashion-MNIST's IDX files may be, after $FASHION_MNIST_DIR.
FASHION_MNIST_DIRS = (idx.FASHION_MNIST_DIR,
                      os.path.join(REPO, '.carry', 'fashion-mnist'))
# The presets' batches on a GPU (the configs' own elsewhere).
PRESET_BATCHES = {'ViT-Ti_16': 1024, 'ViT-B_16': 256}

FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_string('out_dir', 'benchmarks/gpu', 'Where gpu_check.json and '
                      'gpu_check.md are written.')
  flags.DEFINE_bool('dry_run', False, 'Every part on the CPU at tiny shapes.')
  flags.DEFINE_list('parts', None, 'Only these parts (default: all).')
  flags.DEFINE_list('step_configs', [], 'More configs (file names in '
                    'vit_flax/configs/) for the cifar_steps part.')
  flags.DEFINE_string('fashion_mnist_dir', None, 'Folder of the four '
                      'Fashion-MNIST IDX files (default: $FASHION_MNIST_DIR, '
                      f'then {", ".join(FASHION_MNIST_DIRS)}).')
  flags.DEFINE_float('budget_minutes', 8.0, 'Parts that would start after '
                     'this are skipped.')


class Skipped(Exception):
  """A part that cannot run here (its reason is recorded)."""


def load_config(name: str) -> ml_collections.ConfigDict:
  """A config of vit_flax/configs/ (or 'path.py[:argument]'), unlocked."""
  spec = name if name.endswith('.py') or ':' in name else os.path.join(
      CONFIGS, f'{name}.py')
  if ':' in name and not os.path.isabs(name.split(':')[0]):
    spec = os.path.join(REPO, name)
  config = cli.load_config_file(spec)
  config.unlock()
  return config


# A dry run's stand-in for the peak FLOP/s (measuring a CPU's takes longer
# than the rest of a part).
DRY_RUN_PEAK_FLOPS = 1e12


def step_options(dry_run: bool) -> Dict[str, Any]:
  """Rounds of `benchmark.run` for real figures, or the fewest."""
  if dry_run:
    return dict(steps=1, rounds=1, warmup=0, eval_steps=1,
                peak_flops=DRY_RUN_PEAK_FLOPS)
  return dict(steps=10, rounds=3, warmup=2, eval_steps=5)


def step_figures(results: Dict[str, Any]) -> Dict[str, Any]:
  """What the table shows of `benchmark.run`'s figures."""
  keys = ('model', 'image_size', 'batch', 'dtype', 'attention_impl',
          'step_img_per_sec_per_device', 'step_seconds',
          'eval_img_per_sec_per_device', 'flops_per_image', 'mfu',
          'peak_flops_source', 'compile_seconds', 'peak_memory_bytes',
          'peak_memory_kind', 'state_bytes_per_device', 'loss')
  return {k: results.get(k) for k in keys}


def time_step(config, dry_run: bool, num_classes: Optional[int] = None):
  return step_figures(benchmark.run(config, synthetic_only=True,
                                    num_classes=num_classes,
                                    **step_options(dry_run)))


# The parts.


def shrink_for_dry_run(config, crop: int) -> None:
  """A tiny version of `config` that still runs every part of its step: a
  small batch and image and, for transformers, one block (compilation,
  most of a dry run's time, grows with the depth)."""
  config.update(batch=4, batch_eval=4)
  config.pp.crop = crop
  transformer = config.model.get('transformer')
  if transformer is not None and 'num_layers' in transformer:
    transformer.num_layers = 1


def part_reduced(options) -> Dict[str, Any]:
  config = load_config('vit_b16_reduced')
  config.pp.curriculum = ()  # Its final (and largest) size.
  if options['dry_run']:
    shrink_for_dry_run(config, 16)
  return time_step(config, options['dry_run'], CIFAR_CLASSES)


def part_cifar_steps(options) -> Dict[str, Any]:
  figures = {}
  for name in CIFAR_STEP_CONFIGS + list(options['step_configs']):
    config = load_config(name)
    config.pp.crop = 32
    if options['dry_run']:
      shrink_for_dry_run(config, 16)
    try:
      figures[name] = time_step(config, options['dry_run'], CIFAR_CLASSES)
    except Exception as e:  # pylint: disable=broad-except
      logging.exception('cifar_steps: %s failed.', name)
      figures[name] = {'error': f'{type(e).__name__}: {e}'}
  return {'configs': figures}


def preset_step(preset: str, options) -> Dict[str, Any]:
  config = load_config(f'benchmarks/preset.py:{preset}')
  config.model.dtype = 'bfloat16'
  if options['dry_run']:
    # No cuDNN on a CPU; one block of the real width.
    config.model.attention_impl = None
    config.model.transformer.num_layers = 1
    config.pp.crop = 32
    config.update(batch=2, batch_eval=2)
  else:
    config.model.attention_impl = 'cudnn'
    config.update(batch=PRESET_BATCHES[preset],
                  batch_eval=PRESET_BATCHES[preset])
  figures = time_step(config, options['dry_run'])
  if preset == 'ViT-B_16' and figures['mfu'] is not None:
    figures['mfu_goal'] = MFU_GOAL
    figures['mfu_goal_met'] = figures['mfu'] >= MFU_GOAL
  return figures


def part_vit_ti16(options):
  return preset_step('ViT-Ti_16', options)


def part_vit_b16(options):
  return preset_step('ViT-B_16', options)


def quickstart_config(options) -> ml_collections.ConfigDict:
  """The quickstart with the data on the device (tiny when dry)."""
  config = load_config('quickstart')
  config.tfds_manual_dir = options['fashion_mnist_dir']
  config.data_on_device = True
  if options['dry_run']:
    config.update(batch=8, batch_eval=8, total_steps=4, warmup_steps=1,
                  eval_every=4, progress_every=2, checkpoint_every=4,
                  eval_figures=False)
  return config


def part_quickstart(options) -> Dict[str, Any]:
  config = quickstart_config(options)
  workdir = tempfile.mkdtemp(prefix='vit_flax_gpu_check_')
  try:
    start = time.perf_counter()
    loop.train_and_evaluate(config, workdir)
    seconds = time.perf_counter() - start
    scalars = metrics.read_scalars(workdir)
  finally:
    shutil.rmtree(workdir, ignore_errors=True)
  rates = [v for _, v in scalars['img_per_sec_per_device']]
  return {
      'total_steps': config.total_steps, 'batch': config.batch,
      'wall_seconds': seconds,
      'eval_accuracy': scalars['eval_accuracy'][-1][1],
      'best_eval_accuracy': max(v for _, v in scalars['eval_accuracy']),
      # The first window holds compilation; the loop leaves it out, but
      # start-up is still in it.
      'loop_img_per_sec_per_device': max(rates[1:] or rates),
  }


def part_input(options) -> Dict[str, Any]:
  config = quickstart_config(options)
  batches, rounds = (3, 1) if options['dry_run'] else (50, 3)
  figures = {}
  figures['device_img_per_sec'], _ = benchmark.measure_pipeline(
      config, batches, rounds)
  if importlib.util.find_spec('tensorflow') is None:
    figures['host_img_per_sec'] = None
    figures['host_skipped'] = 'TensorFlow is not installed'
  else:
    config.data_on_device = False
    figures['host_img_per_sec'], _ = benchmark.measure_pipeline(
        config, batches, rounds)
  return figures


# (name, function, needs Fashion-MNIST).
PARTS = (
    ('reduced', part_reduced, False),
    ('cifar_steps', part_cifar_steps, False),
    ('vit_ti16', part_vit_ti16, False),
    ('vit_b16', part_vit_b16, False),
    ('quickstart', part_quickstart, True),
    ('input', part_input, True),
)


# Data for the quickstart.


def find_fashion_mnist(given: Optional[str]) -> Optional[str]:
  for directory in ([given] if given else
                    [os.environ.get('FASHION_MNIST_DIR')] +
                    list(FASHION_MNIST_DIRS)):
    if directory and idx.fashion_mnist_idx_dir(directory) == directory:
      return directory
  return None


def write_random_fashion_mnist(directory: str, num_train: int = 64,
                               num_test: int = 32) -> str:
  """Random images in Fashion-MNIST's IDX files, for a dry run."""
  rng = np.random.RandomState(0)
  os.makedirs(directory, exist_ok=True)
  for split, count in (('train', num_train), ('test', num_test)):
    images_file, labels_file = idx.FASHION_MNIST_FILES[split]
    idx.write_idx(os.path.join(directory, images_file),
                  rng.randint(0, 256, (count, 28, 28)))
    idx.write_idx(os.path.join(directory, labels_file), np.arange(count) % 10)
  return directory


# The report.


def machine(dry_run: bool) -> Dict[str, Any]:
  device = jax.devices()[0]
  return {
      'device_kind': device.device_kind, 'platform': device.platform,
      'num_devices': jax.device_count(), 'jax': jax.__version__,
      'flax': flax.__version__, 'python': platform.python_version(),
      'host_cpu': host.host_cpu(), 'host_cpus': os.cpu_count(),
      'tensorflow_installed': importlib.util.find_spec('tensorflow')
                              is not None,
      'dry_run': dry_run,
  }


def _number(value, scale: float = 1.0, digits: int = 4) -> str:
  return 'n/a' if value is None else f'{value * scale:.{digits}g}'


def _step_row(name: str, figures: Dict[str, Any], notes: str = '') -> str:
  if 'error' in figures:
    return f'| {name} | | | | | error: {figures["error"][:120]} |'
  memory = figures.get('peak_memory_bytes')
  return (f'| {name} | {figures["model"]} {figures["image_size"]} px, '
          f'batch {figures["batch"]}, {figures["dtype"]}, attention '
          f'{figures["attention_impl"] or "einsum"} | '
          f'{_number(figures["step_img_per_sec_per_device"])} | '
          f'{_number(figures["mfu"], 100, 3)} % | '
          f'{_number(memory and memory / 2**30, 1, 3)} GiB '
          f'({figures["peak_memory_kind"]}) | {notes} |')


def markdown(report: Dict[str, Any]) -> str:
  """The report as a markdown table."""
  m = report['machine']
  lines = [
      f'GPU check on {m["num_devices"]} x {m["device_kind"]} '
      f'({m["platform"]}), jax {m["jax"]}, flax {m["flax"]}, Python '
      f'{m["python"]}' + (' -- DRY RUN (CPU, tiny shapes: the figures mean '
                          'nothing)' if m['dry_run'] else ''),
      '',
      '| part | what | img/s per device | MFU | peak memory | notes |',
      '| --- | --- | --- | --- | --- | --- |',
  ]
  for name, result in report['parts'].items():
    if 'skipped' in result or 'error' in result:
      why = result.get('skipped') or 'error: ' + result['error'][:160]
      lines.append(f'| {name} | | | | | {why} |')
    elif name == 'cifar_steps':
      lines += [_step_row(f'{name}: {config}', figures)
                for config, figures in result['configs'].items()]
    elif name in ('reduced', 'vit_ti16', 'vit_b16'):
      notes = ''
      if 'mfu_goal' in result:
        notes = (f'MFU goal {100 * result["mfu_goal"]:.0f} %: '
                 f'{"met" if result["mfu_goal_met"] else "not met"}')
      lines.append(_step_row(name, result, notes))
    elif name == 'quickstart':
      lines.append(
          f'| {name} | configs/quickstart.py, data on the device, '
          f'{result["total_steps"]} steps of {result["batch"]} | '
          f'{_number(result["loop_img_per_sec_per_device"])} (loop) | | | '
          f'{result["wall_seconds"]:.1f} s end to end; accuracy '
          f'{100 * result["eval_accuracy"]:.2f} % (best '
          f'{100 * result["best_eval_accuracy"]:.2f} %) |')
    elif name == 'input':
      host_rate = (f'{_number(result["host_img_per_sec"])} img/s'
                   if result['host_img_per_sec'] is not None else
                   f'skipped ({result["host_skipped"]})')
      lines.append(
          f'| {name} | the quickstart\'s training input alone | '
          f'{_number(result["device_img_per_sec"])} (device) | | | '
          f'host pipeline: {host_rate} |')
  lines.append('')
  lines.append(f'{report["seconds"]:.0f} s in all.')
  return '\n'.join(lines) + '\n'


def write_report(report: Dict[str, Any], out_dir: str) -> None:
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, 'gpu_check.json'), 'w') as f:
    json.dump(report, f, indent=1, sort_keys=True, default=str)
    f.write('\n')
  with open(os.path.join(out_dir, 'gpu_check.md'), 'w') as f:
    f.write(markdown(report))


def run(out_dir: str, dry_run: bool = False, parts: Optional[List[str]] = None,
        step_configs: Optional[List[str]] = None,
        fashion_mnist_dir: Optional[str] = None,
        budget_minutes: float = 8.0) -> Dict[str, Any]:
  """Runs the parts (all, or those named), writing the report after each."""
  known = [name for name, _, _ in PARTS]
  unknown = sorted(set(parts or ()) - set(known))
  if unknown:
    raise ValueError(f'Unknown parts {unknown}; known: {known}.')
  start = time.perf_counter()
  report = {'machine': machine(dry_run), 'parts': {}, 'seconds': 0.0}
  dry_data = None
  if dry_run and not fashion_mnist_dir:
    dry_data = tempfile.mkdtemp(prefix='vit_flax_gpu_check_data_')
    fashion_mnist_dir = write_random_fashion_mnist(dry_data)
  options = {'dry_run': dry_run, 'step_configs': step_configs or [],
             'fashion_mnist_dir': find_fashion_mnist(fashion_mnist_dir)}
  try:
    for name, function, needs_data in PARTS:
      if parts and name not in parts:
        continue
      elapsed = time.perf_counter() - start
      try:
        if elapsed > 60 * budget_minutes:
          raise Skipped(f'past the budget of {budget_minutes} minutes')
        if needs_data and options['fashion_mnist_dir'] is None:
          raise Skipped(
              'no Fashion-MNIST IDX files (give --fashion_mnist_dir or copy '
              'them to .carry/fashion-mnist: see benchmarks/gpu.sh)')
        logging.info('GPU check: %s.', name)
        result = function(options)
      except Skipped as e:
        result = {'skipped': str(e)}
      except Exception as e:  # pylint: disable=broad-except
        logging.error('GPU check: %s failed:\n%s', name,
                      traceback.format_exc())
        result = {'error': f'{type(e).__name__}: {e}'}
      result['part_seconds'] = time.perf_counter() - start - elapsed
      report['parts'][name] = result
      report['seconds'] = time.perf_counter() - start
      jax.clear_caches()
      write_report(report, out_dir)
  finally:
    if dry_data:
      shutil.rmtree(dry_data, ignore_errors=True)
  return report


def main(argv):
  del argv
  if FLAGS.dry_run:
    jax.config.update('jax_platforms', 'cpu')
  host.quiet_startup_logs()
  report = run(FLAGS.out_dir, FLAGS.dry_run, FLAGS.parts, FLAGS.step_configs,
               FLAGS.fashion_mnist_dir, FLAGS.budget_minutes)
  print(markdown(report), flush=True)
  failed = [name for name, result in report['parts'].items()
            if 'error' in result or any(
                'error' in r for r in result.get('configs', {}).values())]
  if failed:
    sys.exit(f'Failed: {", ".join(failed)} (see gpu_check.json).')


if __name__ == '__main__':
  define_flags()
  app.run(main)
