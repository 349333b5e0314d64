"""What each fast path in ops.py buys, measured in one process.

  python experiments/fast_paths.py --what=train --batch=64
  python experiments/fast_paths.py --config=configs/cifar10.py --batch=128

(--what, --batch, --windows and --config are the benchmark program's flags.)

Builds the project's jitted step (as the benchmark does) once per variant,
from the plain formulations (model.ops=plain) up to the fast ones
(model.ops=fast), one fast path added at a time, then times the variants in
alternating windows (so that load from other processes hits all alike) and
prints the median step time of each and its speed-up over the one before.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

# The repository root, for `configs` (and the package, if not installed).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402  (after the path)
from absl import flags
from absl import logging

import alexnet_jax  # noqa: F401  (sets the XLA:CPU flags before jax starts)
from alexnet_jax import benchmark
from alexnet_jax import ops

FLAGS = flags.FLAGS  # --what, --batch, --windows, --config: the benchmark's.
flags.DEFINE_bool("plain", True, "Include the all-plain variant (grouped "
                  "layers by feature_group_count: several times slower).")

# Cumulative: each variant swaps one more plain formulation for the model's.
PATHS = ("conv", "local_response_norm", "max_pool", "add_bias")
VARIANTS = {
    "plain": (),
    "+ towers as convs": PATHS[:1],
    "+ LRN": PATHS[:2],
    "+ max-pool": PATHS[:3],
    "+ bias sums (all)": PATHS,
}


def build(config, what, batch, fast):
  """The step with the fast formulation of the ops in `fast`, plain ones
  elsewhere (whatever model.ops says)."""
  mixed = ops.Ops(**{name: getattr(ops.FAST if name in fast else ops.PLAIN,
                                   name) for name in ops.Ops._fields})
  saved = ops.select
  ops.select = lambda mode, backend=None: mixed
  try:
    return benchmark.JaxStep(config, what, batch)  # Traced and compiled here.
  finally:
    ops.select = saved


def main(argv):
  del argv
  if FLAGS.what == "input":
    print("error: --what must be train or eval", file=sys.stderr)
    return 2
  batch = FLAGS.batch or 64
  logging.set_verbosity(logging.WARNING)
  variants = {k: v for k, v in VARIANTS.items() if FLAGS.plain or v}
  steps = {}
  for name, fast in variants.items():
    steps[name] = build(FLAGS.config, FLAGS.what, batch, fast)
    steps[name].run(2)  # Warm-up.
    print(f"compiled {name}", file=sys.stderr, flush=True)
  times = {name: [] for name in steps}
  for _ in range(FLAGS.windows):
    for name, step in steps.items():
      t = time.perf_counter()
      step.run(1)
      times[name].append(time.perf_counter() - t)
  m = FLAGS.config.model
  print(f"{FLAGS.what} step, batch {batch}, {m.preset} preset, width "
        f"{m.width}; median of {FLAGS.windows} alternating windows")
  print(f"{'variant':22s} {'ms/step':>9s} {'images/s':>9s} {'vs previous':>12s}")
  previous = None
  for name, ts in times.items():
    med = statistics.median(ts)
    gain = f"{previous / med:.2f}x" if previous else ""
    print(f"{name:22s} {1e3 * med:9.1f} {batch / med:9.1f} {gain:>12s}")
    previous = med
  return 0


if __name__ == "__main__":
  app.run(main)
