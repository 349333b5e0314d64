"""Test setup: 8 fake CPU devices and the project's XLA:CPU flags.

XLA_FLAGS must be set before JAX starts its backend, so this runs before any
test module imports jax.
"""

import os
import pathlib
import sys

_FLAGS = ("--xla_force_host_platform_device_count=8 "
          "--xla_cpu_experimental_ynn_fusion_type=")
os.environ["XLA_FLAGS"] = (_FLAGS + " " + os.environ.get("XLA_FLAGS", "")).strip()

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))  # So that `import configs.x` works.
