"""TensorFlow and TFDS, imported only where the host pipeline needs them.

vit_flax trains without TensorFlow when the data are on the devices
(`config.data_on_device`) or synthetic: `import vit_flax`, the models, the
training loop and the metric writers import none of it. The modules of the
host pipeline (tf.data, TFDS, RandAugment) get it from here, imported once,
quietly, and kept off the GPUs that JAX uses.
"""

import importlib
import os
import re
import sys
import tempfile
import types

# TensorFlow prints INFO lines from C++ when it is imported (oneDNN notes,
# CPU features) that tell users nothing to act on, whatever
# TF_CPP_MIN_LOG_LEVEL says. They are dropped from what the import writes to
# stderr; every other line is passed on. TF_CPP_MIN_LOG_LEVEL=0 in the
# environment keeps them all.
_TENSORFLOW_NOISE = re.compile(
    r'All log messages before absl::InitializeLog|port\.cc:\d+\] oneDNN '
    r'custom operations|cpu_feature_guard\.cc:\d+\]|To enable the following '
    r'instructions')


def _import_quietly(name: str) -> types.ModuleType:
  """`importlib.import_module(name)` with TensorFlow's start-up noise
  dropped from stderr."""
  if (name in sys.modules or 'tensorflow' in sys.modules or
      os.environ.get('TF_CPP_MIN_LOG_LEVEL') == '0'):
    return importlib.import_module(name)
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')
  try:
    sys.stderr.flush()
    saved = os.dup(2)
  except (OSError, ValueError):  # No real stderr (some notebooks).
    return importlib.import_module(name)
  with tempfile.TemporaryFile(mode='w+b') as captured:
    os.dup2(captured.fileno(), 2)
    try:
      return importlib.import_module(name)
    finally:
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      lines = captured.read().decode(errors='replace').splitlines(True)
      kept = ''.join(l for l in lines if not _TENSORFLOW_NOISE.search(l))
      if kept:
        sys.stderr.write(kept)


def hide_gpus(tf) -> None:
  """TensorFlow only reads and augments data: keep it off the GPUs (it would
  otherwise reserve their memory), leaving them to JAX."""
  try:
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError:
    pass  # Its devices were initialised already; nothing can change now.


def import_tensorflow() -> types.ModuleType:
  """`tensorflow`, imported quietly, with no GPU visible to it."""
  first = 'tensorflow' not in sys.modules
  tf = _import_quietly('tensorflow')
  if first:
    hide_gpus(tf)
  return tf


def import_tensorflow_datasets() -> types.ModuleType:
  """`tensorflow_datasets` (after TensorFlow, imported quietly)."""
  import_tensorflow()
  return importlib.import_module('tensorflow_datasets')
