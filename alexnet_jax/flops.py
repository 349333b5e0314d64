"""What a step computes and what the machine can: FLOPs counted from a
jaxpr, and a float32 matmul's rate as the peak the benchmark compares with.
"""

from __future__ import annotations

import math
import time

import jax
import jax.extend  # noqa: F401  (jax.extend.core below)
import jax.numpy as jnp


def _sub_jaxprs(params):
  for v in params.values():
    for item in (v if isinstance(v, (tuple, list)) else (v,)):
      if isinstance(item, jax.extend.core.ClosedJaxpr):
        yield item.jaxpr
      elif isinstance(item, jax.extend.core.Jaxpr):
        yield item


def count_flops(jaxpr) -> int:
  """2 x multiply-adds of every convolution and dot_general in a jaxpr."""
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "conv_general_dilated":
      rhs = eqn.invars[1].aval.shape
      out = eqn.outvars[0].aval.shape
      rhs_out = rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
      # Each output element takes prod(kernel) / C_out multiply-adds, with
      # or without feature or batch groups.
      total += 2 * math.prod(out) * (math.prod(rhs) // rhs_out)
    elif name == "dot_general":
      (lhs_contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      k = math.prod(lhs[d] for d in lhs_contract)
      total += 2 * math.prod(eqn.outvars[0].aval.shape) * k
    for sub in _sub_jaxprs(eqn.params):
      total += count_flops(sub)
  return total


def matmul_peak(n: int = 4096, reps: int = 5, dtype=jnp.float32) -> float:
  """Best GFLOP/s of an n x n jnp.dot in `dtype` on the default device (at
  JAX's default precision: TF32 for float32 on recent NVIDIA GPUs)."""
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  b = jax.random.normal(jax.random.key(1), (n, n), dtype)
  dot = jax.jit(jnp.dot)
  dot(a, b).block_until_ready()
  best = math.inf
  for _ in range(reps):
    t = time.perf_counter()
    dot(a, b).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * n ** 3 / best / 1e9
