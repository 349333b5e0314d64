"""The XLA flags every test process runs with, in one place.

`--xla_backend_optimization_level=0` lowers LLVM's optimisation of the
compiled CPU code: the HLO, its fusions and collectives are XLA's as always,
only the machine code is less optimised. The suite's programs are small and
each runs a few steps, so compiling is most of their cost; level 0 compiles
the training step about 2.5x faster (the default suite's CPU time fell by
about 15%). Bit-for-bit comparisons (two runs, a resume, two ops paths)
compare programs compiled with the same flags; comparisons with float64
references or torch hold within the same tolerances at either level. The
benchmark subprocesses and the runs that compute more than they compile
(the real-data learning checks) keep XLA's default level.
"""

YNN = "--xla_cpu_experimental_ynn_fusion_type="
FAST_COMPILE = "--xla_backend_optimization_level=0"


def flags(devices: int | None = None, fast_compile: bool = True) -> str:
  """XLA_FLAGS for a test process: `devices` fake CPU devices (unset: XLA's
  one), the project's CPU flag and, unless a run computes more than it
  compiles (fast_compile=False), the quick-to-compile backend level."""
  fake = ("" if devices is None else
          f"--xla_force_host_platform_device_count={devices} ")
  return f"{fake}{YNN} {FAST_COMPILE if fast_compile else ''}".strip()
