"""The model's operations: LRN, max-pooling, grouped convolution, bias add.

Each comes in a plain formulation (the textbook one: `pow`, `reduce_window`,
`feature_group_count`, `y + b`) and a fast one written for XLA:CPU, where
the plain ones measured several times slower (experiments/fast_paths.py;
README, Speed). `model.ops` picks the set: `fast`, `plain`, or `auto`:
fast on CPU; on GPU and TPU, where nobody has measured the fast ones yet,
the plain LRN, pooling and bias add with the per-tower convolution
(ACCELERATOR), because XLA's SPMD partitioner all-gathers the batch of a
`feature_group_count` convolution on a data-sharded mesh (conv2, conv4 and
conv5, forward and backward; tests/test_sharding.py), which would make data
parallelism copy activations between devices. The plain set is also the
fast one's oracle (tests/test_fast_paths.py).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

# The paper's constants: b = a / (k + alpha * sum_{window of n} a^2) ** beta.
LRN_K = 2.0
LRN_N = 5
LRN_ALPHA = 1e-4
LRN_BETA = 0.75

OPS_MODES = ("auto", "fast", "plain")


class Ops(NamedTuple):
  """One formulation of each operation (same signatures in both sets)."""
  local_response_norm: Callable
  max_pool: Callable
  conv: Callable
  add_bias: Callable


def select(mode: str, backend: str | None = None) -> Ops:
  """The set for model.ops; `auto` decides by the backend (default: JAX's)."""
  if mode not in OPS_MODES:
    raise ValueError(f"model.ops must be one of {OPS_MODES}, got {mode!r}")
  if mode == "auto":
    return FAST if (backend or jax.default_backend()) == "cpu" else (
        ACCELERATOR)
  return FAST if mode == "fast" else PLAIN


# ---------------------------------------------------------------- fast


def local_response_norm(x: jax.Array, *, groups: int = 1, n: int = LRN_N,
                        k: float = LRN_K, alpha: float = LRN_ALPHA,
                        beta: float = LRN_BETA) -> jax.Array:
  """The paper's LRN over the channel axis of an NHWC array.

  The window holds n channels centred on each channel, cut at the edges of
  each of `groups` equal channel blocks (towers), so no tower sees another's
  channels. alpha multiplies the plain sum (PyTorch divides it by n).
  """
  *lead, c = x.shape
  if c % groups:
    raise ValueError(f"{c} channels do not split into {groups} towers")
  r = n // 2

  def window_sum(v):  # S(v): the sum over each channel's window.
    vg = v.reshape(*lead, groups, c // groups)
    # A literal 0.0 lets JAX see a window sum (transposable under jit).
    s = lax.reduce_window(vg, 0.0, lax.add,
                          (1,) * (vg.ndim - 1) + (n,), (1,) * vg.ndim,
                          ((0, 0),) * (vg.ndim - 1) + ((r, n - 1 - r),))
    return s.reshape(v.shape)

  def denominator(v):  # t = k + alpha S(v^2) and p = t^-beta.
    t = k + alpha * window_sum(v * v)
    if beta == 0.75:
      # rsqrt(t) * sqrt(rsqrt(t)): pow is exp(log(t) * -beta), which made
      # LRN cost more than conv1 on XLA:CPU (and again in its derivative).
      q = lax.rsqrt(t)
      return t, q * jnp.sqrt(q)
    return t, t ** -beta

  # A hand-written derivative reuses t and p instead of differentiating the
  # power: d(x p) = p dx - 2 alpha beta (x p / t) S(x dx). It is linear in
  # dx, so JAX transposes it for the backward pass (S is symmetric).
  @jax.custom_jvp
  def lrn(v):
    return v * denominator(v)[1]

  @lrn.defjvp
  def lrn_jvp(primals, tangents):
    (v,), (dv,) = primals, tangents
    t, p = denominator(v)
    dy = p * dv - (2 * alpha * beta) * (v * p / t) * window_sum(v * dv)
    return v * p, dy

  return lrn(x)


def max_pool(x: jax.Array, window: int, stride: int) -> jax.Array:
  """VALID max pooling over H and W of an NHWC array.

  The gradient goes to the first maximum of each window in row-major order,
  as with `lax.reduce_window` (XLA's select-and-scatter); where windows
  overlap, an input's gradients from several windows may be summed in
  another order (float rounding). Reverse mode only (a custom VJP).
  """
  # Long (84 lines, most of them comments): the forward, its residual and
  # the phase-split backward share the shapes worked out here.
  n, h, w, c = x.shape
  ho = (h - window) // stride + 1
  wo = (w - window) // stride + 1
  if ho < 1 or wo < 1:
    return lax.reduce_window(x, -jnp.inf, lax.max,
                             (1, window, window, 1), (1, stride, stride, 1),
                             "VALID")
  s = stride
  every = lambda k, size: slice(k, k + s * (size - 1) + 1, s)
  index = jnp.int16 if h * window < 2 ** 15 else jnp.int32

  def pick_first_max(a, b):  # Larger value; on a tie, the lower index.
    (av, ai), (bv, bi) = a, b
    first = (av > bv) | ((av == bv) & (ai < bi)) | (
        (av != av) & ((bv == bv) | (ai < bi)))  # NaN wins, as in max.
    return lax.select(first, av, bv), lax.select(first, ai, bi)

  def forward(v):
    """The pooled values, and which tap (i * window + j) holds each first max.

    Columns first: the max over each window's columns (strided slices, one
    fused loop) and its column j; then the rows: a reduce-window over
    (value, r * window + j) pairs, r the input row. XLA duplicates cheap
    elementwise producers into every consumer: an all-slices max was
    recomputed, taps and all, inside the transposes that feed the next
    layer's weight gradient, and the tap index inside each phase of the
    backward pass; a reduce-window's outputs are written once.
    """
    cols = [v[:, :, every(j, wo)] for j in range(window)]
    z, col = cols[0], jnp.zeros(cols[0].shape, index)
    for j, t in enumerate(cols[1:], 1):
      col = jnp.where(t > z, index(j), col)  # Ties keep the earlier column.
      z = jnp.maximum(z, t)
    tap = lax.broadcasted_iota(index, z.shape, 1) * window + col
    y, tap = lax.reduce_window(
        (z, tap), (jnp.array(-jnp.inf, v.dtype), index(jnp.iinfo(index).max)),
        pick_first_max, (1, window, 1, 1), (1, s, 1, 1), "VALID")
    first_row = lax.broadcasted_iota(index, y.shape, 1) * (s * window)
    return y, tap - first_row

  @jax.custom_vjp
  def pool(v):
    return forward(v)[0]

  def pool_fwd(v):
    return forward(v)  # The tap index (2 bytes per output) as residual.

  # Rows and columns split into `stride` phases: x[s*m + r] is phase r, row
  # m. Tap (i, j) of every window lands in one phase at a fixed shift, so
  # each phase's gradient is a sum of shifted, masked copies of g at the
  # output size, and the phases interleave into dx with one reshape.
  # XLA:CPU's select-and-scatter, and the strided pads that autodiff of
  # strided slices gives, were several times slower.
  hm = max(-(-h // s), (window - 1) // s + ho)
  wm = max(-(-w // s), (window - 1) // s + wo)

  def pool_bwd(arg, g):
    zero = jnp.zeros((), g.dtype)
    phases = []
    for r in range(s):
      row = []
      for q in range(s):
        acc = jnp.zeros((n, hm, wm, c), g.dtype)
        for i in range(r, window, s):
          for j in range(q, window, s):
            picked = jnp.where(arg == i * window + j, g, zero)
            acc = acc + jnp.pad(picked, (
                (0, 0), (i // s, hm - ho - i // s),
                (j // s, wm - wo - j // s), (0, 0)))
        row.append(acc)
      phases.append(jnp.stack(row, axis=3))
    dx = jnp.stack(phases, axis=2).reshape(n, hm * s, wm * s, c)
    return (dx[:, :h, :w],)

  pool.defvjp(pool_fwd, pool_bwd)
  return pool(x)


def channel_sum(g: jax.Array) -> jax.Array:
  """Sums an (..., W, C) array over every axis but the last (>= float32).

  As a sum of rows of the (-1, W*C) view, then over W: XLA:CPU turns a
  plain sum over (N, H, W) into a slow tree of reduce-windows (54 ms for
  conv1's 64x55x55x96 gradient, against 2 ms this way).
  """
  g = g.astype(jnp.promote_types(g.dtype, jnp.float32))
  if g.ndim <= 2:
    return g.reshape(-1, g.shape[-1]).sum(0)
  w, c = g.shape[-2:]
  return g.reshape(-1, w * c).sum(0).reshape(w, c).sum(0)


def _varying_axes(x: jax.Array) -> frozenset:
  """The shard_map axes over which x varies (none outside shard_map)."""
  return jax.typeof(x).manual_axis_type.varying


def add_bias(y: jax.Array, bias: jax.Array) -> jax.Array:
  """y + bias over the last axis (same dtype); d bias is a `channel_sum`."""
  if y.dtype != bias.dtype:
    raise TypeError(f"add_bias: {y.dtype} activations, {bias.dtype} bias")
  # Under shard_map a bias replicated over `data` meets rows that vary over
  # it: mark it varying, as `y + bias` does implicitly, so that autodiff
  # sums its gradient over the axis (a custom VJP must return it invariant).
  axes = _varying_axes(y) - _varying_axes(bias)
  if axes:
    bias = lax.pcast(bias, tuple(sorted(axes)), to="varying")
  return _add_bias(y, bias)


@jax.custom_vjp
def _add_bias(y: jax.Array, bias: jax.Array) -> jax.Array:
  return y + bias


_add_bias.defvjp(lambda y, bias: (y + bias, None),
                 lambda _, g: (g, channel_sum(g).astype(g.dtype)))


def conv(x: jax.Array, kernel: jax.Array, *, stride: int = 1,
         padding=((0, 0), (0, 0)), groups: int = 1) -> jax.Array:
  """NHWC x HWIO convolution; `groups` > 1 runs one convolution per tower.

  The kernel has the grouped layout (kh, kw, C_in / groups, C_out), as for
  `feature_group_count`: output block g sees only input block g. Splitting
  by hand is the same arithmetic and several times faster on XLA:CPU.
  """
  def one(xi, ki):
    return lax.conv_general_dilated(
        xi, ki, (stride, stride), padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
  if groups == 1:
    return one(x, kernel)
  xs = jnp.split(x, groups, axis=-1)
  ks = jnp.split(kernel, groups, axis=-1)
  return jnp.concatenate([one(xi, ki) for xi, ki in zip(xs, ks)], axis=-1)


# ---------------------------------------------------------------- plain


def channel_window_sum(v: jax.Array, n: int, groups: int = 1) -> jax.Array:
  """S(v): the sum over each channel's window of n (centred, cut at the
  edges) inside each of `groups` equal channel blocks, as shifted slices."""
  *lead, c = v.shape
  vg = v.reshape(*lead, groups, c // groups)
  r = n // 2
  sq = jnp.pad(vg, ((0, 0),) * (vg.ndim - 1) + ((r, n - 1 - r),))
  return sum(sq[..., i:i + c // groups] for i in range(n)).reshape(v.shape)


def plain_local_response_norm(x: jax.Array, *, groups: int = 1,
                              n: int = LRN_N, k: float = LRN_K,
                              alpha: float = LRN_ALPHA,
                              beta: float = LRN_BETA) -> jax.Array:
  """The paper's formula: shifted slices of x^2 inside each tower, pow."""
  return x / (k + alpha * channel_window_sum(x * x, n, groups)) ** beta


def plain_max_pool(x: jax.Array, window: int, stride: int) -> jax.Array:
  """`lax.reduce_window` max (XLA's select-and-scatter gradient)."""
  return lax.reduce_window(x, -jnp.inf, lax.max,
                           (1, window, window, 1), (1, stride, stride, 1),
                           "VALID")


def plain_conv(x: jax.Array, kernel: jax.Array, *, stride: int = 1,
               padding=((0, 0), (0, 0)), groups: int = 1) -> jax.Array:
  """Grouped convolution with `feature_group_count`."""
  return lax.conv_general_dilated(x, kernel, (stride, stride), padding,
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                  feature_group_count=groups)


def plain_add_bias(y: jax.Array, bias: jax.Array) -> jax.Array:
  """y + bias; autodiff sums the gradient over (N, H, W)."""
  return y + bias


FAST = Ops(local_response_norm, max_pool, conv, add_bias)
PLAIN = Ops(plain_local_response_norm, plain_max_pool, plain_conv,
            plain_add_bias)
# `auto` on GPU/TPU: plain, but grouped layers as one convolution per tower,
# which the partitioner keeps local on a data-sharded mesh (module doc).
ACCELERATOR = PLAIN._replace(conv=conv)
