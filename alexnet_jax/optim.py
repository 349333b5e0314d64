"""The paper's optimizer and the learning-rate schedules.

The paper's update (section 5), with learning rate e, momentum m, decay wd:
    v <- m * v - e * wd * w - e * dL/dw,    w <- w + v
is `chain(add decay, scale by -e, trace(m))`: the rate multiplies each
gradient as it enters the velocity, so a rate change does not rescale the
velocity already accumulated (`optax.sgd` would). Where the paper's text is
silent the defaults are the authors' code (cuda-convnet2's ImageNet layer
parameters, and Caffe's bvlc_alexnet alike): biases are not decayed
(optim.decay_biases=False) and learn at twice the rate (optim.bias_lr_scale
=2: e becomes 2e for them, decay included when decayed); a layer's decay can
be set on its own (optim.layer_weight_decay, as cuda-convnet's per-layer
`wc`). docs/recipe.md compares the recipes. The rate is an
argument of the train step, computed on the host by `LearningRate`, because
the paper's schedule (divide by 10 when validation error stops improving)
depends on evaluations, not on the step alone.
"""

from __future__ import annotations

import math

import jax
import ml_collections
import optax

from alexnet_jax import preflight

ConfigError = preflight.ConfigError
SCHEDULES = preflight.SCHEDULES


def _layer(path) -> str | None:
  """The model attribute a parameter belongs to: its path's first key."""
  return getattr(path[0], "key", None) if path else None


def is_bias(path) -> bool:
  """A bias: a parameter named `bias`, or BatchNorm's `scale`.

  By name, not shape: a locally connected layer's bias has one value per
  output position and channel (ho, wo, cout), and cuda-convnet gives it
  epsB and no decay as every other bias. With model.norm=batchnorm,
  BatchNorm's bias is the bias of conv1/conv2 there (they have none), and
  its scale is left undecayed as a bias is in the usual practice for
  BatchNorm.
  """
  names = [getattr(k, "key", None) for k in path]
  return "bias" in names or "scale" in names


def _map(fn, *trees):
  """jax.tree.map(fn(path, leaf, *other leaves)) over matching trees."""
  return jax.tree_util.tree_map_with_path(fn, *trees)


class _Rates:
  """Each parameter's multiplier of the learning rate and its decay rate.

  rate: the layer's scale (finetune.lr_scale) times optim.bias_lr_scale for
  a bias; decay: optim.layer_weight_decay's value for the layer (else
  optim.weight_decay), 0 for a bias unless optim.decay_biases.
  """

  def __init__(self, optim: ml_collections.ConfigDict,
               layer_scales: dict[str, float]):
    self.scales = layer_scales
    self.bias_scale = float(optim.get("bias_lr_scale", 1.0))
    self.decay_biases = optim.decay_biases
    self.wd = float(optim.weight_decay)
    self.layer_wd = {k: float(v) for k, v in
                     dict(optim.get("layer_weight_decay") or {}).items()}

  def rate(self, path) -> float:
    bias = self.bias_scale if is_bias(path) else 1.0
    return self.scales.get(_layer(path), 1.0) * bias

  def decay(self, path) -> float:
    if is_bias(path) and not self.decay_biases:
      return 0.0
    return self.layer_wd.get(_layer(path), self.wd)


def _transform(update) -> optax.GradientTransformationExtraArgs:
  return optax.GradientTransformationExtraArgs(
      lambda params: optax.EmptyState(), update)


def _scale_by_rate_arg(rates: _Rates) -> optax.GradientTransformationExtraArgs:
  """Multiplies updates by -learning_rate (given to each update call) times
  the parameter's rate multiplier (layer scale, bias scale)."""
  def update(updates, state, params=None, *, learning_rate, **extra):
    del params, extra
    return _map(lambda p, u: -learning_rate * rates.rate(p) * u,
                updates), state
  return _transform(update)


def _coupled_decay(rates: _Rates) -> optax.GradientTransformationExtraArgs:
  """Adds decay * w to the gradient (before the rate: the paper's)."""
  def update(updates, state, params, **extra):
    del extra

    def one(path, u, w):
      wd = rates.decay(path)
      return u + wd * w if wd else u
    return _map(one, updates, params), state
  return _transform(update)


def _decoupled_decay(rates: _Rates) -> optax.GradientTransformationExtraArgs:
  """Adds -learning_rate * (rate multiplier) * decay * w to the final
  update."""
  def update(updates, state, params, *, learning_rate, **extra):
    del extra

    def one(path, u, w):
      wd = rates.decay(path)
      return u - learning_rate * rates.rate(path) * wd * w if wd else u
    return _map(one, updates, params), state
  return _transform(update)


def create_optimizer(optim: ml_collections.ConfigDict,
                     layer_scales: dict[str, float] | None = None
                     ) -> optax.GradientTransformationExtraArgs:
  """SGD with momentum and weight decay as configured (paper by default).

  `update` takes the current rate as `learning_rate=`. layer_scales
  ({model attribute: multiplier}, finetune.py) and optim.bias_lr_scale
  multiply a parameter's rate as the rate itself does: as each gradient
  enters the velocity, v <- m v - e s (wd w + dL/dw), decay included.
  """
  rates = _Rates(optim, dict(layer_scales or {}))
  sgd = [_scale_by_rate_arg(rates), optax.trace(optim.momentum)]
  mode = optim.weight_decay_mode
  if mode == "coupled":
    return optax.chain(_coupled_decay(rates), *sgd)
  if mode == "decoupled":
    return optax.chain(*sgd, _decoupled_decay(rates))
  if mode == "none":
    return optax.chain(*sgd)
  raise ConfigError(f"optim.weight_decay_mode must be coupled, decoupled or "
                    f"none, got {mode!r}")


class LearningRate:
  """The learning rate at each step, and the plateau rule's host state.

  constant; step (x0.1 at each of optim.step_epochs); cosine (cosine to 0 at
  the last step); plateau (the paper: x plateau_factor when the eval top-1
  error has not improved for plateau_patience evaluations, at most
  plateau_max_reductions times). Every schedule starts with a linear warmup
  over optim.warmup_epochs (0: none, the paper).

  The rates are Python floats worked out on the host, not optax schedules:
  the plateau scale is host state that changes between steps, and a float
  per step costs no device dispatch. The formulas are optax's
  (`linear_schedule`, `piecewise_constant_schedule`,
  `cosine_decay_schedule`), in float64.
  """

  def __init__(self, optim: ml_collections.ConfigDict, steps_per_epoch: int,
               total_steps: int):
    if optim.schedule not in SCHEDULES:
      raise ConfigError(f"optim.schedule must be one of {SCHEDULES}, "
                        f"got {optim.schedule!r}")
    self.optim, self.steps_per_epoch = optim, steps_per_epoch
    self.total_steps = total_steps
    self.warmup = int(optim.warmup_epochs * steps_per_epoch)
    self.plateau = {"scale": 1.0, "best": None, "bad_evals": 0,
                    "reductions": 0}

  def __call__(self, step: int) -> float:
    """The rate for the update that produces `step` (1-based)."""
    o, t = self.optim, step - 1
    # Linear warmup from lr / warmup to lr, before any schedule.
    ramp = (t + 1) / self.warmup if t < self.warmup else 1.0
    return ramp * o.learning_rate * self._decay(t)

  def _decay(self, t: int) -> float:
    """The schedule's factor at 0-based step t (1 during the warmup)."""
    o = self.optim
    if o.schedule == "step":
      return 0.1 ** sum(t >= e * self.steps_per_epoch for e in o.step_epochs)
    if o.schedule == "cosine":
      if t < self.warmup:
        return 1.0
      frac = (t - self.warmup) / max(1, self.total_steps - self.warmup)
      return 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))
    if o.schedule == "plateau":
      return self.plateau["scale"]
    return 1.0

  def observe(self, eval_error: float) -> bool:
    """Feeds an evaluation to the plateau rule; True when it cut the rate."""
    if self.optim.schedule != "plateau":
      return False
    p, o = self.plateau, self.optim
    if p["best"] is None or eval_error < p["best"]:
      p["best"], p["bad_evals"] = eval_error, 0
      return False
    p["bad_evals"] += 1
    if (p["bad_evals"] >= o.plateau_patience
        and p["reductions"] < o.plateau_max_reductions):
      p["scale"] *= o.plateau_factor
      p["reductions"] += 1
      p["bad_evals"] = 0
      return True
    return False
