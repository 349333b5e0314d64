"""Half precision that fits the device, and float16's dynamic loss scale.

`config.half_precision=True` computes in a 16-bit float with float32
parameters, loss and logits; `config.half_precision_dtype` says which:

  auto      bfloat16 where the hardware has it (TPU, CPU, NVIDIA compute
            capability >= 8.0: A100, L4, H100, RTX 30xx on), float16 with
            dynamic loss scaling on NVIDIA 6.0 and 7.x (P100, V100, T4,
            Colab's default GPU), float32 with a warning elsewhere (NVIDIA
            6.1 and older run float16 at a fraction of the float32 rate; a
            device this table does not know).
  bfloat16  always (a GPU without it emulates it, slowly).
  float16   always, with the loss scale.

`choose` makes the decision, once, for the model builders (train.py), the
train step (its loss scale rides in the optimizer) and the benchmark;
`python -m alexnet_jax.precision` prints it for the machine at hand.

float16 holds magnitudes from 6e-8 to 65504 only: small gradients underflow
to zero unless the loss is multiplied first. `DynamicLossScale` does what
the mixed-precision literature does (Micikevicius et al. 2018): scale the
loss by S (2^15 to start), divide the gradients by S; a step whose
gradients hold an inf or NaN is skipped (parameters, BatchNorm statistics
and optimizer state unchanged; the dropout RNG moves on) and S halves
(never below 1); after `period` (2000) finite steps in a row S doubles.
The scale is saved in every checkpoint's meta (`checkpoint_meta`), so a
resume goes on with it exactly; a checkpoint without one (written before,
or by a bfloat16/float32 run) starts from the initial scale.
"""

from __future__ import annotations

import dataclasses
import sys

import jax
import jax.numpy as jnp
from flax import nnx

DTYPES = ("auto", "bfloat16", "float16")
INIT_SCALE = 2.0 ** 15
MAX_SCALE = 2.0 ** 24  # Doubling stops here (it must never reach inf).
PERIOD = 2000  # Finite steps in a row before the scale doubles.
META_KEY = "loss_scale"  # The scale's entry in a checkpoint's meta.


@dataclasses.dataclass(frozen=True)
class Precision:
  """The compute dtype ('float32' | 'bfloat16' | 'float16') and why."""
  dtype: str
  reason: str
  warning: bool = False  # Half precision asked for, float32 given.

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def loss_scaling(self) -> bool:
    return self.dtype == "float16"

  def describe(self) -> str:
    """One line for the log."""
    what = {"float32": "float32", "bfloat16": "bfloat16 compute",
            "float16": "float16 compute with dynamic loss scaling"}
    line = f"precision: {what[self.dtype]} ({self.reason})"
    return f"warning: {line}" if self.warning else line


def _capability(text) -> tuple[int, int] | None:
  try:
    major, minor = str(text).split(".")[:2]
    return int(major), int(minor)
  except ValueError:
    return None


def for_device(platform: str, kind: str = "",
               compute_capability: str | None = None) -> Precision:
  """The half-precision dtype `auto` picks for a device (pure, so that any
  device can be asked about): platform as jax names it (cpu | gpu | tpu),
  its device_kind and, on NVIDIA, its compute capability ('7.5')."""
  platform = platform.lower()
  if platform in ("tpu", "cpu"):
    return Precision("bfloat16", f"{platform} has bfloat16")
  cc = _capability(compute_capability) if compute_capability else None
  if platform in ("gpu", "cuda") and cc is not None:
    name = f"{kind or 'NVIDIA GPU'}, compute capability {cc[0]}.{cc[1]}"
    if cc >= (8, 0):
      return Precision("bfloat16", f"{name} has bfloat16")
    if cc >= (7, 0) or cc in ((6, 0), (6, 2)):
      return Precision("float16", f"{name} lacks bfloat16; float16 runs "
                       f"at 2-8x the float32 rate there")
    return Precision("float32", f"{name}: no bfloat16, and float16 runs "
                     f"slower than float32 there", warning=True)
  if platform in ("gpu", "rocm") and "amd" in kind.lower():
    return Precision("bfloat16", f"{kind} (ROCm) has bfloat16")
  return Precision("float32", f"device {platform} {kind!r}: half precision "
                   f"support unknown; set half_precision_dtype=bfloat16 or "
                   f"float16 to choose", warning=True)


def choose(config, device=None) -> Precision:
  """The compute precision of a run: float32 unless config.half_precision;
  then config.half_precision_dtype, `auto` by `for_device` of the first
  device (or `device`)."""
  if not config.half_precision:
    return Precision("float32", "half_precision=False")
  asked = config.get("half_precision_dtype", "auto")
  if asked not in DTYPES:
    raise ValueError(f"half_precision_dtype must be one of {DTYPES}, got "
                     f"{asked!r}")
  if asked != "auto":
    return Precision(asked, f"half_precision_dtype={asked}")
  device = device or jax.devices()[0]
  return for_device(device.platform, getattr(device, "device_kind", ""),
                    getattr(device, "compute_capability", None))


def norm_in_float32(fn, x: jax.Array) -> jax.Array:
  """fn(x) in float32 when x is float16, cast back (LRN's sum of squares
  overflows float16 for activations above 256, and the gradient's window
  sum sooner under the loss scale); any other dtype as it is."""
  if x.dtype != jnp.float16:
    return fn(x)
  return fn(x.astype(jnp.float32)).astype(x.dtype)


def log_choice(p: Precision):
  """The decision in one line (a warning on stderr), from process 0."""
  if jax.process_index() == 0:
    print(p.describe(), file=sys.stderr if p.warning else sys.stdout,
          flush=True)


# ---------------------------------------------------------------- loss scale


class LossScaleState(nnx.Variable):
  """The loss scale's arrays: a Variable type of their own, so that a
  skipped step can keep every other part of the optimizer's state."""


class DynamicLossScale(nnx.Pytree):
  """The float16 loss scale S and the count of finite steps since it last
  changed (module doc). Attached to the optimizer as `loss_scale`, so its
  arrays live in the optimizer's state and the train step's signature is
  the same with or without it."""

  def __init__(self, init: float = INIT_SCALE, period: int = PERIOD):
    self.scale = LossScaleState(jnp.float32(init))
    self.good_steps = LossScaleState(jnp.int32(0))
    self.period = period  # Static: part of the graph, not the state.

  def adjust(self, finite: jax.Array):
    """After a step: halve on overflow (not below 1), double after
    `period` finite steps in a row (not above MAX_SCALE: a scale that grew
    to inf would overflow every step from then on)."""
    scale, good = self.scale[...], self.good_steps[...] + 1
    grow = finite & (good >= self.period)
    self.scale[...] = jnp.where(
        finite, jnp.where(grow, jnp.minimum(scale * 2, MAX_SCALE), scale),
        jnp.maximum(scale / 2, 1.0))
    self.good_steps[...] = jnp.where(finite & ~grow, good, 0)


def attach(optimizer, p: Precision, *, init: float = INIT_SCALE,
           period: int = PERIOD):
  """Gives the optimizer a loss scale when `p` computes in float16."""
  if p.loss_scaling:
    optimizer.loss_scale = DynamicLossScale(init, period)
  return optimizer


def all_finite(tree) -> jax.Array:
  leaves = jax.tree.leaves(tree)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


# What a skipped step keeps: everything but the dropout RNG (which moves on)
# and the loss scale (which halves).
_KEPT_MODEL = nnx.Not(nnx.RngState)
_KEPT_OPT = nnx.Not(LossScaleState)


def scale_of(optimizer):
  """The optimizer's DynamicLossScale, or None (bfloat16, float32)."""
  return getattr(optimizer, "loss_scale", None)


def scaled_loss(optimizer, loss: jax.Array) -> jax.Array:
  """The loss to differentiate: times S under float16, else itself."""
  scaler = scale_of(optimizer)
  return loss if scaler is None else loss * scaler.scale[...]


def update(model, optimizer, grads, learning_rate, before) -> dict:
  """optimizer.update for gradients of `scaled_loss`, in place; metrics.

  Without a loss scale, the plain update ({}). With one, the gradients are
  divided by S; if any is not finite the model and optimizer states become
  `before` again (`snapshot` taken before the forward, so that BatchNorm's
  statistics of a skipped step are dropped too) and S halves. Returns
  {'loss_scale': the S this step used, 'overflow': 1.0 for a skipped
  step}.
  """
  scaler = scale_of(optimizer)
  if scaler is None:
    optimizer.update(model, grads, learning_rate=learning_rate)
    return {}
  grads = jax.tree.map(lambda g: g / scaler.scale[...], grads)
  finite = all_finite(grads)
  optimizer.update(model, grads, learning_rate=learning_rate)
  for obj, kept, old in ((model, _KEPT_MODEL, before[0]),
                         (optimizer, _KEPT_OPT, before[1])):
    state = nnx.state(obj, kept)
    new = nnx.to_pure_dict(state)
    nnx.replace_by_pure_dict(state, jax.tree.map(
        lambda n, o: jnp.where(finite, n, o), new, old))
    nnx.update(obj, state)
  used = scaler.scale[...]
  scaler.adjust(finite)
  return {"loss_scale": used, "overflow": 1.0 - finite.astype(jnp.float32)}


def snapshot(model, optimizer) -> tuple[dict, dict] | None:
  """The arrays a skipped step restores (pure dicts: immutable copies);
  None without a loss scale."""
  if scale_of(optimizer) is None:
    return None
  return (nnx.to_pure_dict(nnx.state(model, _KEPT_MODEL)),
          nnx.to_pure_dict(nnx.state(optimizer, _KEPT_OPT)))


# ---------------------------------------------------------------- checkpoints


def checkpoint_meta(opt_state) -> dict:
  """{'loss_scale': {'scale', 'good_steps'}} for a checkpoint's meta, from
  an optimizer state with a loss scale ({} without one)."""
  pure = nnx.to_pure_dict(opt_state)
  if META_KEY not in pure:
    return {}
  s = jax.device_get(pure[META_KEY])
  return {META_KEY: {"scale": float(s["scale"]),
                     "good_steps": int(s["good_steps"])}}


def without_scale(pure_opt: dict) -> dict:
  """A pure optimizer state without the loss scale (the checkpoint's
  arrays: the scale is in its meta, so that runs of either precision
  restore each other's checkpoints)."""
  return {k: v for k, v in pure_opt.items() if k != META_KEY}


def restore_scale(opt_state, meta: dict):
  """Sets the optimizer state's loss scale from a checkpoint's meta; left
  at its initial value when the meta has none."""
  saved = meta.get(META_KEY)
  pure = nnx.to_pure_dict(opt_state)
  if saved is None or META_KEY not in pure:
    return
  now = pure[META_KEY]
  nnx.replace_by_pure_dict(opt_state, {META_KEY: {
      "scale": jax.device_put(jnp.float32(saved["scale"]),
                              now["scale"].sharding),
      "good_steps": jax.device_put(jnp.int32(saved["good_steps"]),
                                   now["good_steps"].sharding)}})


def main(argv):
  """Prints the choice for this machine: [auto | bfloat16 | float16]."""
  import ml_collections  # pylint: disable=import-outside-toplevel
  asked = argv[1] if len(argv) > 1 else "auto"
  if asked not in DTYPES:
    print(f"error: the argument must be one of {DTYPES}, got {asked!r}",
          file=sys.stderr)
    return 2
  d = jax.devices()[0]
  print(f"device: {d.platform} {getattr(d, 'device_kind', '')!r}", flush=True)
  print(choose(ml_collections.ConfigDict(
      {"half_precision": True, "half_precision_dtype": asked})).describe())
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
