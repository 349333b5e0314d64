"""cuda-convnet's CIFAR-10 nets as tables, and their resolved shapes.

Alex Krizhevsky's cuda-convnet (v1, code.google.com/p/cuda-convnet, 2011-12)
shipped these nets in example-layers/: layers-<net>.cfg (the layers, their
initW and neurons) and layer-params-<net>.cfg (learning rates, weight decay
`wc`, rnorm constants). `NETS` transcribes the layers files row by row
(section names as layer names), with the rnorm constants of the params
files; the rates and `wc` live in configs/cuda_convnet.py (optim block).
The paper's CIFAR-10 statements (section 3.3: a four-layer net, 13% test
error without normalisation and 11% with) are the 13pct / 11pct nets.

A row's kinds and their semantics in cuda-convnet (layer.py, src/layer.cu,
src/cudaconv2/*.cu), as cuda_convnet.py runs them:

- conv: filters `features`, filterSize `size`, `padding` zeros each side,
  shared biases; output side 1 + ceil((2 padding + in - size) / stride).
- local: the same geometry, unshared: one filter bank and one bias per
  output position (LocalUnsharedLayerParser).
- fc: `features` outputs of the flattened input; features=0 marks the
  logits layer (num_classes outputs; fc10 in every net). cuda-convnet
  flattens (C, H, W), this project (H, W, C): a fixed permutation of the
  weight rows, the same function and the same initial distribution.
- pool: max or avg over size x size windows at `stride`, out = ceil((in -
  size) / stride) + 1 (PoolLayerParser, start=0): the last window may hang
  over the bottom/right edge and covers only the pixels inside; avg divides
  by their count (kLocalPool's regionSize).
- rnorm: within-channel response normalisation over a size x size window
  (from -size/2, cut at the edges): x / (1 + scale/size^2 * sum x^2)^pow.
- cmrnorm: across channels, window [c - size/2, c - size/2 + size - 1]
  cut at the edges: x / (1 + scale/size * sum x^2)^pow. (v1 has no minDiv:
  the 1 is written into the kernels kCNorm_* and kFCNorm.)

Every weight layer draws N(0, init_w^2) weights and zero biases (initB=0).
`neuron` is applied after the layer (cfg `neuron=`; ident when absent).
"""

from __future__ import annotations

import dataclasses
import math

KINDS = ("conv", "local", "fc", "pool", "rnorm", "cmrnorm")
WEIGHTED = ("conv", "local", "fc")
NORMS = ("rnorm", "none")  # model.norm: the table's rnorm rows | none.


@dataclasses.dataclass(frozen=True)
class Row:
  """One section of a layers-*.cfg file (see the module docstring).

  size: filterSize (conv, local), sizeX (pool), size (rnorm, cmrnorm).
  features: filters (conv, local) or outputs (fc; 0 = num_classes).
  init_w: initW, the weights' std. neuron: relu or ident. pool: max | avg.
  scale, power: the rnorm's scale and pow as written in layer-params (the
  division by size or size^2 happens where it is applied).
  """
  name: str
  kind: str
  size: int = 0
  features: int = 0
  stride: int = 1
  padding: int = 0
  init_w: float = 0.01
  neuron: str = "ident"
  pool: str = ""
  scale: float = 0.0
  power: float = 0.75


def _conv(name, filters, init_w, neuron="relu"):
  """A 5x5 'same' convolution as every net here writes it (padding 2)."""
  return Row(name, "conv", 5, filters, padding=2, init_w=init_w,
             neuron=neuron)


def _local(name, filters):
  return Row(name, "local", 3, filters, padding=1, init_w=0.04,
             neuron="relu")


def _pool(name, kind, neuron="ident"):
  return Row(name, "pool", 3, stride=2, pool=kind, neuron=neuron)


LOGITS = Row("fc10", "fc", init_w=0.01)

# layers-conv-local-11pct.cfg; rnorm constants from layer-params-...-11pct.
NET_11PCT = (
    _conv("conv1", 64, 1e-4),
    _pool("pool1", "max"),
    Row("rnorm1", "cmrnorm", 9, scale=0.001, power=0.75),
    _conv("conv2", 64, 0.01),
    Row("rnorm2", "cmrnorm", 9, scale=0.001, power=0.75),  # Before pool2.
    _pool("pool2", "max"),
    _local("local3", 64),
    _local("local4", 32),
    LOGITS,
)

NETS = {
    "11pct": NET_11PCT,
    # layers-conv-local-13pct.cfg: 11pct without its two cmrnorm rows, and
    # local3 has 32 filters, not 64 (its params file also differs: fc10's
    # wc is 0.004, not 0.01).
    "13pct": tuple(
        dataclasses.replace(r, features=32) if r.name == "local3" else r
        for r in NET_11PCT if r.kind != "cmrnorm"),
    # layers-18pct.cfg: conv1 has no neuron; pool1 carries the relu (the
    # same function: relu and tanh commute with max). Trained on the full
    # 32x32 images.
    "18pct": (
        _conv("conv1", 32, 1e-4, neuron="ident"),
        _pool("pool1", "max", neuron="relu"),
        Row("rnorm1", "rnorm", 3, scale=5e-5, power=0.75),
        _conv("conv2", 32, 0.01),
        _pool("pool2", "avg"),
        Row("rnorm2", "rnorm", 3, scale=5e-5, power=0.75),
        _conv("conv3", 64, 0.01),
        _pool("pool3", "avg"),
        LOGITS,
    ),
    # layers-80sec.cfg: 18pct without rnorm, an fc64 (relu) before fc10,
    # both fc layers initW 0.1.
    "80sec": (
        _conv("conv1", 32, 1e-4, neuron="ident"),
        _pool("pool1", "max", neuron="relu"),
        _conv("conv2", 32, 0.01),
        _pool("pool2", "avg"),
        _conv("conv3", 64, 0.01),
        _pool("pool3", "avg"),
        Row("fc64", "fc", features=64, init_w=0.1, neuron="relu"),
        dataclasses.replace(LOGITS, init_w=0.1),
    ),
}
# The input each net trained on (cuda-convnet's data provider): 24x24
# crops of the 32x32 images (cifar-cropped, --crop-border=4) or the full
# images (cifar).
INPUT_SIZES = {"11pct": 24, "13pct": 24, "18pct": 32, "80sec": 32}


def weight_names(net: str) -> tuple[str, ...]:
  """The net's layers with parameters (the model's attributes), in order;
  () for a net that does not exist."""
  return tuple(r.name for r in NETS.get(net, ()) if r.kind in WEIGHTED)


@dataclasses.dataclass(frozen=True)
class Shaped:
  """A row with its input and output shapes ((H, W, C), or (F,) for fc)
  and, for conv/local/pool, the zeros (or -inf) added to the input:
  ((top, bottom), (left, right))."""
  row: Row
  in_shape: tuple
  out_shape: tuple
  pads: tuple = ()

  @property
  def num_params(self) -> int:
    r, out = self.row, self.out_shape
    if r.kind == "conv":
      return r.size ** 2 * self.in_shape[-1] * out[-1] + out[-1]
    if r.kind == "local":  # Per output position: a filter bank and biases.
      return out[0] * out[1] * (r.size ** 2 * self.in_shape[-1] + 1) * out[-1]
    if r.kind == "fc":
      return (math.prod(self.in_shape) + 1) * out[-1]
    return 0


def window_out(size: int, window: int, stride: int, padding: int = 0):
  """(output side, (top, bottom) padding): cuda-convnet's ceil rule, the
  bottom/right padding covering the last window's overhang."""
  out = 1 + -(-(2 * padding + size - window) // stride)
  extra = (out - 1) * stride + window - (size + 2 * padding)
  return out, (padding, padding + extra)


def resolve(net: str, image_size: int, num_classes: int,
            norm: str = "rnorm") -> tuple[Shaped, ...]:
  """Every row of the net (rnorm rows dropped for norm='none') with its
  shapes; ValueError names a net, norm or size that does not fit."""
  if net not in NETS:
    raise ValueError(f"model.net must be one of {tuple(NETS)}, got {net!r}")
  if norm not in NORMS:
    raise ValueError(f"model.norm must be one of {NORMS} for "
                     f"model.family=cuda_convnet, got {norm!r}")
  if not isinstance(image_size, int) or image_size < 1:
    raise ValueError(f"model.image_size must be a positive int for "
                     f"model.family=cuda_convnet (net {net} trained on "
                     f"{INPUT_SIZES[net]}), got {image_size!r}")
  if num_classes < 1:
    raise ValueError(f"model.num_classes must be positive, got "
                     f"{num_classes}")
  shape, out = (image_size, image_size, 3), []
  for r in NETS[net]:
    if norm == "none" and r.kind in ("rnorm", "cmrnorm"):
      continue
    pads = ()
    if r.kind in ("conv", "local", "pool"):
      if r.size > shape[0] + 2 * r.padding or r.stride > r.size:
        raise ValueError(f"model.image_size {image_size} is too small for "
                         f"net {net} (layer {r.name} sees {shape[0]}x"
                         f"{shape[1]})")
      side, pad = window_out(shape[0], r.size, r.stride, r.padding)
      pads = (pad, pad)
      new = (side, side, shape[-1] if r.kind == "pool" else r.features)
    elif r.kind == "fc":
      new = (r.features or num_classes,)
    else:
      new = shape
    out.append(Shaped(r, shape, new, pads))
    shape = new
  return tuple(out)


def count_params(net: str, image_size: int, num_classes: int = 10,
                 norm: str = "rnorm") -> int:
  """The net's parameter count, from its shapes."""
  return sum(s.num_params for s in resolve(net, image_size, num_classes,
                                           norm))
