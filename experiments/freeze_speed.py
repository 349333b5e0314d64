"""Train-step images/s with frozen layers, next to the same step unfrozen.

  python -m experiments.freeze_speed --config=configs/finetune_cifar10.py \
      [--freeze=conv1,conv2,conv3,conv4,conv5] [--batch=64] [--windows=5] \
      [--steps=10]

Builds the project's train step (benchmark.JaxStep, as training builds it)
once with nothing frozen and once with each --freeze set, and times them in
alternating windows on one fixed batch, so that load from other processes
hits every variant alike. Prints the median images/s of each, the ratio to
the unfrozen step and the convolutions in each compiled step's HLO (a
frozen layer's weight and input gradients are not computed).
"""

from __future__ import annotations

import json
import platform
import statistics

from absl import app
from absl import flags
from absl import logging

import alexnet_jax  # noqa: F401  (sets the XLA:CPU flags before jax starts)

from alexnet_jax import benchmark

FLAGS = flags.FLAGS  # --config, --batch, --windows, --steps, --json:
# the benchmark's own flags (alexnet_jax.benchmark defines them).
flags.DEFINE_multi_string("freeze", ["conv1,conv2,conv3,conv4,conv5"],
                          "Layers to freeze, comma-separated; repeat the "
                          "flag for several variants.")


def main(argv):
  del argv
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  variants = {"": ()} | {f: tuple(f.split(",")) for f in FLAGS.freeze}
  steps = {}
  for name, frozen in variants.items():
    config = FLAGS.config.copy_and_resolve_references()
    with config.unlocked():
      config.finetune.freeze = frozen
      config.finetune.init_from = None  # Speed only: random weights do.
    steps[name] = benchmark.JaxStep(config, "train",
                                    FLAGS.batch or config.batch_size)
    steps[name].run(3)  # Warm-up.
  times = {name: [] for name in variants}
  for _ in range(FLAGS.windows):
    for name, step in steps.items():
      times[name].append(benchmark._timed(step.run, FLAGS.steps or 10))  # pylint: disable=protected-access
  batch = FLAGS.batch or FLAGS.config.batch_size
  base = batch / statistics.median(times[""])
  rows = []
  for name, step in steps.items():
    ips = batch / statistics.median(times[name])
    rows.append({"frozen": name or "(none)", "images_per_sec": round(ips, 1),
                 "ratio": round(ips / base, 3),
                 "convolutions": step.compiled.as_text().count(
                     "convolution(")})
  if FLAGS.json:
    print(json.dumps({"batch": batch, "machine": platform.processor() or
                      platform.machine(), "rows": rows}))
    return
  print(f"batch {batch}, median of {FLAGS.windows} windows of "
        f"{FLAGS.steps or 10} steps")
  print("| frozen | images/s | vs unfrozen | convolutions in the step |")
  print("|---|---|---|---|")
  for r in rows:
    print(f"| {r['frozen']} | {r['images_per_sec']} | {r['ratio']:.2f}x | "
          f"{r['convolutions']} |")


if __name__ == "__main__":
  app.run(main)
