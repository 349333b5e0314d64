"""LRN's mean factor per LRN layer of a config's network at initialisation:
the fixed scales of the norm=scale control arm.

  python -m experiments.lrn_scale --config=configs/ablation_cifar10.py

Builds the network with norm=lrn and the config's seed, evaluates it once on
the config's eval split (the held-out images: no test data is read) and
prints the LRN statistic of every LRN layer (lrn_stats.py): the mean factor
(k + alpha S)^-beta, its spread and mean |log(f / k^-beta)|, and the
`model.norm_scale` line to put into the config.
"""

from __future__ import annotations

import sys

import jax
from absl import app
from absl import flags
from ml_collections import config_flags

from alexnet_jax import train

FLAGS = flags.FLAGS


def measure(config) -> dict[str, float]:
  """The eval split's LRN statistic of the config's network at init."""
  config = config.copy_and_resolve_references()
  config.model.norm = "lrn"
  run = train.setup(config)
  with jax.set_mesh(run.mesh):
    metrics = train.evaluate(run)
  return {k: v for k, v in metrics.items() if k.startswith("lrn/")}


def main(argv):
  del argv
  stats = measure(FLAGS.config)
  if not stats:
    print("error: the network has no LRN layer", file=sys.stderr)
    return 2
  for k, v in sorted(stats.items()):
    print(f"{k} = {v:.6g}")
  means = tuple(round(v, 4) for k, v in sorted(stats.items())
                if k.endswith("/mean"))
  print(f"model.norm_scale = {means}")
  return 0


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", None, "A training config.",
                                  lock_config=False)
  flags.mark_flags_as_required(["config"])
  app.run(main)
