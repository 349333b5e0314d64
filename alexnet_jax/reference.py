"""Plain formulations of the model's fast paths: the oracles they are tested
against (tests/test_fast_paths.py) and the "before" of
experiments/fast_paths.py.

Each has the signature of the function in model.py it stands in for.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from alexnet_jax import model as model_lib

DN = ("NHWC", "HWIO", "NHWC")


def local_response_norm(x: jax.Array, *, groups: int = 1,
                        n: int = model_lib.LRN_N, k: float = model_lib.LRN_K,
                        alpha: float = model_lib.LRN_ALPHA,
                        beta: float = model_lib.LRN_BETA) -> jax.Array:
  """The paper's formula: shifted slices of x^2 inside each tower, pow."""
  *lead, c = x.shape
  xg = x.reshape(*lead, groups, c // groups)
  r = n // 2
  sq = jnp.pad(xg * xg, ((0, 0),) * (xg.ndim - 1) + ((r, n - 1 - r),))
  s = sum(sq[..., i:i + c // groups] for i in range(n))
  return (xg / (k + alpha * s) ** beta).reshape(x.shape)


def max_pool(x: jax.Array, window: int, stride: int) -> jax.Array:
  """`lax.reduce_window` max (XLA's select-and-scatter gradient)."""
  return lax.reduce_window(x, -jnp.inf, lax.max,
                           (1, window, window, 1), (1, stride, stride, 1),
                           "VALID")


def conv(x: jax.Array, kernel: jax.Array, *, stride: int = 1,
         padding=((0, 0), (0, 0)), groups: int = 1) -> jax.Array:
  """Grouped convolution with `feature_group_count`."""
  return lax.conv_general_dilated(x, kernel, (stride, stride), padding,
                                  dimension_numbers=DN,
                                  feature_group_count=groups)


def add_bias(y: jax.Array, bias: jax.Array) -> jax.Array:
  """y + bias; autodiff sums the gradient over (N, H, W)."""
  return y + bias
