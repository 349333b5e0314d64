"""cuda-convnet's CIFAR-10 nets (11pct, 13pct, 18pct, 80sec) as a model
family of the project: `model.family=cuda_convnet`, `model.net=<name>`.

One module runs any table of cc_layers.NETS: the weight layers are its
attributes (named as in the cfg files: conv1, local3, fc10, ...), and one
forward body applies the rows in order, each followed by its neuron. The
model has the interface train.py, checkpoint.py and predict.py use of
AlexNet: `model(x)` returns float32 logits, `image_size`, nnx.Param
parameters, train()/eval() (no dropout: nothing changes).

Variants are config fields: `activation` (relu | tanh: every relu neuron of
the table becomes a * tanh(b * x), with (a, b) = `tanh`), `norm` (rnorm:
the table's normalisation rows | none: without them) and `num_classes`
(the outputs of the last fc layer).

The tanh neuron: cuda-convnet writes it `neuron=tanh[a,b]`, f(x) = a *
tanh(b * x) (layer.py's neuron parsers; src/neuron.cu reads both
parameters); it has no default a and b, so `tanh` defaults to (1, 1), plain
tanh; LeCun's (1.7159, 2/3) is one override away.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from alexnet_jax import cc_layers
from alexnet_jax import cc_ops
from alexnet_jax import model as model_lib
from alexnet_jax import ops as ops_lib
from alexnet_jax import precision

FAMILIES = ("alexnet", "cuda_convnet")
ACTIVATIONS = ("relu", "tanh")


class Local(nnx.Module):
  """A locally connected layer: kernel (out_h, out_w, k, k, C_in, C_out)
  drawn from N(0, init_std^2), one bias per output position and filter."""

  def __init__(self, shaped: cc_layers.Shaped, *, rngs: nnx.Rngs):
    r, (ho, wo, cout) = shaped.row, shaped.out_shape
    shape = (ho, wo, r.size, r.size, shaped.in_shape[-1], cout)
    self.kernel = nnx.Param(r.init_w * jax.random.normal(rngs.params(),
                                                         shape))
    self.bias = nnx.Param(jnp.zeros((ho, wo, cout), jnp.float32))
    self.stride, self.padding = r.stride, shaped.pads

  def __call__(self, x: jax.Array) -> jax.Array:
    y = cc_ops.locally_connected(x, self.kernel[...].astype(x.dtype),
                                 stride=self.stride, pads=self.padding)
    return y + self.bias[...].astype(y.dtype)


def _weight_layer(s: cc_layers.Shaped, ops: str, rngs: nnx.Rngs):
  """The module of a conv, local or fc row (model.py's Conv and Linear)."""
  r = s.row
  if r.kind == "conv":
    return model_lib.Conv(s.in_shape[-1], s.out_shape[-1], r.size,
                          stride=r.stride, padding=s.pads,
                          init_std=r.init_w, ops=ops, rngs=rngs)
  if r.kind == "local":
    return Local(s, rngs=rngs)
  return model_lib.Linear(math.prod(s.in_shape), s.out_shape[-1],
                          init_std=r.init_w, ops=ops, rngs=rngs)


class CudaConvnet(nnx.Module):
  """One of cuda-convnet's example nets (cc_layers.NETS)."""

  def __init__(self, *, net: str = "11pct", num_classes: int = 10,
               image_size: int | None = None, activation: str = "relu",
               tanh: tuple[float, float] = (1.0, 1.0), norm: str = "rnorm",
               ops: str = "auto", dtype=jnp.float32, rngs: nnx.Rngs):
    """Builds the net; image_size None: the size the net trained on.

    ValueError names an unknown net, norm, activation or ops, or an image
    too small for the net. dtype is the compute dtype (parameters stay
    float32; logits are float32).
    """
    if net in cc_layers.INPUT_SIZES and image_size is None:
      image_size = cc_layers.INPUT_SIZES[net]
    self.shaped = cc_layers.resolve(net, image_size, num_classes, norm)
    if activation not in ACTIVATIONS:
      raise ValueError(f"model.activation must be one of {ACTIVATIONS}, "
                       f"got {activation!r}")
    if len(tuple(tanh)) != 2:
      raise ValueError(f"model.tanh must be (a, b) of a * tanh(b * x), got "
                       f"{tanh!r}")
    ops_lib.select(ops)  # A ValueError names the choices.
    self.net, self.num_classes, self.image_size = net, num_classes, image_size
    self.activation, self.tanh = activation, tuple(float(v) for v in tanh)
    self.ops, self.dtype = ops, dtype
    for s in self.shaped:  # Parameters drawn in table order.
      if s.row.kind in cc_layers.WEIGHTED:
        setattr(self, s.row.name, _weight_layer(s, ops, rngs))

  def neuron(self, name: str, y: jax.Array) -> jax.Array:
    """A row's neuron; relu becomes a * tanh(b * x) when activation=tanh."""
    if name == "ident":
      return y
    if self.activation == "tanh":
      a, b = self.tanh
      return a * jnp.tanh(b * y)
    return jax.nn.relu(y)

  def lrn_layers(self) -> list[tuple]:
    """The cmrnorm rows for their statistic (lrn_stats.py): (name, its
    input's key in the activations: the row before it, size, 1 group,
    k = 1, scale / size, power), as cc_ops.cross_map_norm computes them."""
    return [(s.row.name, prev.row.name, s.row.size, 1, 1.0,
             s.row.scale / s.row.size, s.row.power)
            for prev, s in zip(self.shaped, self.shaped[1:])
            if s.row.kind == "cmrnorm"]

  def __call__(self, x: jax.Array, *, return_activations: bool = False):
    """Logits (float32) for NHWC images; optionally every row's output,
    by row name."""
    acts, y = {}, x.astype(self.dtype)
    for s in self.shaped:
      r = s.row
      with jax.named_scope(r.name):
        if r.kind == "fc":
          y = getattr(self, r.name)(y.reshape(y.shape[0], -1))
        elif r.kind in cc_layers.WEIGHTED:
          y = getattr(self, r.name)(y)
        elif r.kind == "pool" and r.pool == "max":
          y = cc_ops.max_pool(y, r.size, r.stride, s.pads, self.ops)
        elif r.kind == "pool":
          y = cc_ops.avg_pool(y, r.size, r.stride, s.pads)
        elif r.kind == "rnorm":  # Sums of squares: float32 under float16.
          y = precision.norm_in_float32(lambda v, r=r: cc_ops.response_norm(
              v, r.size, r.scale, r.power), y)
        else:  # cmrnorm
          y = precision.norm_in_float32(lambda v, r=r: cc_ops.cross_map_norm(
              v, r.size, r.scale, r.power, ops=self.ops), y)
        y = acts[r.name] = self.neuron(r.neuron, y)
    logits = y.astype(jnp.float32)
    return (logits, acts) if return_activations else logits


def from_config(model_config, *, dtype=jnp.float32,
                rngs: nnx.Rngs) -> nnx.Module:
  """The model of a `model` block whose family is not AlexNet (model.py's
  from_config hands such blocks here)."""
  c = model_config
  family = c.get("family", "alexnet")
  if family != "cuda_convnet":
    raise ValueError(f"model.family must be one of {FAMILIES}, got "
                     f"{family!r}")
  return CudaConvnet(
      net=c.net, num_classes=c.num_classes, image_size=c.image_size,
      activation=c.activation, tanh=tuple(c.tanh), norm=c.norm,
      ops=c.get("ops", "auto"),
      dtype=dtype, rngs=rngs)
