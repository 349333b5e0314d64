"""The per-channel mean and std of a training split, for data.mean/data.std
(`input_pipeline.compute_mean`), as a program:

  python -m alexnet_jax.compute_mean --config=configs/cifar10.py [--max_images=N]

prints both as config lines and as --config overrides.
"""

from __future__ import annotations

import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from alexnet_jax import input_pipeline
from alexnet_jax import model
from alexnet_jax import sources

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "A config file.")
flags.DEFINE_integer("max_images", 0, "Average over the first N (0: all).")
flags.mark_flags_as_required(["config"])


def _main(argv):
  if argv[1:]:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  config = FLAGS.config
  try:
    mean, std, used = input_pipeline.compute_mean(
        config, image_size=model.input_size(config.model),
        max_images=FLAGS.max_images)
  except sources.DataError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  text = ", ".join(f"{m:.2f}" for m in mean)
  std_text = ", ".join(f"{m:.2f}" for m in std)
  print(f"data.mean = ({text})  # over {used} images of "
        f"{config.data.train_split}")
  print(f"data.std = ({std_text})  # per-channel pixel std, same images")
  print(f"--config.data.mean=\"({text})\" --config.data.std=\"({std_text})\"")


if __name__ == "__main__":
  app.run(_main)
