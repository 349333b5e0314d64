"""What changed in the config since the checkpoint a run resumes from.

A resumed run reads its data from step x batch_size of a stream that is a
function of (seed, data shard, epoch) (input_pipeline.py): a field that
changes that stream, or the number of shards it is split into, silently
moves the data position, so changing one is an error unless the run is
started with --allow_config_change (train_and_evaluate's
allow_config_change). The run then keeps the checkpoint's step (and the
optimizer state) and reads the new stream from example step x the new
batch_size, as a new run would at that step: examples between the old
position and the new one are skipped or seen again. Epochs, and the
learning-rate schedule and the run's length where given in epochs, count
at the new batch size.
Fields that only say how often to log, evaluate or checkpoint, or where the
processes meet, pass quietly; every other change is named in a warning,
old and new value. Model fields are checked by checkpoint.check_compatible
(another model is always an error).
"""

from __future__ import annotations

import json
import os
import sys

import jax
import ml_collections

from alexnet_jax import preflight

# Fields that move the data position: a field with sources matters only
# when data.source is one of them (a change in another source's field is
# quiet).
DATA_POSITION = {
    "seed": None, "batch_size": None, "data.source": None,
    "data.train_split": None, "data.name": ("tfds",),
    "data.shuffle_buffer": ("tfds", "prepared"),
    "data.path": ("folder", "prepared"),
    "data.classes": ("folder",), "data.holdout": ("folder",),
    "data.num_train_examples": ("synthetic",)}
# Fields that leave the training itself as it is.
QUIET = ("log_every_steps", "eval_every_steps", "checkpoint_every_steps",
         "max_checkpoints_to_keep", "mesh.", "data.data_dir",
         "data.manual_dir", "data.download", "data.hint", "data.autotune",
         "finetune.init_from", "finetune.best", "model.")
SHARDS = "data shards"  # Not a config field: the processes loading rows.


class ConfigChanged(preflight.ConfigError):
  """The config moves the data position of the checkpoint's run."""


class _Missing:
  def __repr__(self):
    return "(not in the checkpoint's config)"


MISSING = _Missing()


def data_shards(config: ml_collections.ConfigDict, rows: slice) -> int:
  """How many slices the training stream is split into, when each process
  loads `rows` of every batch (train.data_slice)."""
  return config.batch_size // (rows.stop - rows.start)


def flatten(tree: dict, prefix: str = "") -> dict:
  """{'a.b': value} for every leaf of nested dicts."""
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict) and v:
      out.update(flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def as_json(config: ml_collections.ConfigDict) -> dict:
  """The config as config.json holds it (tuples as lists)."""
  return json.loads(config.to_json_best_effort())


def saved_config(meta: dict, workdir: str) -> dict | None:
  """The config of the checkpoint's run: saved with the checkpoint, or (a
  checkpoint from before that) the workdir's config.json, read before this
  run rewrites it."""
  if "config" in meta:
    return meta["config"]
  path = os.path.join(workdir, "config.json")
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _matters(key: str, source) -> bool:
  sources = DATA_POSITION[key]
  return sources is None or source in sources


def changes(saved: dict, now: dict, shards: tuple[int | None, int]
            ) -> tuple[list[tuple], list[tuple]]:
  """(data-position changes, other changes), each (field, old, new); a
  field missing from the saved config is old=MISSING."""
  old, new = flatten(saved), flatten(now)
  moved, other = [], []
  source = new.get("data.source")
  same_source = old.get("data.source", source) == source
  for key in sorted(set(old) | set(new)):
    a, b = old.get(key, MISSING), new.get(key, MISSING)
    if a == b or any(key == q or (q.endswith(".") and key.startswith(q))
                     for q in QUIET):
      continue
    if key not in DATA_POSITION or a is MISSING:  # Code newer than it.
      other.append((key, a, b))
    elif _matters(key, source) or not same_source:
      moved.append((key, a, b))
  if shards[0] is not None and shards[0] != shards[1]:
    moved.append((SHARDS, shards[0], shards[1]))
  return moved, other


def _change(key, a, b) -> str:
  return f"{key} {a!r} -> {b!r}"


def check(config: ml_collections.ConfigDict, meta: dict, workdir: str, *,
          rows: slice, num_examples: int, allow: bool = False) -> list[str]:
  """Warns (stderr, process 0; the lines are returned too) about each
  change between the checkpoint `meta`'s config and `config` (nothing for a
  new run); ConfigChanged when a change moves the data position and not
  `allow`. `rows`: of each batch, this process's; `num_examples`: the
  training split's size, for the epoch the data restarts at."""
  lines = _check(config, meta, workdir, data_shards(config, rows),
                 num_examples, allow)
  if jax.process_index() == 0:
    for line in lines:
      print(line, file=sys.stderr, flush=True)
  return lines


def _check(config, meta, workdir, shards, num_examples, allow) -> list[str]:
  if "step" not in meta:
    return []
  saved = saved_config(meta, workdir)
  if saved is None:
    return [f"warning: the checkpoint at step {meta['step']} has no saved "
            f"config (and {workdir}/config.json is missing): changes to the "
            f"config since then cannot be checked"]
  step = meta["step"]
  moved, other = changes(saved, as_json(config),
                         (meta.get("data_shards"), shards))
  if step == 0:  # No data read yet (a converted checkpoint): nothing moves.
    moved, other = [], sorted(other + moved)
  lines = [f"warning: {key} changed since the checkpoint at step {step}: "
           f"{a!r} -> {b!r}" for key, a, b in other]
  if not moved:
    return lines
  listed = ", ".join(_change(*c) for c in moved)
  if not allow:
    raise ConfigChanged(
        f"the config moves the data position of the checkpoint at step "
        f"{step} in {workdir}: {listed}; resume with the checkpoint's "
        f"values, use a new --workdir, or pass --allow_config_change (the "
        f"run then keeps step {step} and restarts the data at step x the "
        f"new batch_size)")
  old_batch = saved.get("batch_size", config.batch_size)
  first, was = step * config.batch_size, step * old_batch
  epoch = first / max(num_examples, 1)
  return lines + [
      f"warning: --allow_config_change: {listed}; step {step} is kept and "
      f"the training data restarts at example {step} x {config.batch_size} "
      f"= {first} of the new stream (epoch {epoch:.2f}; the checkpoint's "
      f"run was at example {was}); epochs, and the schedule and the run's "
      f"length where given in epochs, count at the new batch size"]
