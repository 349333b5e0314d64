"""The paper's optimizer and the learning-rate schedules.

The paper's update (section 5), with learning rate e, momentum m, decay wd:
    v <- m * v - e * wd * w - e * dL/dw,    w <- w + v
is `chain(add_decayed_weights(wd), scale by -e, trace(m))`: the rate
multiplies each gradient as it enters the velocity, so a rate change does not
rescale the velocity already accumulated (`optax.sgd` would). The rate is an
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


def _per_layer(fn, scales: dict[str, float], *trees):
  """jax.tree.map(fn(scale, *leaves)) with each leaf's layer's scale (the
  first key of its path: the model attribute; 1 where scales has none)."""
  def layer(path):
    return getattr(path[0], "key", None) if path else None
  return jax.tree_util.tree_map_with_path(
      lambda path, *leaves: fn(scales.get(layer(path), 1.0), *leaves),
      *trees)


def _scale_by_rate_arg(scales: dict[str, float]
                       ) -> optax.GradientTransformationExtraArgs:
  """Multiplies updates by -learning_rate (given to each update call) times
  the layer's scale (finetune.lr_scale)."""
  def update(updates, state, params=None, *, learning_rate, **extra):
    del params, extra
    return _per_layer(lambda s, u: -learning_rate * s * u, scales,
                      updates), state
  return optax.GradientTransformationExtraArgs(
      lambda params: optax.EmptyState(), update)


def _decoupled_decay(rate: float, mask, scales: dict[str, float]
                     ) -> optax.GradientTransformation:
  """Adds -learning_rate * (layer scale) * rate * w to the final update."""
  def update(updates, state, params, *, learning_rate, **extra):
    del extra
    updates = _per_layer(lambda s, u, w: u - learning_rate * s * rate * w,
                         scales, updates, params)
    return updates, state
  tx = optax.GradientTransformationExtraArgs(
      lambda params: optax.EmptyState(), update)
  return optax.masked(tx, mask) if mask is not None else tx


def create_optimizer(optim: ml_collections.ConfigDict,
                     layer_scales: dict[str, float] | None = None
                     ) -> optax.GradientTransformationExtraArgs:
  """SGD with momentum and weight decay as configured (paper by default).

  `update` takes the current rate as `learning_rate=`. layer_scales
  ({model attribute: multiplier}, finetune.py) multiplies a layer's rate as
  the rate itself does: as each gradient enters the velocity.
  """
  scales = dict(layer_scales or {})
  # Decay applies to every parameter, or (decay_biases=False) to kernels only.
  mask = None if optim.decay_biases else (
      lambda params: jax.tree.map(lambda w: w.ndim > 1, params))
  sgd = [_scale_by_rate_arg(scales), optax.trace(optim.momentum)]
  mode, wd = optim.weight_decay_mode, optim.weight_decay
  if mode == "coupled":
    return optax.chain(optax.add_decayed_weights(wd, mask), *sgd)
  if mode == "decoupled":
    return optax.chain(*sgd, _decoupled_decay(wd, mask, scales))
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
