"""vit_flax: Vision Transformers in JAX/Flax, compatible with vit_jax."""

import os
import re
import sys
import tempfile

# TensorFlow (which only feeds data) prints INFO lines from C++ when it is
# imported (oneDNN notes, CPU features) that tell users nothing to act on,
# whatever TF_CPP_MIN_LOG_LEVEL says. They are dropped from what the import
# writes to stderr; every other line is passed on. TF_CPP_MIN_LOG_LEVEL=0
# in the environment keeps them all.
_TENSORFLOW_NOISE = re.compile(
    r'All log messages before absl::InitializeLog|port\.cc:\d+\] oneDNN '
    r'custom operations|cpu_feature_guard\.cc:\d+\]|To enable the following '
    r'instructions')


def _import_tensorflow_quietly() -> None:
  if ('tensorflow' in sys.modules or
      os.environ.get('TF_CPP_MIN_LOG_LEVEL') == '0'):
    return
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')
  try:
    sys.stderr.flush()
    saved = os.dup(2)
  except (OSError, ValueError):  # No real stderr (some notebooks).
    return
  with tempfile.TemporaryFile(mode='w+b') as captured:
    os.dup2(captured.fileno(), 2)
    try:
      import tensorflow  # pylint: disable=g-import-not-at-top,unused-import
    except ImportError:
      pass  # The module that needs it raises, with its own traceback.
    finally:
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      lines = captured.read().decode(errors='replace').splitlines(True)
  kept = ''.join(l for l in lines if not _TENSORFLOW_NOISE.search(l))
  if kept:
    sys.stderr.write(kept)


_import_tensorflow_quietly()
