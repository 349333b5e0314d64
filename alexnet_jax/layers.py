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

# scale: each LRN replaced by a fixed per-layer scale (the ablation's control:
# LRN's average scale without its normalisation).
NORMS = ("lrn", "batchnorm", "none", "scale")
INITS = ("paper", "caffe", "he")
POOLS = {"overlap": (3, 2), "nonoverlap": (2, 2)}
# floor: VALID pooling, out = (in - window) // stride + 1 (the paper's sizes
# at 227 with either pool). ceil: cuda-convnet's, out = ceil((in - window) /
# stride) + 1, the bottom/right padded; on the cifar preset both pools then
# give 32 -> 16 -> 8 -> 4.
POOL_MODES = ("floor", "ceil")

# LRN: b = a / (k + alpha' * S)^beta, S the sum of a^2 over n channels,
# alpha' = alpha (the paper's text: a sum) or alpha / n (average=True:
# cuda-convnet's and Caffe's code, PyTorch's module). pixel_scale s: the
# factor the input pixels were divided by; alpha' is multiplied by s^2 so that
# LRN normalises as on the 0-255 scale the constants were set for (ReLU,
# convolution and max-pooling are positively homogeneous; README, training
# notes). ../shared/REFERENCE.md has the sources.
LRN_SETTINGS = {
    "paper": dict(k=2.0, n=5, alpha=1e-4, beta=0.75, average=False),
    # cuda-convnet2's ImageNet layer params: rnorm scale=0.0001, pow=0.75,
    # minDiv=2, size 5; its code divides scale by the window size.
    "cuda_convnet": dict(k=2.0, n=5, alpha=1e-4, beta=0.75, average=True),
    # Caffe bvlc_alexnet: local_size 5, alpha 1e-4 (averaged), beta 0.75, k 1.
    "caffe": dict(k=1.0, n=5, alpha=1e-4, beta=0.75, average=True),
}
LRN_FIELDS = ("k", "n", "alpha", "beta", "average")


@dataclasses.dataclass(frozen=True)
class LRN:
  """Resolved LRN constants: alpha is the coefficient of the window sum
  (average and pixel_scale already applied)."""
  k: float
  n: int
  alpha: float
  beta: float

  @property
  def constant(self) -> float:
    """The scale LRN tends to where alpha * S << k: k^-beta."""
    return self.k ** -self.beta


def resolve_lrn(lrn=None) -> LRN:
  """The LRN constants of a `model.lrn` block (a dict or ConfigDict with
  setting, k, n, alpha, beta, average, pixel_scale; None fields take the
  setting's value; None or {}: the paper's)."""
  lrn = dict(lrn or {})
  setting = lrn.pop("setting", None) or "paper"
  if setting not in LRN_SETTINGS:
    raise ValueError(f"model.lrn.setting must be one of "
                     f"{tuple(LRN_SETTINGS)}, got {setting!r}")
  scale = lrn.pop("pixel_scale", None)
  scale = 1.0 if scale is None else scale
  unknown = set(lrn) - set(LRN_FIELDS)
  if unknown:
    raise ValueError(f"model.lrn has no field {sorted(unknown)[0]!r} (fields: "
                     f"setting, pixel_scale, {', '.join(LRN_FIELDS)})")
  v = {**LRN_SETTINGS[setting],
       **{f: x for f, x in lrn.items() if x is not None}}
  if not (int(v["n"]) == v["n"] and v["n"] >= 1 and v["k"] >= 0
          and v["alpha"] >= 0 and v["beta"] >= 0 and scale > 0):
    raise ValueError(f"model.lrn needs n a positive integer, k, alpha, beta "
                     f">= 0 and pixel_scale > 0; got {v}, pixel_scale "
                     f"{scale}")
  n = int(v["n"])
  alpha = v["alpha"] / (n if v["average"] else 1) * scale * scale
  return LRN(k=float(v["k"]), n=n, alpha=float(alpha), beta=float(v["beta"]))


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
    # The paper's one-GPU comparison (section 3.2, footnote 2): one tower
    # with half the kernels of conv1-conv4; conv5 and the fully connected
    # layers at full size.
    "paper_1gpu": Preset((48, 128, 192, 192, 256), (4096, 4096), 11, 4, -1,
                         227, towers=1, norm="lrn"),
    # torchvision.models.alexnet ("one weird trick"): one tower, no LRN.
    "torchvision": Preset((64, 192, 384, 256, 256), (4096, 4096), 11, 4, 2,
                          224, towers=1, norm="none"),
    # The paper's network on 32x32 images: 5x5 stride-1 conv1 with 'same'
    # padding, so the 3/2 pools give 32 -> 15 -> 7 -> 3.
    "cifar": Preset((96, 256, 384, 384, 256), (4096, 4096), 5, 1, 2, 32,
                    towers=2, norm="lrn"),
    # The one-GPU comparison net on the cifar geometry.
    "cifar_1gpu": Preset((48, 128, 192, 192, 256), (4096, 4096), 5, 1, 2, 32,
                         towers=1, norm="lrn"),
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
  pool_pads: tuple[int, ...]  # Bottom/right padding before each pool (ceil).
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
            conv1_padding: int | None = None, pool_mode: str | None = None,
            channels=None, fc_features=None, **unused) -> Geometry:
  """The geometry from the AlexNet constructor's arguments (None: the
  preset's value); ValueError names a choice that does not exist or a
  geometry that does not fit. channels (conv1..conv5) and fc_features
  (fc6, fc7) replace the preset's before `width` scales them."""
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
  pool_mode = pool_mode or "floor"
  if pool_mode not in POOL_MODES:
    raise ValueError(f"model.pool_mode must be one of {POOL_MODES}, "
                     f"got {pool_mode!r}")
  channels = tuple(p.channels if not channels else channels)
  fc_features = tuple(p.fc_features if not fc_features else fc_features)
  if (len(channels) != 5 or len(fc_features) != 2 or
      min(channels + fc_features) < 1):
    raise ValueError(f"model.channels needs 5 positive counts (conv1..conv5) "
                     f"and model.fc_features 2 (fc6, fc7); got {channels}, "
                     f"{fc_features}")
  window, stride = POOLS[pool]
  # Spatial sizes, so fc6 knows its input width and bad geometry fails here.
  pads = conv1_pads(image_size, k1, s1, pad1)
  size = (image_size + sum(pads[0]) - k1) // s1 + 1
  sizes, pool_pads = [size], []
  for _ in range(3):  # pools after conv1, conv2 and conv5; 'same' convs.
    extra = -(size - window) % stride if pool_mode == "ceil" else 0
    pool_pads.append(max(0, extra))
    size = (size + pool_pads[-1] - window) // stride + 1
    sizes.append(size)
  if min(sizes) < 1:
    raise ValueError(f"image_size {image_size} is too small for conv1 "
                     f"{k1}x{k1}/{s1} and {pool} pooling "
                     f"(spatial sizes {sizes})")
  return Geometry(
      towers=towers, norm=norm, image_size=image_size,
      channels=tuple(scaled(c, width, towers) for c in channels),
      fc_features=tuple(scaled(f, width, towers) for f in fc_features),
      conv1_kernel=k1, conv1_stride=s1, conv1_pads=pads, pool_window=window,
      pool_stride=stride, pool_pads=tuple(pool_pads), stage_sizes=tuple(sizes))


def resolve_config(model_config) -> Geometry:
  """The geometry of the `model` block of a config."""
  return resolve(**model_config.to_dict())
