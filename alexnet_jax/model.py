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

The operations (LRN, max-pooling, grouped convolution, bias add) come from
ops.py, in the formulation `ops` names: `fast` (written for XLA:CPU: a
grouped convolution as one convolution per tower, LRN without `pow` and with
a hand-written derivative, max-pooling without select-and-scatter), `plain`
(the textbook ones), or `auto` (fast on CPU, plain elsewhere).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax
from jax.sharding import PartitionSpec as P

from alexnet_jax import ops as ops_lib
from alexnet_jax import sharding

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


class Conv(nnx.Module):
  """A convolution layer, optionally grouped over towers."""

  def __init__(self, in_features: int, out_features: int, kernel_size: int, *,
               stride: int = 1, padding=((0, 0), (0, 0)), groups: int = 1,
               bias_init: float = 0.0, use_bias: bool = True,
               init_std: float = INIT_STD, ops: str = "auto", rngs: nnx.Rngs):
    if in_features % groups or out_features % groups:
      raise ValueError(f"conv {in_features}->{out_features} does not split "
                       f"into {groups} towers")
    shape = (kernel_size, kernel_size, in_features // groups, out_features)
    self.kernel = nnx.Param(init_std * jax.random.normal(rngs.params(), shape))
    self.bias = (nnx.Param(jnp.full((out_features,), bias_init, jnp.float32))
                 if use_bias else None)
    self.stride, self.padding, self.groups = stride, padding, groups
    self.ops = ops

  def __call__(self, x: jax.Array) -> jax.Array:
    o = ops_lib.select(self.ops)
    y = o.conv(x, self.kernel[...].astype(x.dtype), stride=self.stride,
               padding=self.padding, groups=self.groups)
    if self.bias is not None:
      y = o.add_bias(y, self.bias[...].astype(y.dtype))
    return y


class Linear(nnx.Module):
  """A fully connected layer with the paper's initialization."""

  def __init__(self, in_features: int, out_features: int, *,
               bias_init: float = 0.0, init_std: float = INIT_STD,
               ops: str = "auto", rngs: nnx.Rngs):
    self.kernel = nnx.Param(
        init_std * jax.random.normal(rngs.params(), (in_features, out_features)))
    self.bias = nnx.Param(jnp.full((out_features,), bias_init, jnp.float32))
    self.ops = ops

  def __call__(self, x: jax.Array) -> jax.Array:
    return ops_lib.select(self.ops).add_bias(
        x @ self.kernel[...].astype(x.dtype), self.bias[...].astype(x.dtype))


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
               fc8_init_std: float | None = None, ops: str = "auto",
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
    are always float32 and the logits are returned as float32. ops picks
    the formulation of the operations (ops.py): auto, fast or plain.
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
    ops_lib.select(ops)  # A ValueError names the choices.
    if not 0 <= dropout_rate < 1:
      raise ValueError(f"model.dropout_rate must be in [0, 1), "
                       f"got {dropout_rate!r}")

    self.num_classes, self.norm, self.towers = num_classes, norm, towers
    self.image_size, self.dtype, self.ops = image_size, dtype, ops
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
                  use_bias=not (bn and name in ("conv1", "conv2")), ops=ops,
                  rngs=rngs, **init_args(name, k * k * cin // groups))

    self.conv1 = conv_layer("conv1", 3, chans[0], k1, s1, pad)
    self.conv2 = conv_layer("conv2", chans[0], chans[1], 5)
    self.conv3 = conv_layer("conv3", chans[1], chans[2], 3)
    self.conv4 = conv_layer("conv4", chans[2], chans[3], 3)
    self.conv5 = conv_layer("conv5", chans[3], chans[4], 3)
    if bn:
      self.bn1 = nnx.BatchNorm(chans[0], momentum=0.9, rngs=rngs)
      self.bn2 = nnx.BatchNorm(chans[1], momentum=0.9, rngs=rngs)
    flat = self.stage_sizes[-1] ** 2 * chans[4]
    self.fc6 = Linear(flat, fcs[0], ops=ops, rngs=rngs,
                      **init_args("fc6", flat))
    self.fc7 = Linear(fcs[0], fcs[1], ops=ops, rngs=rngs,
                      **init_args("fc7", fcs[0]))
    fc8_args = init_args("fc8", fcs[1])
    if fc8_init_std is not None:
      fc8_args["init_std"] = fc8_init_std
    self.fc8 = Linear(fcs[1], num_classes, ops=ops, rngs=rngs, **fc8_args)
    self.dropout6 = nnx.Dropout(dropout_rate, rngs=rngs)
    self.dropout7 = nnx.Dropout(dropout_rate, rngs=rngs)

  def _normalized(self, x, layer: int):
    """conv -> ReLU -> LRN (paper) | conv -> BN -> ReLU | conv -> ReLU."""
    if self.norm == "batchnorm":
      return self.act(getattr(self, f"bn{layer}")(x))
    x = self.act(x)
    if self.norm == "lrn":
      x = ops_lib.select(self.ops).local_response_norm(x, groups=self.towers)
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
    max_pool = ops_lib.select(self.ops).max_pool
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

    o = ops_lib.select(self.ops)

    def forward(x, params, masks):
      acts = {}
      pool = lambda y: o.max_pool(y, self.pool_window, self.pool_stride)

      def layer(name, y):
        kernel, bias = params[name]
        if kernel.ndim == 2:
          y = y @ kernel.astype(dt)
        else:  # This tower's channels only: one group here.
          m = getattr(self, name)
          y = o.conv(y, kernel.astype(dt), stride=m.stride,
                     padding=m.padding)
        return o.add_bias(y, bias.astype(dt))

      def normalized(y):  # The local channels are one tower: groups=1.
        y = self.act(y)
        return o.local_response_norm(y) if self.norm == "lrn" else y

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
        logits = acts["fc8"] = o.add_bias(y, bias.astype(dt)).astype(
            jnp.float32)
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
      fc8_init_std=c.fc8_init_std, ops=c.get("ops", "auto"),
      dtype=jnp.bfloat16 if half_precision else jnp.float32, rngs=rngs)


def count_params(model: nnx.Module) -> int:
  """Number of trainable parameters (BatchNorm statistics excluded)."""
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
