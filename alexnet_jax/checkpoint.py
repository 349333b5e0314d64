"""Orbax checkpoints: the latest few for resuming, the best one by eval.

A checkpoint holds the model state (parameters, BatchNorm statistics, the
dropout RNG), the optimizer state and a JSON `meta` item: the step, the
learning-rate schedule's host state (plateau), the best eval error so far and
the model config the state belongs to. The data iterators are functions of
the step, so the step is their position.

Saves are asynchronous and atomic: orbax writes into a temporary directory
and renames it when complete, so a crash or SIGKILL during a save leaves the
previous checkpoint as it was.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp


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

  def __init__(self, workdir: str, *, max_to_keep: int):
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

  def wait(self):
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self):
    self.latest.close()
    self.best.close()
