"""Facts about the host a job runs on, and settings that belong to it.

Which CPU and malloc the process has (benchmarks and reports name them),
the hint to preload tcmalloc for XLA:CPU, and keeping TensorFlow (which only
feeds data) off the accelerators that JAX uses.
"""

import logging as std_logging
import os
import platform
import sys
from typing import Dict

from absl import logging
import flax
import jax

from vit_flax.data import tensorflow_loader


def hide_gpus_from_tensorflow() -> None:
  """TensorFlow only reads and augments data: keep it off the GPUs (it would
  otherwise reserve their memory), leaving them to JAX.

  Imports no TensorFlow: where it is not imported yet,
  `tensorflow_loader.import_tensorflow` hides them when it first is.
  """
  tf = sys.modules.get('tensorflow')
  if tf is not None:
    tensorflow_loader.hide_gpus(tf)


class _OrbaxInfoFilter(std_logging.Filter):
  """Drops orbax's INFO records (several per save); keeps its warnings.

  Its errors keep their message but lose their traceback: they come from
  the background save threads, and the run reports the failed save itself,
  once, as a CheckpointError (`checkpointing.Checkpointer`).
  """

  def filter(self, record):
    if 'orbax' not in record.pathname:
      return True
    if record.levelno >= std_logging.ERROR and record.exc_info:
      record.exc_info, record.exc_text = None, None
    return record.levelno >= std_logging.WARNING


def quiet_orbax_logs() -> None:
  logger = std_logging.getLogger('absl')
  if not any(isinstance(f, _OrbaxInfoFilter) for f in logger.filters):
    logger.addFilter(_OrbaxInfoFilter())


def quiet_startup_logs() -> None:
  """Hides start-up lines that need no action (jax's probe for a TPU,
  orbax's INFO lines per file) unless `--verbosity` is 1 or more."""
  if logging.get_verbosity() >= logging.DEBUG:
    return
  std_logging.getLogger('jax._src.xla_bridge').setLevel(std_logging.WARNING)
  quiet_orbax_logs()


def host_cpu() -> str:
  """The host's CPU model, as Linux names it."""
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def usable_cores() -> int:
  """CPU cores this process may run on."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # Not Linux.
    return os.cpu_count() or 1


def host_allocator() -> str:
  """The malloc this process runs with: 'tcmalloc', 'jemalloc' or 'glibc'
  (the default one), from the shared libraries it has loaded."""
  try:
    with open('/proc/self/maps') as f:
      maps = f.read()
  except OSError:  # Not Linux.
    return 'unknown'
  for name in ('tcmalloc', 'jemalloc'):
    if f'lib{name}' in maps:
      return name
  return 'glibc'


def log_cpu_allocator_hint() -> None:
  """XLA:CPU allocates a step's buffers afresh each step; glibc's malloc
  returns large ones to the kernel, so every step page-faults them back in,
  which can halve a small model's speed."""
  if jax.devices()[0].platform == 'cpu' and host_allocator() == 'glibc':
    logging.info(
        'Training on the CPU with glibc malloc; preloading tcmalloc is '
        'often much faster, for up to twice the memory (Debian: apt-get '
        'install libtcmalloc-minimal4, then '
        'LD_PRELOAD=libtcmalloc_minimal.so.4 python main.py ...; README: '
        'CPU memory allocator).')


def describe_machine() -> Dict[str, str]:
  """The hardware and software behind a set of numbers, for reports."""
  devices = jax.devices()
  load = ', '.join(f'{x:.1f}' for x in os.getloadavg())
  return {
      'CPU': f'{host_cpu()}, {usable_cores()} cores usable',
      'Devices': f'{len(devices)} x {devices[0].device_kind} '
                 f'({devices[0].platform})',
      'malloc': host_allocator(),
      'Load average (1, 5, 15 min) at start': load,
      'Software': f'Python {platform.python_version()}, jax {jax.__version__}, '
                  f'flax {flax.__version__}',
  }
