"""The operations cuda-convnet's nets add to ops.py's: a locally connected
(unshared) layer, ceil-mode max and average pooling, within-channel and
cross-map response normalisation with cuda-convnet's constants.

All take NHWC arrays. Padding is given as ((top, bottom), (left, right)),
from cc_layers.window_out: cuda-convnet's output sides round up, so the last
window may hang over the bottom/right edge. Cross-map normalisation is
ops.py's LRN (its fast or plain form, as `model.ops` picks) with cuda-
convnet's constants, so the paper's and cuda-convnet's LRN share one code
path.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from alexnet_jax import ops as ops_lib


def _taps(x: jax.Array, kernel_size: int, stride: int, out: tuple[int, int]):
  """x[:, i + stride * h, j + stride * w] for every tap (i, j) of the
  window: kernel_size^2 arrays of shape (N, out_h, out_w, C)."""
  ho, wo = out
  return [x[:, i:i + stride * (ho - 1) + 1:stride,
            j:j + stride * (wo - 1) + 1:stride]
          for i in range(kernel_size) for j in range(kernel_size)]


def locally_connected(x: jax.Array, kernel: jax.Array, *, stride: int = 1,
                      pads=((0, 0), (0, 0))) -> jax.Array:
  """An unshared convolution: output position (h, w) has its own filters.

  kernel: (out_h, out_w, k, k, C_in, C_out); out[n, h, w, o] = sum over i,
  j, c of x_padded[n, stride h + i, stride w + j, c] kernel[h, w, i, j, c,
  o] (a correlation, as cuda-convnet's filterActs). cuda-convnet stores the
  same numbers as a (modules * C_in * k * k, C_out) matrix with rows ordered
  (module = h * out_w + w, c, i, j).
  """
  ho, wo, k, _, c, o = kernel.shape
  xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))
  patches = jnp.stack(_taps(xp, k, stride, (ho, wo)), axis=3)
  return jnp.einsum("nhwpc,hwpco->nhwo", patches,
                    kernel.reshape(ho, wo, k * k, c, o))


def max_pool(x: jax.Array, window: int, stride: int, pads,
             ops: str = "auto") -> jax.Array:
  """Max pooling whose windows may hang over the bottom/right edge (they
  cover only the pixels inside): ops.py's max pooling of x padded with
  -inf. Every window starts inside the image (stride <= window), so no
  output sees only padding."""
  xp = jnp.pad(x, ((0, 0), *pads, (0, 0)), constant_values=-jnp.inf)
  return ops_lib.select(ops).max_pool(xp, window, stride)


def _inside_counts(size: int, window: int, stride: int, pad) -> np.ndarray:
  """How many input pixels each output's window covers along one axis."""
  out = (size + sum(pad) - window) // stride + 1
  start = np.arange(out) * stride - pad[0]
  return np.minimum(start + window, size) - np.maximum(start, 0)


def avg_pool(x: jax.Array, window: int, stride: int, pads) -> jax.Array:
  """Average pooling that divides by the number of pixels inside the image
  (cuda-convnet's AvgPooler with kLocalPool's regionSize), not by window^2:
  a window hanging over the edge averages the pixels it covers."""
  _, h, w, _ = x.shape
  # A literal 0.0 lets JAX see a window sum it can differentiate.
  sums = lax.reduce_window(x, 0.0, lax.add,
                           (1, window, window, 1), (1, stride, stride, 1),
                           ((0, 0), *pads, (0, 0)))
  rows = _inside_counts(h, window, stride, pads[0])
  cols = _inside_counts(w, window, stride, pads[1])
  inverse = 1.0 / np.outer(rows, cols)
  return sums * jnp.asarray(inverse[None, :, :, None], x.dtype)


def response_norm(x: jax.Array, size: int, scale: float, power: float,
                  k: float = 1.0) -> jax.Array:
  """cuda-convnet's within-channel `rnorm`: each pixel divided by (k +
  scale / size^2 * sum of squares over the size x size window from
  -size // 2, cut at the image edges)^power, per channel.

  `scale` is the layer-params value; cuda-convnet divides it by size^2
  (layer.py, NormLayerParser) and its kernels add 1 (kCNorm_*): k=1.
  """
  r = size // 2
  window = lax.reduce_window(x * x, 0.0, lax.add,
                             (1, size, size, 1), (1, 1, 1, 1),
                             ((0, 0), (r, size - 1 - r), (r, size - 1 - r),
                              (0, 0)))
  return x * (k + (scale / size ** 2) * window) ** -power


def cross_map_norm(x: jax.Array, size: int, scale: float, power: float,
                   k: float = 1.0, ops: str = "auto") -> jax.Array:
  """cuda-convnet's `cmrnorm`: x / (k + scale / size * sum of x^2 over the
  channels [c - size // 2, c - size // 2 + size - 1], cut at the
  edges)^power; scale divided by size (layer.py), k = 1 (kFCNorm). This is
  ops.py's LRN with alpha = scale / size: the same window (n // 2 before,
  n - 1 - n // 2 after)."""
  return ops_lib.select(ops).local_response_norm(
      x, groups=1, n=size, k=k, alpha=scale / size, beta=power)
