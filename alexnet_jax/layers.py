"""The paper's network as a table, its presets, and its resolved geometry.

`LAYERS` is the one place the eight layers are named and described (paper,
section 3 and figure 2): what each reads, whether it sees only its own
tower, what follows it. The model's forward (model.py), the tower split
(sharding.py), the collective report (comm.py) and the PyTorch peer all
read it. `resolve` turns a model config (or the AlexNet constructor's
arguments) into every size the network needs: channels, conv1 geometry,
spatial sizes, towers; the model, its PyTorch peer and comm all use it.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Layer:
  """One row of the paper's table.

  kind: conv or fc. kernel: the conv's size (conv1's comes from the
  preset). grouped: sees only its own tower's channels (conv2, conv4,
  conv5). gather: reads both towers' outputs (conv3, fc6, fc7): on the
  two-device split, an all-gather into it, three of the paper's four
  links. reduce: split on its input axis, partial results summed (fc8, the
  fourth link). norm: LRN (or BatchNorm) after the activation. pool:
  max-pooling after. dropout: dropout after. bias_one: the paper's bias 1.
  """
  name: str
  kind: str
  kernel: int = 0
  grouped: bool = False
  gather: bool = False
  reduce: bool = False
  norm: bool = False
  pool: bool = False
  dropout: bool = False
  bias_one: bool = False


LAYERS = (
    Layer("conv1", "conv", norm=True, pool=True),
    Layer("conv2", "conv", 5, grouped=True, norm=True, pool=True,
          bias_one=True),
    Layer("conv3", "conv", 3, gather=True),
    Layer("conv4", "conv", 3, grouped=True, bias_one=True),
    Layer("conv5", "conv", 3, grouped=True, pool=True, bias_one=True),
    Layer("fc6", "fc", gather=True, dropout=True, bias_one=True),
    Layer("fc7", "fc", gather=True, dropout=True, bias_one=True),
    Layer("fc8", "fc", reduce=True),
)
NAMES = tuple(l.name for l in LAYERS)
BY_NAME = {l.name: l for l in LAYERS}
# The modules that go with some layers, by their attribute names:
# BatchNorm (norm=batchnorm) of the layers with `norm` (bn1, bn2), the
# dropout after fc6/fc7 (dropout6, dropout7) and the pools' outputs in the
# activations (pool1, pool2, pool5).
BATCHNORMS = {l.name: f"bn{i + 1}" for i, l in enumerate(LAYERS) if l.norm}
DROPOUTS = {l.name: f"dropout{i + 1}" for i, l in enumerate(LAYERS)
            if l.dropout}
POOLED = {l.name: f"pool{i + 1}" for i, l in enumerate(LAYERS) if l.pool}

NORMS = ("lrn", "batchnorm", "none")
INITS = ("paper", "caffe", "he")
POOLS = {"overlap": (3, 2), "nonoverlap": (2, 2)}


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


def scaled(n: int, width: float, towers: int) -> int:
  """n * width rounded to a positive multiple of the tower count."""
  return max(1, round(n * width / towers)) * towers


def conv1_pads(image_size: int, kernel: int, stride: int, padding: int):
  """The conv1 padding per spatial axis; -1 pads bottom/right only, so that
  the output size is the ceiling of (image_size - kernel) / stride + 1."""
  if padding >= 0:
    return ((padding, padding),) * 2
  extra = -(image_size - kernel) % stride
  return ((0, extra),) * 2


@dataclasses.dataclass(frozen=True)
class Geometry:
  """Every size of one configured network."""
  towers: int
  norm: str
  image_size: int
  channels: tuple[int, ...]  # conv1..conv5 outputs.
  fc_features: tuple[int, int]  # fc6, fc7 outputs.
  conv1_kernel: int
  conv1_stride: int
  conv1_pads: tuple  # ((top, bottom), (left, right)).
  pool_window: int
  pool_stride: int
  stage_sizes: tuple[int, ...]  # conv1 output, then after each pool.

  def kernel_size(self, layer: Layer) -> int:
    return self.conv1_kernel if layer.name == "conv1" else layer.kernel

  def groups(self, layer: Layer) -> int:
    return self.towers if layer.grouped else 1

  @property
  def flat_features(self) -> int:
    """fc6's input: pool5's output flattened."""
    return self.stage_sizes[-1] ** 2 * self.channels[-1]

  @property
  def tower_split(self) -> bool:
    """Whether a model=2 mesh can run one tower per device (BatchNorm's
    statistics are not written for the per-device program)."""
    return self.towers == 2 and self.norm != "batchnorm"


def resolve(*, preset: str = "paper", norm: str | None = None,
            pool: str = "overlap", towers: int | None = None,
            width: float = 1.0, image_size: int | None = None,
            conv1_kernel: int | None = None, conv1_stride: int | None = None,
            conv1_padding: int | None = None, **unused) -> Geometry:
  """The geometry from the AlexNet constructor's arguments (None: the
  preset's value); ValueError names a choice that does not exist or a
  geometry that does not fit."""
  del unused  # The rest of a model config (init, dropout, ...).
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
  if towers not in (1, 2):
    raise ValueError(f"model.towers must be 1 or 2, got {towers!r}")
  if not width > 0:
    raise ValueError(f"model.width must be positive, got {width!r}")
  window, stride = POOLS[pool]
  # Spatial sizes, so fc6 knows its input width and bad geometry fails here.
  pads = conv1_pads(image_size, k1, s1, pad1)
  size = (image_size + sum(pads[0]) - k1) // s1 + 1
  sizes = [size]
  for _ in range(3):  # pools after conv1, conv2 and conv5; 'same' convs.
    size = (size - window) // stride + 1
    sizes.append(size)
  if min(sizes) < 1:
    raise ValueError(f"image_size {image_size} is too small for conv1 "
                     f"{k1}x{k1}/{s1} and {pool} pooling "
                     f"(spatial sizes {sizes})")
  return Geometry(
      towers=towers, norm=norm, image_size=image_size,
      channels=tuple(scaled(c, width, towers) for c in p.channels),
      fc_features=tuple(scaled(f, width, towers) for f in p.fc_features),
      conv1_kernel=k1, conv1_stride=s1, conv1_pads=pads, pool_window=window,
      pool_stride=stride, stage_sizes=tuple(sizes))


def resolve_config(model_config) -> Geometry:
  """The geometry of the `model` block of a config."""
  return resolve(**model_config.to_dict())
