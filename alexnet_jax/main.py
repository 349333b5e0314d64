"""Entry point: python -m alexnet_jax.main --config=configs/X.py --workdir=DIR.

Parses flags and dispatches; all logic lives in importable modules.
"""

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from alexnet_jax import input_pipeline
from alexnet_jax import sharding
from alexnet_jax import train

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for metrics and checkpoints.")
flags.DEFINE_enum("mode", "train", ["train"], "What to run.")
config_flags.DEFINE_config_file(
    "config", None, "A config file (configs/*.py), optionally ':option'.",
    lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])

USER_ERRORS = (train.ConfigError, input_pipeline.DataError,
               sharding.MeshError)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # JAX's backend-probe chatter.
  try:
    config = FLAGS.config
    config.keys()  # A file that failed to load raises only when used.
  except (OSError, ImportError, SyntaxError) as e:  # A config file that fails.
    reason = [l.strip() for l in str(e).splitlines() if l.strip()][-1]
    print(f"error: cannot load --config ({reason})", file=sys.stderr)
    return 2
  try:
    train.train_and_evaluate(config, FLAGS.workdir)
  except USER_ERRORS as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except FloatingPointError as e:
    print(f"error: training diverged: {e}", file=sys.stderr)
    return 3
  return 0


def parse_flags(argv):
  """absl flag parsing, with bad --config overrides reported in one line."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    print(f"error: {e}", file=sys.stderr)
  except (AttributeError, KeyError) as e:  # An override of a missing field.
    bad = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
    field = str(e).strip("\"'")
    print(f"error: no such config field {field!r} (overrides given: "
          f"{', '.join(bad)}); see the config file for the fields",
          file=sys.stderr)
  except (TypeError, ValueError) as e:
    print(f"error: bad config override: {e}", file=sys.stderr)
  sys.exit(2)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
