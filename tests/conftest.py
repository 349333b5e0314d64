"""Test setup: 8 fake CPU devices, the XLA flags of tests/xla_flags.py and
a compilation cache shared by the tests' processes.

XLA_FLAGS must be set before JAX starts its backend, so this runs before any
test module imports jax.

The suite starts many training processes (the command line, resuming,
signals, sweeps) that compile the same small programs: the model's
initializers alone are some twenty compilations of a few tenths of a second
each. JAX's persistent compilation cache, in a directory of this test
session that its subprocesses inherit through the environment, lets every
process after the first load them instead (a 2-step smoke run: 18 s ->
6 s). The executables are the ones XLA compiled; nothing a test checks
depends on compiling them again. A cache directory the caller set is kept.
"""

import atexit
import os
import pathlib
import shutil
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))  # So that `import configs.x` works.

from tests import xla_flags  # noqa: E402  (needs ROOT on sys.path)

os.environ["XLA_FLAGS"] = (xla_flags.flags(8) + " " +
                           os.environ.get("XLA_FLAGS", "")).strip()

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _CACHE = tempfile.mkdtemp(prefix="alexnet_jax_test_xla_cache_")
  atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
  # Every program, however small or quick to compile.
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
