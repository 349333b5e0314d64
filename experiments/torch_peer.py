"""The config's AlexNet written independently in torch.nn (optional torch).

`torch_alexnet` is the benchmark's peer; `TorchTwin` trains it from the JAX
model's parameters with the paper's update (experiments/torch_twin.py and
tests/test_real_data.py). Nothing in training imports this module; it shares
only the resolved geometry (layers.resolve_config) with the JAX model.
"""

from __future__ import annotations

import numpy as np
from flax import nnx

from alexnet_jax import layers


def torch_alexnet(config, lrn: str = "slices"):
  """The config's AlexNet as a torch.nn.Module taking NCHW float32 images.

  Same channels, towers (groups=2), conv1 geometry (the bottom/right pad of
  `conv1_padding=-1` included), LRN inside each tower with the config's
  constants (model.lrn), the norm=scale factors, pooling (ceil_mode for
  pool_mode=ceil), dropout and activation. lrn='module' is
  torch.nn.LocalResponseNorm(n, alpha=alpha * n) (torch divides alpha by
  n); 'slices' the same formula by hand.
  """
  # Long (75 lines) because the torch modules are local classes that close
  # over this config's sizes: an independent network written out in full.
  import torch
  from torch import nn

  c = config.model
  g = layers.resolve_config(c)  # The sizes the JAX model uses.
  towers, norm, ch, fc = g.towers, g.norm, g.channels, g.fc_features
  k1, s1 = g.conv1_kernel, g.conv1_stride
  (pt, pb), (pl, pr) = g.conv1_pads
  window, stride = g.pool_window, g.pool_stride
  act = {"relu": nn.ReLU, "tanh": nn.Tanh}[c.activation]

  lc = layers.resolve_lrn(c.get("lrn") and c.lrn.to_dict())
  n_lrn, r = lc.n, lc.n // 2
  scales = list(c.get("norm_scale", ()) or (lc.constant,) * 2)
  ceil = bool(any(g.pool_pads))

  class TowerLRN(nn.Module):
    """torch.nn.LocalResponseNorm on each tower's channels."""

    def __init__(self):
      super().__init__()
      self.lrn = nn.LocalResponseNorm(n_lrn, alpha=lc.alpha * n_lrn,
                                      beta=lc.beta, k=lc.k)

    def forward(self, x):
      return torch.cat([self.lrn(t) for t in x.chunk(towers, dim=1)], dim=1)

  class SliceLRN(nn.Module):
    """x (k + alpha S(x^2))^-beta, S a sum of shifted slices per tower."""

    def forward(self, x):
      b, ch, h, w = x.shape
      sq = torch.nn.functional.pad((x * x).view(b, towers, ch // towers, h, w),
                                   (0, 0, 0, 0, r, n_lrn - 1 - r))
      per = ch // towers
      s = sum(sq[:, :, i:i + per] for i in range(n_lrn)).view(b, ch, h, w)
      return x * (lc.k + lc.alpha * s).pow(-lc.beta)

  class Scale(nn.Module):
    """norm=scale: a fixed factor."""

    def __init__(self, factor):
      super().__init__()
      self.factor = factor

    def forward(self, x):
      return x * self.factor

  if lrn not in ("slices", "module"):
    raise ValueError(f"lrn must be slices or module, got {lrn!r}")

  def block(cin, cout, k, groups, stride_=1, pad=None, layer=None):
    pad = k // 2 if pad is None else pad
    bn = norm == "batchnorm" and layer is not None
    mods = [nn.Conv2d(cin, cout, k, stride_, pad, groups=groups, bias=not bn)]
    if bn:
      mods.append(nn.BatchNorm2d(cout, momentum=0.1))
    mods.append(act())
    if norm == "lrn" and layer is not None:
      mods.append(TowerLRN() if lrn == "module" else SliceLRN())
    if norm == "scale" and layer is not None:
      mods.append(Scale(scales[layer - 1]))
    return mods

  def pool():
    return nn.MaxPool2d(window, stride, ceil_mode=ceil)

  size_out = g.stage_sizes[-1]
  g = towers
  seq = [nn.ZeroPad2d((pl, pr, pt, pb))]
  seq += block(3, ch[0], k1, 1, s1, 0, layer=1)
  seq += [pool()]
  seq += block(ch[0], ch[1], 5, g, layer=2)
  seq += [pool()]
  seq += block(ch[1], ch[2], 3, 1) + block(ch[2], ch[3], 3, g)
  seq += block(ch[3], ch[4], 3, g) + [pool()]
  # NHWC flattening order does not matter for speed; torch flattens NCHW.
  seq += [nn.Flatten(),
          nn.Linear(size_out * size_out * ch[4], fc[0]), act(),
          nn.Dropout(c.dropout_rate),
          nn.Linear(fc[0], fc[1]), act(), nn.Dropout(c.dropout_rate),
          nn.Linear(fc[1], c.num_classes)]
  return nn.Sequential(*seq)


# ---------------------------------------------------------------- twin


def jax_params(model_state) -> dict:
  """{layer: (kernel, bias)} as float32 NumPy arrays."""
  pure = nnx.to_pure_dict(model_state)
  return {n: (np.asarray(pure[n]["kernel"]), np.asarray(pure[n]["bias"]))
          for n in layers.NAMES}


def torch_layers(net):
  """The net's conv and linear modules in the order conv1..conv5, fc6..fc8."""
  from torch import nn
  convs = [m for m in net if isinstance(m, nn.Conv2d)]
  fcs = [m for m in net if isinstance(m, nn.Linear)]
  return dict(zip(layers.NAMES, convs + fcs))


def copy_into_torch(params: dict, net, pool5_shape) -> None:
  """Loads JAX parameters into the torch twin (layouts converted).

  Conv kernels HWIO -> OIHW (the grouped layout is the same: output block g
  sees input block g). fc6's rows follow JAX's NHWC flattening; torch
  flattens NCHW, so they are permuted to (C, H, W) order.
  """
  import torch
  h, w, c = pool5_shape
  for name, layer in torch_layers(net).items():
    kernel, bias = params[name]
    if kernel.ndim == 4:
      weight = kernel.transpose(3, 2, 0, 1)
    elif name == "fc6":
      weight = kernel.reshape(h, w, c, -1).transpose(3, 2, 0, 1).reshape(
          kernel.shape[1], -1)
    else:
      weight = kernel.T
    with torch.no_grad():
      layer.weight.copy_(torch.from_numpy(np.ascontiguousarray(weight)))
      layer.bias.copy_(torch.from_numpy(np.array(bias)))


class TorchTwin:
  """The torch twin of a JAX run: same parameters, the paper's update.

  step() applies  v <- m v - lr s (wd w + g);  w <- w + v  by hand (weight
  decay on every parameter, or kernels only when optim.decay_biases is
  False; s = optim.bias_lr_scale for biases, 1 for kernels), as
  optim.create_optimizer does. Dropout masks are torch's own.
  """

  def __init__(self, config, model_state, threads: int = 2):
    """The twin of config's model, starting from the JAX model_state."""
    import torch
    torch.set_num_threads(threads)
    torch.manual_seed(config.seed)
    self.torch = torch
    self.net = torch_alexnet(config, lrn="module")
    params = jax_params(model_state)
    c5 = params["conv5"][0].shape[-1]
    side = round((params["fc6"][0].shape[0] / c5) ** 0.5)  # pool5 is square.
    copy_into_torch(params, self.net, (side, side, c5))
    o = config.optim
    if o.weight_decay_mode not in ("coupled", "none"):
      raise ValueError("the twin implements weight_decay_mode coupled or none")
    if config.model.norm == "batchnorm":
      raise ValueError("the twin does not support model.norm=batchnorm")
    self.m = o.momentum
    self.wd = o.weight_decay if o.weight_decay_mode == "coupled" else 0.0
    self.decay_biases = o.decay_biases
    self.bias_lr_scale = o.get("bias_lr_scale", 1.0)
    if o.get("layer_weight_decay"):
      raise ValueError("the twin does not implement optim.layer_weight_decay")
    self.velocity = [torch.zeros_like(p) for p in self.net.parameters()]
    self.loss = torch.nn.CrossEntropyLoss()

  def step(self, image: np.ndarray, label: np.ndarray, lr: float):
    torch = self.torch
    x = torch.from_numpy(np.ascontiguousarray(image.transpose(0, 3, 1, 2)))
    y = torch.from_numpy(label.astype(np.int64))
    self.net.train()
    for p in self.net.parameters():
      p.grad = None
    logits = self.net(x)
    loss = self.loss(logits, y)
    loss.backward()
    with torch.no_grad():
      for p, v in zip(self.net.parameters(), self.velocity):
        g = p.grad
        if self.wd and (self.decay_biases or p.ndim > 1):
          g = g + self.wd * p
        v.mul_(self.m).sub_(lr * (self.bias_lr_scale if p.ndim == 1 else 1.0)
                            * g)
        p.add_(v)
    acc = (logits.argmax(1) == y).float().mean()
    return loss.item(), acc.item()

  def eval_counts(self, image, label, mask):
    torch = self.torch
    self.net.eval()
    with torch.inference_mode():
      x = torch.from_numpy(np.ascontiguousarray(image.transpose(0, 3, 1, 2)))
      pred = self.net(x).argmax(1).numpy()
    return float(((pred == label) & mask).sum()), float(mask.sum())


# ---------------------------------------------------------------- benchmark


class TorchStep:
  """Forward (+ backward + SGD momentum) of the torch peer on one batch.

  The benchmark's peer (alexnet_jax/benchmark.py): lrn as torch_alexnet's;
  channels_last puts the model and batch in NHWC memory format; compile
  wraps the model in torch.compile (inductor), which compiles on the first
  step.
  """

  def __init__(self, config, what: str, batch_size: int, threads: int,
               lrn: str = "slices", channels_last: bool = False,
               compile: bool = False):  # pylint: disable=redefined-builtin
    import torch
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    self.torch, self.what = torch, what
    model = torch_alexnet(config, lrn)
    self.params = sum(p.numel() for p in model.parameters())
    size = layers.resolve_config(config.model).image_size
    self.x = torch.randn(batch_size, 3, size, size)
    self.y = torch.randint(0, config.model.num_classes, (batch_size,))
    if channels_last:
      model = model.to(memory_format=torch.channels_last)
      self.x = self.x.contiguous(memory_format=torch.channels_last)
    # The paper's update: coupled decay, momentum, as optim.create_optimizer.
    self.opt = torch.optim.SGD(model.parameters(),
                               lr=config.optim.learning_rate,
                               momentum=config.optim.momentum,
                               weight_decay=config.optim.weight_decay)
    model.train(what == "train")
    self.model = torch.compile(model) if compile else model
    self.loss = torch.nn.CrossEntropyLoss()
    # bfloat16 compute with float32 parameters, as the JAX side does.
    self.autocast = config.half_precision

  def _step(self):
    torch = self.torch
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
      if self.what == "train":
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss(self.model(self.x).float(), self.y)
        loss.backward()
        self.opt.step()
      else:
        with torch.inference_mode():
          self.model(self.x)

  def run(self, steps: int):
    for _ in range(steps):
      self._step()
