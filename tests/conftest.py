"""Set up before any test imports JAX.

One persistent XLA compilation cache for the tests and for the runs they
start in subprocesses (kill -9, SIGTERM, multi-host, command lines): each of
those processes would otherwise compile the same train step again, about
10 s of a tiny run's 30 s on a 2-core CPU. Set JAX_COMPILATION_CACHE_DIR to
use another folder; JAX_ENABLE_COMPILATION_CACHE=false turns it off.
"""

import os
import tempfile

os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(
    tempfile.gettempdir(), f'vit_flax_tests_xla_cache_{os.getuid()}'))
# Only executables that took a while to compile (a tiny run's are about
# 1 MB together).
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5')
# The tests' programs are tiny: compiling them, not running them, is most of
# the suite's time, and XLA:CPU's backend optimisations (LLVM -O2) are the
# larger part of compiling; without them the suite needs about a third less
# CPU time (tests/training/test_loop.py and tests/models/test_vit.py: 256
# instead of 391 CPU seconds). Subprocesses inherit it, as they add their
# own flags (device counts) to XLA_FLAGS.
TEST_XLA_FLAGS = '--xla_backend_optimization_level=0'
os.environ['XLA_FLAGS'] = ' '.join(
    f for f in (os.environ.get('XLA_FLAGS'), TEST_XLA_FLAGS) if f)

