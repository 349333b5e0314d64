"""Exact evaluation: every example of a split counted once (padded batches,
masked rows, sums inside the jitted step, one division at the end), and
the rows of each batch a process loads.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from alexnet_jax import input_pipeline
from alexnet_jax import lrn_stats
from alexnet_jax import sharding


def data_slice(run) -> dict[str, slice]:
  """The rows of each global batch that `run` (a train.Run) loads on this
  process, from the mesh (when the `model` axis spans processes, a tower
  pair loads the same rows)."""
  return {"rows": sharding.local_batch_rows(run.mesh, run.config.batch_size)}


def evaluate(run, stop=None, split: str | None = None, prefix: str = "eval"
             ) -> dict[str, float] | None:
  """Top-1/top-5 error and loss of `run` (a train.Run) over every example of
  `split` (default data.eval_split) exactly once, keys prefix_*; with LRN,
  its statistic (lrn_stats.py). None when `stop` (a progress.StopRequest)
  asked to stop during the evaluation: the loop then saves and exits
  without waiting for the rest."""
  _, batches = input_pipeline.eval_iterator(
      run.config, image_size=run.image_size, split=split, **data_slice(run))
  totals = None
  for batch in input_pipeline.prefetch_to_device(
      batches, sharding.batch_sharding(run.mesh)):
    if stop is not None and stop.requested():
      return None
    out = run.eval_step(run.model_state, batch)
    # At most two batches in flight, so that a stop is seen within a batch.
    previous, totals = totals, (out if totals is None else
                                jax.tree.map(jnp.add, totals, out))
    jax.block_until_ready(previous)
  totals = {k: float(v) for k, v in jax.device_get(totals).items()}
  n = totals["count"]
  metrics = {f"{prefix}_loss": totals["loss"] / n,
             f"{prefix}_top1_error": 1.0 - totals["top1"] / n,
             f"{prefix}_top5_error": 1.0 - totals["top5"] / n,
             f"{prefix}_examples": n}
  if batches.num_skipped:
    metrics[f"{prefix}_skipped_images"] = batches.num_skipped
  if prefix == "eval" and any(k.startswith("lrn/") for k in totals):
    # The LRN statistic goes with the eval split's rows.
    metrics.update(lrn_stats.finish(totals,
                                    lrn_stats.constant(run.config.model)))
  return metrics
