"""AlexNet (Krizhevsky, Sutskever, Hinton, NIPS 2012) as a Flax NNX module.

By default this is the paper's network (../shared/REFERENCE.md): 227x227 input,
two towers with grouped conv2/conv4/conv5, local response normalization after
the ReLU of layers 1 and 2 (computed inside each tower), overlapping 3/2 max
pooling, dropout 0.5 on fc6/fc7, weights ~ N(0, 0.01^2) and bias 1 in conv2,
conv4, conv5, fc6 and fc7.

Variants are constructor arguments, not subclasses: `norm`, `pool`, `towers`,
`activation`, `width`, `num_classes`, the conv1 geometry and the input size,
and a `preset` that picks the channel layout (paper, torchvision, cifar).

Input size and conv1 padding: an 11x11 stride-4 convolution gives 55x55 on a
227x227 input without padding (Caffe's choice, our default). On 224x224 inputs
the paper's 55 needs three extra rows and columns; with `conv1_padding=-1`
("auto", the default) the input is padded on the bottom/right only, as
cuda-convnet did by rounding up, i.e. padding (0, 3). torchvision instead pads
2 on every side (its preset does that).

Speed: a grouped convolution is written as one convolution per tower on the
channel halves, concatenated, instead of `feature_group_count`; XLA:CPU runs the
latter 4-7x slower, and the per-tower form is also what the two-device layout
needs. LRN avoids XLA:CPU's slow `pow` and has a hand-written derivative;
max-pooling avoids its slow select-and-scatter (see each function).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax
from jax.sharding import PartitionSpec as P

from alexnet_jax import sharding

# The paper's constants: b = a / (k + alpha * sum_{window of n} a^2) ** beta.
LRN_K = 2.0
LRN_N = 5
LRN_ALPHA = 1e-4
LRN_BETA = 0.75

INIT_STD = 0.01

NORMS = ("lrn", "batchnorm", "none")
INITS = ("paper", "caffe", "he")
POOLS = {"overlap": (3, 2), "nonoverlap": (2, 2)}
ACTIVATIONS = {"relu": jax.nn.relu, "tanh": jnp.tanh}


@dataclasses.dataclass(frozen=True)
class Preset:
  """A channel layout and conv1 geometry; everything else is a switch."""
  channels: tuple[int, int, int, int, int]
  fc_features: tuple[int, int]
  conv1_kernel: int
  conv1_stride: int
  conv1_padding: int  # -1: pad bottom/right just enough (cuda-convnet's ceil).
  image_size: int
  towers: int
  norm: str


PRESETS = {
    # The paper's table: 96-256-384-384-256, two towers.
    "paper": Preset((96, 256, 384, 384, 256), (4096, 4096), 11, 4, -1, 227,
                    towers=2, norm="lrn"),
    # torchvision.models.alexnet ("one weird trick"): one tower, no LRN.
    "torchvision": Preset((64, 192, 384, 256, 256), (4096, 4096), 11, 4, 2,
                          224, towers=1, norm="none"),
    # The paper's network on 32x32 images: 5x5 stride-1 conv1 with 'same'
    # padding, so the 3/2 pools give 32 -> 15 -> 7 -> 3.
    "cifar": Preset((96, 256, 384, 384, 256), (4096, 4096), 5, 1, 2, 32,
                    towers=2, norm="lrn"),
}

# Which conv layers see only their own tower's channels (paper, figure 2).
GROUPED = {"conv1": False, "conv2": True, "conv3": False, "conv4": True,
           "conv5": True}
# Layers whose bias starts at 1 (paper, section 5); the others start at 0.
BIAS_ONE = ("conv2", "conv4", "conv5", "fc6", "fc7")


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


class Conv(nnx.Module):
  """A convolution layer, optionally grouped over towers."""

  def __init__(self, in_features: int, out_features: int, kernel_size: int, *,
               stride: int = 1, padding=((0, 0), (0, 0)), groups: int = 1,
               bias_init: float = 0.0, use_bias: bool = True,
               init_std: float = INIT_STD, rngs: nnx.Rngs):
    if in_features % groups or out_features % groups:
      raise ValueError(f"conv {in_features}->{out_features} does not split "
                       f"into {groups} towers")
    shape = (kernel_size, kernel_size, in_features // groups, out_features)
    self.kernel = nnx.Param(init_std * jax.random.normal(rngs.params(), shape))
    self.bias = (nnx.Param(jnp.full((out_features,), bias_init, jnp.float32))
                 if use_bias else None)
    self.stride, self.padding, self.groups = stride, padding, groups

  def __call__(self, x: jax.Array) -> jax.Array:
    y = conv(x, self.kernel[...].astype(x.dtype), stride=self.stride,
             padding=self.padding, groups=self.groups)
    if self.bias is not None:
      y = add_bias(y, self.bias[...].astype(y.dtype))
    return y


class Linear(nnx.Module):
  """A fully connected layer with the paper's initialization."""

  def __init__(self, in_features: int, out_features: int, *,
               bias_init: float = 0.0, init_std: float = INIT_STD,
               rngs: nnx.Rngs):
    self.kernel = nnx.Param(
        init_std * jax.random.normal(rngs.params(), (in_features, out_features)))
    self.bias = nnx.Param(jnp.full((out_features,), bias_init, jnp.float32))

  def __call__(self, x: jax.Array) -> jax.Array:
    return add_bias(x @ self.kernel[...].astype(x.dtype),
                    self.bias[...].astype(x.dtype))


def _scaled(n: int, width: float, towers: int) -> int:
  """n * width rounded to a positive multiple of the tower count."""
  return max(1, round(n * width / towers)) * towers


def conv1_pads(image_size: int, kernel: int, stride: int, padding: int):
  """The conv1 padding per spatial axis; -1 pads bottom/right only, so that
  the output size is the ceiling of (image_size - kernel) / stride + 1."""
  if padding >= 0:
    return ((padding, padding),) * 2
  extra = -(image_size - kernel) % stride
  return ((0, extra),) * 2


class AlexNet(nnx.Module):
  """AlexNet; the defaults are the paper's network for 1000 classes."""

  def __init__(self, *, preset: str = "paper", num_classes: int = 1000,
               norm: str | None = None, pool: str = "overlap",
               towers: int | None = None, activation: str = "relu",
               width: float = 1.0, dropout_rate: float = 0.5,
               image_size: int | None = None, conv1_kernel: int | None = None,
               conv1_stride: int | None = None,
               conv1_padding: int | None = None, init: str = "paper",
               fc8_init_std: float | None = None,
               dtype=jnp.float32, rngs: nnx.Rngs):
    """Builds the network. Arguments left at None take the preset's value.

    init: 'paper' draws every weight from N(0, 0.01^2) with bias 1 in conv2,
    conv4, conv5, fc6 and fc7; 'caffe' (bvlc_alexnet) the same but
    N(0, 0.005^2) in fc6/fc7 and bias 0.1 instead of 1; 'he' draws from
    N(0, 2 / fan_in) with zero biases. The fixed stds shrink the
    input-dependent signal by about 0.01 * sqrt(fan_in / 2) per layer
    (README, training notes), so the logits start almost independent of the
    image; 'he' keeps the scale at any width. fc8_init_std, when given,
    replaces the init's std for fc8 alone (small: logits start near 0).

    dtype is the compute dtype (bfloat16 for mixed precision); parameters
    are always float32 and the logits are returned as float32.
    """
    if preset not in PRESETS:
      raise ValueError(f"model.preset must be one of {sorted(PRESETS)}, "
                       f"got {preset!r}")
    p = PRESETS[preset]
    norm = p.norm if norm is None else norm
    towers = p.towers if towers is None else towers
    image_size = p.image_size if image_size is None else image_size
    k1 = p.conv1_kernel if conv1_kernel is None else conv1_kernel
    s1 = p.conv1_stride if conv1_stride is None else conv1_stride
    pad1 = p.conv1_padding if conv1_padding is None else conv1_padding
    if norm not in NORMS:
      raise ValueError(f"model.norm must be one of {NORMS}, got {norm!r}")
    if pool not in POOLS:
      raise ValueError(f"model.pool must be one of {tuple(POOLS)}, "
                       f"got {pool!r}")
    if activation not in ACTIVATIONS:
      raise ValueError(f"model.activation must be one of "
                       f"{tuple(ACTIVATIONS)}, got {activation!r}")
    if towers not in (1, 2):
      raise ValueError(f"model.towers must be 1 or 2, got {towers!r}")
    if init not in INITS:
      raise ValueError(f"model.init must be one of {INITS}, got {init!r}")
    if fc8_init_std is not None and not fc8_init_std >= 0:
      raise ValueError(f"model.fc8_init_std must be >= 0, got "
                       f"{fc8_init_std!r}")
    if not width > 0:
      raise ValueError(f"model.width must be positive, got {width!r}")
    if not 0 <= dropout_rate < 1:
      raise ValueError(f"model.dropout_rate must be in [0, 1), "
                       f"got {dropout_rate!r}")

    self.num_classes, self.norm, self.towers = num_classes, norm, towers
    self.image_size, self.dtype = image_size, dtype
    self.pool_window, self.pool_stride = POOLS[pool]
    self.act = ACTIVATIONS[activation]
    chans = [_scaled(c, width, towers) for c in p.channels]
    fcs = [_scaled(f, width, towers) for f in p.fc_features]

    # Spatial sizes, so fc6 knows its input width and bad geometry fails here.
    pad = conv1_pads(image_size, k1, s1, pad1)
    size = (image_size + sum(pad[0]) - k1) // s1 + 1
    self.stage_sizes = [size]
    for _ in range(3):  # pools after conv1, conv2 and conv5; 'same' convs.
      size = (size - self.pool_window) // self.pool_stride + 1
      self.stage_sizes.append(size)
    if min(self.stage_sizes) < 1:
      raise ValueError(f"image_size {image_size} is too small for conv1 "
                       f"{k1}x{k1}/{s1} and {pool} pooling "
                       f"(spatial sizes {self.stage_sizes})")

    bn = norm == "batchnorm"

    def init_args(name, fan_in):
      if init == "he":
        return dict(bias_init=0.0, init_std=(2.0 / fan_in) ** 0.5)
      if init == "caffe":  # bvlc_alexnet's train_val.prototxt.
        return dict(bias_init=0.1 if name in BIAS_ONE else 0.0,
                    init_std=0.005 if name in ("fc6", "fc7") else INIT_STD)
      return dict(bias_init=1.0 if name in BIAS_ONE else 0.0,
                  init_std=INIT_STD)

    def conv_layer(name, cin, cout, k, stride=1, padding=None):
      padding = padding or ((k // 2, k // 2),) * 2
      groups = towers if GROUPED[name] else 1
      return Conv(cin, cout, k, stride=stride, padding=padding, groups=groups,
                  use_bias=not (bn and name in ("conv1", "conv2")), rngs=rngs,
                  **init_args(name, k * k * cin // groups))

    self.conv1 = conv_layer("conv1", 3, chans[0], k1, s1, pad)
    self.conv2 = conv_layer("conv2", chans[0], chans[1], 5)
    self.conv3 = conv_layer("conv3", chans[1], chans[2], 3)
    self.conv4 = conv_layer("conv4", chans[2], chans[3], 3)
    self.conv5 = conv_layer("conv5", chans[3], chans[4], 3)
    if bn:
      self.bn1 = nnx.BatchNorm(chans[0], momentum=0.9, rngs=rngs)
      self.bn2 = nnx.BatchNorm(chans[1], momentum=0.9, rngs=rngs)
    flat = self.stage_sizes[-1] ** 2 * chans[4]
    self.fc6 = Linear(flat, fcs[0], rngs=rngs, **init_args("fc6", flat))
    self.fc7 = Linear(fcs[0], fcs[1], rngs=rngs, **init_args("fc7", fcs[0]))
    fc8_args = init_args("fc8", fcs[1])
    if fc8_init_std is not None:
      fc8_args["init_std"] = fc8_init_std
    self.fc8 = Linear(fcs[1], num_classes, rngs=rngs, **fc8_args)
    self.dropout6 = nnx.Dropout(dropout_rate, rngs=rngs)
    self.dropout7 = nnx.Dropout(dropout_rate, rngs=rngs)

  def _normalized(self, x, layer: int):
    """conv -> ReLU -> LRN (paper) | conv -> BN -> ReLU | conv -> ReLU."""
    if self.norm == "batchnorm":
      return self.act(getattr(self, f"bn{layer}")(x))
    x = self.act(x)
    if self.norm == "lrn":
      x = local_response_norm(x, groups=self.towers)
    return x

  def __call__(self, x: jax.Array, *, return_activations: bool = False):
    """Logits (float32) for NHWC images; optionally every stage's output.

    On a mesh whose `model` axis has two devices (sharding.tower_split), the
    two-tower network runs one tower per device, as the paper did on two
    GPUs; the result is the same as on one device.
    """
    # BatchNorm's statistics are not written for the per-device program:
    # on model=2 that variant runs as one program placed by XLA.
    if (self.towers == 2 and self.norm != "batchnorm"
        and sharding.tower_split(batch=x.shape[0])):
      logits, acts = self._two_tower_forward(x, return_activations)
    else:
      logits, acts = self._forward(x)
    return (logits, acts) if return_activations else logits

  def _forward(self, x: jax.Array):
    """The network as one program; on a mesh, XLA's partitioner places it.

    Named scopes mark each layer in the compiled HLO (see comm.py).
    """
    acts = {}
    pool = lambda y: max_pool(y, self.pool_window, self.pool_stride)
    x = x.astype(self.dtype)
    with jax.named_scope("conv1"):
      x = acts["conv1"] = self._normalized(self.conv1(x), 1)
      x = acts["pool1"] = pool(x)
    with jax.named_scope("conv2"):
      x = acts["conv2"] = self._normalized(self.conv2(x), 2)
      x = acts["pool2"] = pool(x)
    with jax.named_scope("conv3"):
      x = acts["conv3"] = self.act(self.conv3(x))
    with jax.named_scope("conv4"):
      x = acts["conv4"] = self.act(self.conv4(x))
    with jax.named_scope("conv5"):
      x = acts["conv5"] = self.act(self.conv5(x))
      x = acts["pool5"] = pool(x)
    with jax.named_scope("fc6"):
      x = x.reshape(x.shape[0], -1)
      x = acts["fc6"] = self.dropout6(self.act(self.fc6(x)))
    with jax.named_scope("fc7"):
      x = acts["fc7"] = self.dropout7(self.act(self.fc7(x)))
    with jax.named_scope("fc8"):
      logits = acts["fc8"] = self.fc8(x).astype(jnp.float32)
    return logits, acts

  def _two_tower_forward(self, x: jax.Array, return_activations: bool):
    """One tower per device of the `model` axis (paper, figure 2).

    Runs under jax.shard_map, manual over `data` and `model`: each device
    holds its rows of the batch and its tower's parameters (placed by
    sharding.param_spec), so conv1, the grouped conv2/conv4/conv5, the
    per-tower LRN and the pooling touch only local data. The only exchanges
    are the paper's four, at the layers that read both towers: all-gathers
    of both towers' outputs (channel or unit axis) into conv3, fc6 and fc7,
    and for fc8, which holds the rows for its own fc7 units, an all-reduce
    of the two partial logits (sharding.py says why). Every device then
    holds the full logits, so the loss needs no further exchange. Plain
    GSPMD annotations would instead move data inside the grouped layers.

    Dropout masks are drawn outside the shard_map for the full (batch,
    units) shape, exactly as the one-device forward draws them, and each
    device applies its block: identical masks on every mesh.
    """
    dt = self.dtype
    names = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")
    params = {n: (getattr(self, n).kernel[...], getattr(self, n).bias[...])
              for n in names}
    param_specs = {n: tuple(sharding.param_spec(n, leaf, p.shape)
                            for leaf, p in zip(("kernel", "bias"), params[n]))
                   for n in names}
    batch = P(sharding.DATA)
    tower = P(sharding.DATA, None, None, sharding.MODEL)
    units = P(sharding.DATA, sharding.MODEL)
    masks, keep = {}, {}
    for name, drop in (("fc6", self.dropout6), ("fc7", self.dropout7)):
      if not (drop.deterministic or drop.rate == 0):
        shape = (x.shape[0], getattr(self, name).kernel.shape[-1])
        masks[name] = drop(jnp.ones(shape, dt)) != 0
        keep[name] = 1.0 - drop.rate

    def forward(x, params, masks):
      acts = {}
      pool = lambda y: max_pool(y, self.pool_window, self.pool_stride)

      def layer(name, y):
        kernel, bias = params[name]
        if kernel.ndim == 2:
          y = y @ kernel.astype(dt)
        else:  # This tower's channels only: one group here.
          m = getattr(self, name)
          y = conv(y, kernel.astype(dt), stride=m.stride, padding=m.padding)
        return add_bias(y, bias.astype(dt))

      def normalized(y):  # The local channels are one tower: groups=1.
        y = self.act(y)
        return local_response_norm(y) if self.norm == "lrn" else y

      def exchange(y):  # Both towers' halves, on every device.
        return lax.all_gather(y, sharding.MODEL, axis=y.ndim - 1, tiled=True)

      def dropout(name, y):
        if name not in masks:
          return y
        return lax.select(masks[name], y / keep[name], jnp.zeros_like(y))

      y = x.astype(dt)
      with jax.named_scope("conv1"):
        y = acts["conv1"] = normalized(layer("conv1", y))
        y = acts["pool1"] = pool(y)
      with jax.named_scope("conv2"):
        y = acts["conv2"] = normalized(layer("conv2", y))
        y = acts["pool2"] = pool(y)
      with jax.named_scope("conv3"):
        y = acts["conv3"] = self.act(layer("conv3", exchange(y)))
      with jax.named_scope("conv4"):
        y = acts["conv4"] = self.act(layer("conv4", y))
      with jax.named_scope("conv5"):
        y = acts["conv5"] = self.act(layer("conv5", y))
        y = acts["pool5"] = pool(y)
      with jax.named_scope("fc6"):
        y = exchange(y)
        y = y.reshape(y.shape[0], -1)
        y = acts["fc6"] = dropout("fc6", self.act(layer("fc6", y)))
      with jax.named_scope("fc7"):
        y = acts["fc7"] = dropout("fc7", self.act(layer("fc7", exchange(y))))
      with jax.named_scope("fc8"):  # Partial logits of this tower, summed.
        kernel, bias = params["fc8"]
        y = lax.psum(y @ kernel.astype(dt), sharding.MODEL)
        logits = acts["fc8"] = add_bias(y, bias.astype(dt)).astype(jnp.float32)
      return logits, (acts if return_activations else {})

    act_specs = {k: tower for k in ("conv1", "pool1", "conv2", "pool2",
                                    "conv3", "conv4", "conv5", "pool5")}
    act_specs.update(fc6=units, fc7=units, fc8=batch)
    run = jax.shard_map(
        forward, in_specs=(batch, param_specs, {k: units for k in masks}),
        out_specs=(batch, act_specs if return_activations else {}),
        axis_names={sharding.DATA, sharding.MODEL})
    return run(x, params, masks)


def input_size(model_config) -> int:
  """The input image size a model config asks for (its preset's if None)."""
  if model_config.image_size is not None:
    return model_config.image_size
  if model_config.preset not in PRESETS:
    raise ValueError(f"model.preset must be one of {sorted(PRESETS)}, "
                     f"got {model_config.preset!r}")
  return PRESETS[model_config.preset].image_size


def from_config(model_config, *, half_precision: bool = False,
                rngs: nnx.Rngs) -> AlexNet:
  """Builds the model from the `model` block of a config."""
  c = model_config
  return AlexNet(
      preset=c.preset, num_classes=c.num_classes, norm=c.norm, pool=c.pool,
      towers=c.towers, activation=c.activation, width=c.width,
      dropout_rate=c.dropout_rate, image_size=c.image_size,
      conv1_kernel=c.conv1_kernel, conv1_stride=c.conv1_stride,
      conv1_padding=c.conv1_padding, init=c.init,
      fc8_init_std=c.fc8_init_std,
      dtype=jnp.bfloat16 if half_precision else jnp.float32, rngs=rngs)


def count_params(model: nnx.Module) -> int:
  """Number of trainable parameters (BatchNorm statistics excluded)."""
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
