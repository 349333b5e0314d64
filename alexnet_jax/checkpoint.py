"""Orbax checkpoints: the latest few for resuming, the best one by eval.

A checkpoint holds the model state (parameters, BatchNorm statistics, the
dropout RNG), the optimizer state and a JSON `meta` item: the step, the
learning-rate schedule's host state (plateau), the best eval error so far,
the model config the state belongs to and, under float16, the loss scale
(precision.py). The data iterators are functions of
the step, so the step is their position.

Saves are asynchronous and atomic: orbax writes into a temporary directory
and renames it when complete, so a crash or SIGKILL during a save leaves the
previous checkpoint as it was. `restore_latest` resumes from the newest
step that restores, naming (and setting aside) any that does not.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading

import jax
import ml_collections
import orbax.checkpoint as ocp
from flax import nnx

from alexnet_jax import precision
from alexnet_jax import preflight

ConfigError = preflight.ConfigError
# Model fields that leave the state as it is (the operations' formulation).
STATE_FREE_MODEL_FIELDS = ("ops",)


def _is_key(x) -> bool:
  return jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key)


def to_saveable(state):
  """Typed PRNG keys become their uint32 key data (orbax stores arrays)."""
  return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x,
                      state)


def from_saveable(restored, like):
  """Undo `to_saveable`, taking key implementations from `like`."""
  return jax.tree.map(
      lambda r, l: jax.random.wrap_key_data(r, impl=jax.random.key_impl(l))
      if _is_key(l) else r, restored, like)


def abstract_like(state):
  """Shape, dtype and sharding of every leaf of a saveable state."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
      to_saveable(state))


class Checkpoints:
  """`checkpoints/` (latest max_to_keep) and `checkpoints_best/` (one).

  Opening them creates nothing: the directories appear with the first save,
  so a run refused by its checks leaves a new workdir as it was.
  """

  def __init__(self, workdir: str, *, max_to_keep: int | None):
    self.latest = ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), "checkpoints"),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=False,
            enable_async_checkpointing=True))
    self.best = ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), "checkpoints_best"),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=1, create=False, enable_async_checkpointing=True,
            best_fn=lambda metrics: metrics["eval_top1_error"],
            best_mode="min"))

  def latest_step(self) -> int | None:
    return self.latest.latest_step()

  def steps(self, *, best: bool = False) -> list[int]:
    """Saved steps, newest first."""
    return sorted((self.best if best else self.latest).all_steps(),
                  reverse=True)

  def directory(self, *, best: bool = False) -> str:
    return str((self.best if best else self.latest).directory)

  def set_aside(self, step: int) -> str:
    """Moves a latest-checkpoint step that does not restore out of the
    manager's sight (into checkpoints_corrupt/, never deleted); returns the
    new path. The run can then save that step again."""
    src = os.path.join(self.directory(), str(step))
    root = os.path.join(os.path.dirname(self.directory()),
                        "checkpoints_corrupt")
    os.makedirs(root, exist_ok=True)
    dest, n = os.path.join(root, str(step)), 1
    while os.path.exists(dest):
      dest, n = os.path.join(root, f"{step}.{n}"), n + 1
    os.rename(src, dest)
    self.latest.reload()
    return dest

  def save(self, step: int, state, meta: dict, *, best_metrics=None):
    """Saves asynchronously; with best_metrics, into the best slot too."""
    args = ocp.args.Composite(state=ocp.args.StandardSave(to_saveable(state)),
                              meta=ocp.args.JsonSave(meta))
    if step != self.latest.latest_step():
      self.latest.save(step, args=args)
    if best_metrics is not None and step != self.best.latest_step():
      self.best.save(step, args=args, metrics=best_metrics)

  def read_meta(self, step: int, *, best: bool = False) -> dict:
    mngr = self.best if best else self.latest
    return mngr.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))["meta"]

  def restore(self, step: int, like, *, best: bool = False):
    """(state, meta) at `step`, placed like the arrays of `like`."""
    mngr = self.best if best else self.latest
    out = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_like(like)),
        meta=ocp.args.JsonRestore()))
    return from_saveable(out["state"], like), out["meta"]

  def restore_partial(self, step: int, like, *, best: bool = False):
    """Only the arrays of `like`, a part of the saved state's tree (say
    {"model": {"conv1": ...}}), placed like them; the rest is not read."""
    mngr = self.best if best else self.latest
    target = abstract_like(like)
    out = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(
            item=target, partial_restore=True,
            restore_args=ocp.checkpoint_utils.construct_restore_args(
                target))))
    return from_saveable(out["state"], like)

  def wait(self):
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self):
    self.latest.close()
    self.best.close()


# ---------------------------------------------------------------- restore


def run_state(run) -> dict:
  """The arrays a checkpoint holds: run's model and optimizer states as
  plain nested dicts (`run` is a train.Run or anything with model_state,
  opt_state and config)."""
  # float16's loss scale is in the meta instead (precision.py), so that a
  # run of either precision restores the other's checkpoints.
  return {"model": nnx.to_pure_dict(run.model_state),
          "opt": precision.without_scale(nnx.to_pure_dict(run.opt_state))}


def restore_into(run, ckpts: Checkpoints, step: int, *,
                 best: bool = False) -> dict:
  """Loads checkpoint `step` into run's states; returns its meta."""
  meta = ckpts.read_meta(step, best=best)
  check_compatible(meta, run.config)
  state, meta = ckpts.restore(step, run_state(run), best=best)
  nnx.replace_by_pure_dict(run.model_state, state["model"])
  nnx.replace_by_pure_dict(run.opt_state, state["opt"])
  precision.restore_scale(run.opt_state, meta)
  return meta


def restore_error(error: BaseException) -> str:
  """What was wrong, in a line: the innermost cause's first line (for a
  damaged file, TensorStore's 'Error reading ... byte range ...')."""
  while (error.__cause__ or error.__context__) is not None:
    error = error.__cause__ or error.__context__
  lines = [l.strip() for l in str(error).splitlines() if l.strip()]
  text = lines[0] if lines else type(error).__name__
  return text.split(" See full TensorStore details")[0][:240]


def quiet_abandoned_reads():
  """After a restore fails, orbax's reads of the other arrays still finish
  on TensorStore threads and report to an event loop that has closed,
  possibly much later, by three routes: an unraisable exception ('Exception
  ignored in <coroutine _read_array_index_and_device_put>'), an exception
  printed from the callback thread ('Event loop is closed' from
  call_soon_threadsafe) and asyncio's '... exception was never retrieved'
  log records; a Python thread's uncaught exception goes through
  threading.excepthook, not sys.excepthook, so that hook is filtered too.
  Each is a traceback that says nothing the warning does not."""
  if getattr(sys.unraisablehook, "quiets_orbax", False):
    return
  unraisable_hook, except_hook = sys.unraisablehook, sys.excepthook
  thread_hook = threading.excepthook

  def on_unraisable(unraisable):
    if not _abandoned_read(f"{unraisable.object!r} {unraisable.exc_value!r}"):
      unraisable_hook(unraisable)

  def on_exception(kind, value, tb):
    if not _abandoned_read(repr(value)):
      except_hook(kind, value, tb)

  def on_thread_exception(args):
    if not _abandoned_read(repr(args.exc_value)):
      thread_hook(args)

  on_unraisable.quiets_orbax = True
  sys.unraisablehook, sys.excepthook = on_unraisable, on_exception
  threading.excepthook = on_thread_exception
  logging.getLogger("asyncio").addFilter(
      lambda record: not _abandoned_read(
          f"{record.getMessage()} {record.exc_info and record.exc_info[1]!r}"))


def _abandoned_read(text: str) -> bool:
  return any(mark in text for mark in (
      "_read_array_index_and_device_put", "async_deserialize",
      "Encountered error while reading array index", "Event loop is closed"))


def restore_latest(run, ckpts: Checkpoints, *,
                   best: bool = False, set_aside: bool = False) -> dict | None:
  """Restores the newest checkpoint that restores; its meta, or None if the
  workdir holds none.

  A step that does not restore (a truncated or missing file, a half-written
  save) is named in a warning and skipped; with set_aside (training, one
  process) it is moved to checkpoints_corrupt/ once an older step has
  restored, so that the run saves that step again. A checkpoint of another
  model is a ConfigError, as is a workdir where no step restores; in both
  cases nothing in the workdir has changed.
  """
  steps = ckpts.steps(best=best)
  failed = []
  for step in steps:
    try:
      meta = restore_into(run, ckpts, step, best=best)
    except ConfigError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      # Orbax and TensorStore raise assorted types for unreadable files.
      quiet_abandoned_reads()
      failed.append((step, restore_error(e)))
      continue
    for bad, why in failed:
      if set_aside and jax.process_count() == 1:
        where = ckpts.set_aside(bad)
        print(f"warning: checkpoint step {bad} does not restore ({why}); "
              f"moved to {where}; resuming from step {step}",
              file=sys.stderr, flush=True)
      else:
        print(f"warning: checkpoint step {bad} does not restore ({why}); "
              f"using step {step}", file=sys.stderr, flush=True)
    return meta
  if not failed:
    return None
  where = ckpts.directory(best=best)
  dirs = ", ".join(str(s) for s, _ in failed)
  raise ConfigError(
      f"no checkpoint in {where} restores (step {failed[0][0]}: "
      f"{failed[0][1]}); move the step directories ({dirs}) out of {where} "
      f"to start this run over, or use a new --workdir")


# Model fields added after checkpoints were first written, with the value
# that reproduces the network those checkpoints hold.
ADDED_MODEL_FIELDS = {
    "pool_mode": None, "channels": [], "fc_features": [], "norm_scale": [],
    "lrn": {"setting": "paper", "k": None, "n": None, "alpha": None,
            "beta": None, "average": None, "pixel_scale": 1.0},
}


def check_compatible(meta: dict, config: ml_collections.ConfigDict):
  """A checkpoint of another model is a user error, never overwritten."""
  # The saved config went through JSON (tuples came back as lists).
  saved = dict(meta.get("model_config", {}))
  now = json.loads(json.dumps(config.model.to_dict()))
  for key, value in ADDED_MODEL_FIELDS.items():  # Older checkpoints.
    if key in now:  # A field of this model family.
      saved.setdefault(key, value)
  for key in STATE_FREE_MODEL_FIELDS:  # Same state with either value.
    saved.pop(key, None)
    now.pop(key, None)
  diff = [f"model.{k}={saved.get(k)!r} (now {now.get(k)!r})"
          for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)]
  # Frozen layers have no optimizer state: the state's tree depends on them.
  frozen, frozen_now = meta.get("frozen", []), sorted(frozen_layers(config))
  if frozen != frozen_now:
    diff.append(f"finetune.freeze={tuple(frozen)!r} (now "
                f"{tuple(frozen_now)!r})")
  if diff:
    raise ConfigError(f"the workdir holds a checkpoint of a different model: "
                      f"{', '.join(diff)}; use a new --workdir or the same "
                      f"model config and finetune.freeze")


def frozen_layers(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The layers config.finetune.freeze names (none without that block)."""
  f = config.get("finetune")
  return tuple(f.freeze) if f else ()
