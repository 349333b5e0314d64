"""How far LRN is from a constant scale: a statistic logged at every
evaluation of a run with LRN.

LRN multiplies each activation a by f = (k + alpha * S)^-beta, S the sum of
a^2 over its channel window (inside its tower). Where alpha * S << k, f is
the constant c = k^-beta everywhere and LRN is a fixed rescaling, not a
normalisation (with the paper's constants on unit-scale activations:
README, training notes). Per LRN layer, over every position, channel and
evaluation image:

  mean     the mean of f (what a fixed scale would have to be to match it)
  spread   std(f) / mean(f): 0 for a constant scale
  logdev   mean |log(f / c)| = beta * mean log(1 + alpha S / k): 0 when LRN
           is the constant k^-beta; log 2 would halve activations on average

Sums are accumulated by the eval step (masked rows left out) and turned into
these numbers by `finish`; keys "lrn/<layer>/<name>" go to metrics.jsonl and
TensorBoard.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from alexnet_jax import ops

SUFFIX = "_lrn_input"


def sums(model, acts: dict, mask: jax.Array) -> dict:
  """Masked sums of d = f / c - 1, d^2, |log(f / c)| and the element count
  for each LRN input in `acts` ({} for a model without LRN). d is small
  where LRN is near-constant, so its float32 sums keep the spread."""
  out = {}
  lrn = getattr(model, "lrn", None)
  if lrn is None:
    return out
  for key, a in acts.items():
    if not key.endswith(SUFFIX):
      continue
    name = key[:-len(SUFFIX)]
    a = a.astype(jnp.float32)
    s = ops.channel_window_sum(a * a, lrn.n, model.towers)
    logrel = -lrn.beta * jnp.log1p(lrn.alpha * s / lrn.k)  # log(f / c).
    d = jnp.expm1(logrel)
    m = mask.astype(jnp.float32).reshape((-1,) + (1,) * (a.ndim - 1))
    per_row = a[0].size
    out[f"lrn/{name}/d"] = jnp.sum(d * m)
    out[f"lrn/{name}/d2"] = jnp.sum(d * d * m)
    out[f"lrn/{name}/absLog"] = jnp.sum(jnp.abs(logrel) * m)
    out[f"lrn/{name}/n"] = jnp.sum(m) * per_row
  return out


def finish(totals: dict, constant: float) -> dict:
  """{"lrn/<layer>/mean"|"spread"|"logdev": float} from summed `sums`."""
  out = {}
  for key in totals:
    if not (key.startswith("lrn/") and key.endswith("/n")):
      continue
    base = key[:-2]
    n = max(float(totals[key]), 1.0)
    md = float(totals[base + "/d"]) / n
    var = max(float(totals[base + "/d2"]) / n - md * md, 0.0)
    out[base + "/mean"] = constant * (1 + md)
    out[base + "/spread"] = var ** 0.5 / (1 + md)
    out[base + "/logdev"] = float(totals[base + "/absLog"]) / n
  return out

