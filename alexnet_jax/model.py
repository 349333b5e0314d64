"""AlexNet (Krizhevsky, Sutskever, Hinton, NIPS 2012) as a Flax NNX module.

By default this is the paper's network (../shared/REFERENCE.md): 227x227 input,
two towers with grouped conv2/conv4/conv5, local response normalization after
the ReLU of layers 1 and 2 (computed inside each tower), overlapping 3/2 max
pooling, dropout 0.5 on fc6/fc7, weights ~ N(0, 0.01^2) and bias 1 in conv2,
conv4, conv5, fc6 and fc7.

Variants are constructor arguments, not subclasses: `norm` (lrn, batchnorm,
none, or `scale`: each LRN replaced by a fixed scale, the ablation's
control), the LRN constants (`lrn`), `pool` and `pool_mode` (floor or
cuda-convnet's ceil sizes), `towers`, `activation`, `width`, `channels`,
`num_classes`, the conv1 geometry and the input size, and a `preset` that
picks the channel layout (paper, paper_1gpu, torchvision, cifar, cifar_1gpu).

Input size and conv1 padding: an 11x11 stride-4 convolution gives 55x55 on a
227x227 input without padding (Caffe's choice, our default). On 224x224 inputs
the paper's 55 needs three extra rows and columns; with `conv1_padding=-1`
("auto", the default) the input is padded on the bottom/right only, as
cuda-convnet did by rounding up, i.e. padding (0, 3). torchvision instead pads
2 on every side (its preset does that).

The layers are the rows of layers.LAYERS, and one forward body runs them:
as one program (any mesh, XLA places it) or, on a mesh with two devices on
`model`, one tower per device (sharding.run_towers), where the table's
gather/reduce rows are the paper's four exchanges and everything else is
local.

The operations (LRN, max-pooling, grouped convolution, bias add) come from
ops.py, in the formulation `ops` names: `fast` (written for XLA:CPU: a
grouped convolution as one convolution per tower, LRN without `pow` and with
a hand-written derivative, max-pooling without select-and-scatter), `plain`
(the textbook ones), or `auto` (fast on CPU, plain elsewhere).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from alexnet_jax import layers
from alexnet_jax import ops as ops_lib
from alexnet_jax import precision
from alexnet_jax import sharding

INIT_STD = 0.01

ACTIVATIONS = {"relu": jax.nn.relu, "tanh": jnp.tanh}
# Re-exported: the choices and presets live with the layer table.
NORMS, INITS, POOLS = layers.NORMS, layers.INITS, layers.POOLS
PRESETS = layers.PRESETS


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
               lrn=None, norm_scale=(), pool_mode: str | None = None,
               channels=None, fc_features=None,
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

    lrn: the LRN constants (layers.resolve_lrn: a setting, k, n, alpha,
    beta, average, pixel_scale; None: the paper's). norm_scale: with
    norm='scale', the fixed factor of each LRN layer (() : LRN's constant
    k^-beta for each).

    dtype is the compute dtype (bfloat16 or float16 for mixed precision,
    precision.py); parameters
    are always float32 and the logits are returned as float32. ops picks
    the formulation of the operations (ops.py): auto, fast or plain.
    """
    # Long (84 lines, a third of them the docstring): the argument checks,
    # then the layers built from the table in the order their parameters
    # have always been drawn (which keeps every seed's initialization).
    g = layers.resolve(preset=preset, norm=norm, pool=pool, towers=towers,
                       width=width, image_size=image_size,
                       conv1_kernel=conv1_kernel, conv1_stride=conv1_stride,
                       conv1_padding=conv1_padding, pool_mode=pool_mode,
                       channels=channels, fc_features=fc_features)
    self.lrn = layers.resolve_lrn(lrn)
    n_norm = len(layers.BATCHNORMS)  # The layers with `norm`.
    norm_scale = tuple(norm_scale or ())
    if norm_scale and (len(norm_scale) != n_norm or min(norm_scale) <= 0):
      raise ValueError(f"model.norm_scale needs {n_norm} positive factors "
                       f"(one per LRN layer), got {norm_scale}")
    self.norm_scale = norm_scale or (self.lrn.constant,) * n_norm
    if activation not in ACTIVATIONS:
      raise ValueError(f"model.activation must be one of "
                       f"{tuple(ACTIVATIONS)}, got {activation!r}")
    if init not in INITS:
      raise ValueError(f"model.init must be one of {INITS}, got {init!r}")
    if fc8_init_std is not None and not fc8_init_std >= 0:
      raise ValueError(f"model.fc8_init_std must be >= 0, got "
                       f"{fc8_init_std!r}")
    if not 0 <= dropout_rate < 1:
      raise ValueError(f"model.dropout_rate must be in [0, 1), "
                       f"got {dropout_rate!r}")
    ops_lib.select(ops)  # A ValueError names the choices.

    self.geometry = g
    self.num_classes, self.norm, self.towers = num_classes, g.norm, g.towers
    self.image_size, self.dtype, self.ops = g.image_size, dtype, ops
    self.pool_window, self.pool_stride = g.pool_window, g.pool_stride
    self.pool_pads = g.pool_pads
    self.stage_sizes = list(g.stage_sizes)
    self.act = ACTIVATIONS[activation]
    bn = g.norm == "batchnorm"

    def init_args(spec, fan_in):
      if init == "he":
        return dict(bias_init=0.0, init_std=(2.0 / fan_in) ** 0.5)
      if init == "caffe":  # bvlc_alexnet's train_val.prototxt.
        hidden_fc = spec.kind == "fc" and not spec.reduce  # fc6, fc7.
        return dict(bias_init=0.1 if spec.bias_one else 0.0,
                    init_std=0.005 if hidden_fc else INIT_STD)
      return dict(bias_init=1.0 if spec.bias_one else 0.0, init_std=INIT_STD)

    # Parameters are drawn in table order (conv1..fc8), as they always were.
    cin = 3
    for spec, cout in zip(layers.LAYERS, g.channels):  # conv1..conv5.
      k, groups = g.kernel_size(spec), g.groups(spec)
      first = spec is layers.LAYERS[0]
      setattr(self, spec.name, Conv(
          cin, cout, k, stride=g.conv1_stride if first else 1,
          padding=g.conv1_pads if first else ((k // 2, k // 2),) * 2,
          groups=groups, use_bias=not (bn and spec.norm), ops=ops, rngs=rngs,
          **init_args(spec, k * k * cin // groups)))
      cin = cout
    if bn:
      for name, bn_name in layers.BATCHNORMS.items():
        features = getattr(self, name).kernel.shape[-1]
        setattr(self, bn_name, nnx.BatchNorm(features, momentum=0.9,
                                             rngs=rngs))
    fcs = [s for s in layers.LAYERS if s.kind == "fc"]
    fin = g.flat_features
    for spec, fout in zip(fcs, g.fc_features + (num_classes,)):
      args = init_args(spec, fin)
      if spec.reduce and fc8_init_std is not None:
        args["init_std"] = fc8_init_std
      setattr(self, spec.name, Linear(fin, fout, ops=ops, rngs=rngs, **args))
      fin = fout
    for dropout_name in layers.DROPOUTS.values():
      setattr(self, dropout_name, nnx.Dropout(dropout_rate, rngs=rngs))

  def __call__(self, x: jax.Array, *, return_activations: bool = False):
    """Logits (float32) for NHWC images; optionally every stage's output.

    On a mesh whose `model` axis has two devices (sharding.tower_split), the
    two-tower network runs one tower per device, as the paper did on two
    GPUs; the result is the same as on one device.
    """
    # BatchNorm's statistics are not written for the per-device program:
    # on model=2 that variant runs as one program placed by XLA.
    if (self.geometry.tower_split
        and sharding.tower_split(batch=x.shape[0])):
      logits, acts = sharding.run_towers(self, x, return_activations)
    else:
      logits, acts = self.forward(x, OneProgram(self))
    return (logits, acts) if return_activations else logits

  def forward(self, x: jax.Array, hooks):
    """The network, layer by layer from layers.LAYERS: (logits, acts).

    `hooks` applies a layer's weights (`apply`), exchanges the towers'
    outputs (`gather`: the identity in one program), draws dropout and
    BatchNorm, and says how many towers the local channels hold
    (`lrn_groups`). Named scopes mark each layer in the compiled HLO (see
    comm.py).
    """
    o = ops_lib.select(self.ops)
    acts, logits = {}, None
    y = x.astype(self.dtype)
    c = self.lrn
    norms, pools = list(layers.BATCHNORMS), list(layers.POOLED)
    for spec in layers.LAYERS:
      with jax.named_scope(spec.name):
        if spec.gather:
          y = hooks.gather(y)
        if spec.kind == "fc":
          y = y.reshape(y.shape[0], -1)
        y = hooks.apply(spec, y)
        if spec.reduce:  # fc8: the logits.
          logits = acts[spec.name] = y.astype(jnp.float32)
          continue
        if spec.norm and self.norm == "batchnorm":
          # conv -> BN -> ReLU; BN's statistics in float32, its output back
          # in the compute dtype (else the layers after it run in float32).
          y = self.act(hooks.batchnorm(spec, y).astype(y.dtype))
        else:
          y = self.act(y)  # conv -> ReLU -> LRN (paper) | conv -> ReLU.
          if spec.norm and self.norm == "lrn":
            # LRN's input, for its statistic (lrn_stats.py; unused: free).
            acts[spec.name + "_lrn_input"] = y
            y = precision.norm_in_float32(functools.partial(
                o.local_response_norm, groups=hooks.lrn_groups, n=c.n,
                k=c.k, alpha=c.alpha, beta=c.beta), y)
          elif spec.norm and self.norm == "scale":
            y = y * jnp.asarray(self.norm_scale[norms.index(spec.name)],
                                y.dtype)
        if spec.dropout:
          y = hooks.dropout(spec, y)
        acts[spec.name] = y
        if spec.pool:
          pad = self.pool_pads[pools.index(spec.name)]
          if pad:  # Ceil-mode sizes: the bottom/right rows never win.
            y = jnp.pad(y, ((0, 0), (0, pad), (0, pad), (0, 0)),
                        constant_values=-jnp.inf)
          y = acts[layers.POOLED[spec.name]] = o.max_pool(
              y, self.pool_window, self.pool_stride)
    return logits, acts


class OneProgram:
  """The forward's hooks as one program: the model's own layers, no
  exchanges (XLA's partitioner places it on a mesh)."""

  def __init__(self, model: AlexNet):
    self.model, self.lrn_groups = model, model.towers

  def apply(self, spec, y):
    return getattr(self.model, spec.name)(y)

  def gather(self, y):
    return y

  def dropout(self, spec, y):
    return getattr(self.model, layers.DROPOUTS[spec.name])(y)

  def batchnorm(self, spec, y):
    return getattr(self.model, layers.BATCHNORMS[spec.name])(y)


def input_size(model_config) -> int:
  """The input image size a model config asks for (its preset's if None)."""
  if model_config.image_size is not None:
    return model_config.image_size
  if model_config.preset not in PRESETS:
    raise ValueError(f"model.preset must be one of {sorted(PRESETS)}, "
                     f"got {model_config.preset!r}")
  return PRESETS[model_config.preset].image_size


def from_config(model_config, *, dtype=jnp.float32,
                rngs: nnx.Rngs) -> AlexNet:
  """Builds the model from the `model` block of a config, computing in
  `dtype` (precision.choose(config).compute_dtype in training)."""
  c = model_config
  if c.get("family", "alexnet") != "alexnet":
    # cuda-convnet's CIFAR-10 nets (and the error naming the families).
    from alexnet_jax import cuda_convnet  # pylint: disable=import-outside-toplevel
    return cuda_convnet.from_config(c, dtype=dtype, rngs=rngs)
  return AlexNet(
      preset=c.preset, num_classes=c.num_classes, norm=c.norm, pool=c.pool,
      towers=c.towers, activation=c.activation, width=c.width,
      dropout_rate=c.dropout_rate, image_size=c.image_size,
      conv1_kernel=c.conv1_kernel, conv1_stride=c.conv1_stride,
      conv1_padding=c.conv1_padding, init=c.init,
      fc8_init_std=c.fc8_init_std, ops=c.get("ops", "auto"),
      lrn=_plain(c.get("lrn")), norm_scale=tuple(c.get("norm_scale", ())),
      pool_mode=c.get("pool_mode"), channels=c.get("channels"),
      fc_features=c.get("fc_features"),
      dtype=dtype, rngs=rngs)


def _plain(block):
  """A config block as a dict (None stays None)."""
  return block.to_dict() if hasattr(block, "to_dict") else block


def count_params(model: nnx.Module, wrt=nnx.Param) -> int:
  """Number of parameters `wrt` selects (all: BatchNorm statistics are not
  parameters; finetune.trainable: those training changes)."""
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, wrt)))
