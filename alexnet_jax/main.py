"""Entry point: python -m alexnet_jax.main --config=configs/X.py --workdir=DIR.

Parses flags and dispatches; all logic lives in importable modules.
"""

import json
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from alexnet_jax import comm
from alexnet_jax import input_pipeline
from alexnet_jax import predict
from alexnet_jax import sharding
from alexnet_jax import train
from alexnet_jax import workdir as workdir_lib

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for metrics and checkpoints.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "predict", "comm"],
                  "train (resumes from the workdir's checkpoints) | eval (the "
                  "latest checkpoint, or the best with --best) | predict "
                  "(top-5 classes of --images) | comm (collectives and memory "
                  "per device of the compiled steps).")
flags.DEFINE_list("images", None, "--mode=predict: image files, "
                  "comma-separated.")
flags.DEFINE_bool("json", False, "--mode=comm, eval or predict: print JSON, "
                  "not tables.")
flags.DEFINE_bool("best", False, "--mode=eval or predict: the best "
                  "checkpoint by eval error instead of the latest.")
flags.DEFINE_bool("allow_config_change", False, "--mode=train: resume even "
                  "where the config moves the checkpoint's data position "
                  "(batch_size, data source, path, split, shards, seed): the "
                  "step is kept and the data restarts at step x the new "
                  "batch_size.")
config_flags.DEFINE_config_file(
    "config", None, "A config file (configs/*.py), optionally ':option'.",
    lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])

USER_ERRORS = (train.ConfigError, input_pipeline.DataError,
               sharding.MeshError, workdir_lib.WorkdirError)


def _last_line(error: Exception) -> str:
  return [l.strip() for l in str(error).splitlines() if l.strip()][-1]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # JAX's backend-probe chatter.
  try:
    config = FLAGS.config
    config.keys()  # A file that failed to load raises only when used.
  except (OSError, ImportError, SyntaxError) as e:  # A config file that fails.
    print(f"error: cannot load --config ({_last_line(e)})", file=sys.stderr)
    return 2
  try:
    # Before anything touches the devices: they span every process.
    sharding.initialize_distributed(config.mesh)
    if FLAGS.mode == "comm":
      text = comm.report(config, as_json=FLAGS.json)
      if jax.process_index() == 0:
        print(text)
    elif FLAGS.mode == "eval":
      metrics = train.evaluate_checkpoint(config, FLAGS.workdir,
                                          best=FLAGS.best, quiet=FLAGS.json)
      if FLAGS.json and jax.process_index() == 0:
        print(json.dumps(metrics), flush=True)
    elif FLAGS.mode == "predict":
      results = predict.predict(config, FLAGS.workdir, FLAGS.images or [],
                                best=FLAGS.best)
      if jax.process_index() == 0:
        print(predict.format_results(results, as_json=FLAGS.json), flush=True)
    else:
      train.train_and_evaluate(
          config, FLAGS.workdir,
          allow_config_change=FLAGS.allow_config_change)
  except USER_ERRORS as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except FloatingPointError as e:
    print(f"error: training diverged: {e}", file=sys.stderr)
    return 3
  except KeyboardInterrupt:  # A second SIGTERM/Ctrl-C: stop without saving.
    print("stopped at once by a second signal; the checkpoints saved before "
          "are intact", file=sys.stderr)
    return 130
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
  except (OSError, ImportError, SyntaxError) as e:  # Overrides on a bad file.
    print(f"error: cannot load --config ({_last_line(e)})", file=sys.stderr)
  sys.exit(2)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
