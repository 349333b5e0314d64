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

from alexnet_jax import layers
from alexnet_jax import ops

SUFFIX = "_lrn_input"


def layers_of(model) -> list[tuple]:
  """(name, input key in `acts`, n, groups, k, alpha, beta) of each
  cross-channel LRN of the model: a net's own list (`model.lrn_layers()`,
  cuda-convnet's cmrnorm rows) or AlexNet's (model.lrn's constants, inside
  each tower, on the inputs it stores under <layer>_lrn_input)."""
  if hasattr(model, "lrn_layers"):
    return model.lrn_layers()
  if getattr(model, "norm", None) != "lrn":
    return []
  lrn = model.lrn
  return [(name, name + SUFFIX, lrn.n, model.towers, lrn.k, lrn.alpha,
           lrn.beta) for name in layers.BATCHNORMS]


def constant(model_config) -> float:
  """c = k^-beta, LRN as a constant scale: model.lrn's (AlexNet); 1 for
  cuda-convnet's nets (k = 1)."""
  if model_config.get("family", "alexnet") != "alexnet":
    return 1.0
  block = model_config.get("lrn")
  return layers.resolve_lrn(block.to_dict() if block else None).constant


def sums(model, acts: dict, mask: jax.Array) -> dict:
  """Masked sums of d = f / c - 1, d^2, |log(f / c)| and the element count
  for each LRN input in `acts` ({} for a model without LRN). d is small
  where LRN is near-constant, so its float32 sums keep the spread."""
  out = {}
  for name, key, n, groups, k, alpha, beta in layers_of(model):
    if key not in acts:
      continue
    a = acts[key].astype(jnp.float32)
    s = ops.channel_window_sum(a * a, n, groups)
    logrel = -beta * jnp.log1p(alpha * s / k)  # log(f / c).
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

