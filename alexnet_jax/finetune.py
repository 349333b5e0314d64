"""Fine-tuning: a run that starts from another run's (or an imported)
checkpoint, with a new fc8, frozen layers and per-layer learning rates.

  config.finetune.init_from  a workdir whose latest checkpoint (the best with
                             finetune.best) initialises the layers in
  config.finetune.keep       (conv1-fc7 by default); the others (fc8) start
                             from model.init, sized for this run's classes.
  config.finetune.freeze     layers whose parameters never change: no
                             gradient is computed for them and the optimizer
                             holds no state for them, so freezing conv1-conv5
                             also skips their backward pass.
  config.finetune.lr_scale   each layer's learning rate is
                             optim.learning_rate (and its schedule) times
                             lr_scale.<layer>.

A layer's BatchNorm (bn1 of conv1, bn2 of conv2; model.norm=batchnorm) goes
with it: kept, frozen and scaled together. A frozen layer's BatchNorm
statistics still follow the training batches.

The pretrained weights are read once, when the run starts with no checkpoint
of its own. From then on the run's own checkpoints hold everything (and name
the source in their meta), so it resumes exactly like any other run.
"""

from __future__ import annotations

import json
import os
import sys

import jax
import ml_collections
from flax import nnx

from alexnet_jax import checkpoint as checkpoint_lib
from alexnet_jax import layers
from alexnet_jax import model as model_lib
from alexnet_jax import preflight

ConfigError = preflight.ConfigError


def modules_of(layer: str) -> tuple[str, ...]:
  """The model attributes that belong to a layer: itself and its BatchNorm."""
  return (layer,) + ((layers.BATCHNORMS[layer],)
                     if layer in layers.BATCHNORMS else ())


def frozen_modules(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  return tuple(m for l in checkpoint_lib.frozen_layers(config)
               for m in modules_of(l))


def trainable(config: ml_collections.ConfigDict):
  """The nnx filter of the parameters that training changes: every Param
  but those of the frozen layers (nnx.Param itself when none is frozen)."""
  frozen = frozen_modules(config)
  if not frozen:
    return nnx.Param
  return nnx.All(nnx.Param, nnx.Not(nnx.Any(
      *(nnx.PathContains(m) for m in frozen))))


def layer_scales(config: ml_collections.ConfigDict) -> dict[str, float]:
  """{model attribute: learning-rate multiplier} for the scales != 1."""
  f = config.get("finetune")
  scales = f.lr_scale.to_dict() if f else {}
  return {m: float(s) for l, s in scales.items() if s != 1.0
          for m in modules_of(l)}


def _source(config) -> tuple[str, checkpoint_lib.Checkpoints]:
  f = config.finetune
  where = os.path.abspath(os.path.expanduser(f.init_from))
  sub = "checkpoints_best" if f.best else "checkpoints"
  if not os.path.isdir(os.path.join(where, sub)):
    kind = "best " if f.best else ""
    raise ConfigError(f"finetune.init_from: {f.init_from} holds no "
                      f"{kind}checkpoints ({sub}/); give the workdir of a "
                      f"trained run or of `python -m alexnet_jax.convert`")
  return where, checkpoint_lib.Checkpoints(where, max_to_keep=None)


def _shapes(pure: dict) -> dict:
  """{module: {leaf path: shape}} of a model state's pure dict."""
  return {name: {"".join(f".{k.key}" for k in p): tuple(x.shape) for p, x in
                 jax.tree_util.tree_flatten_with_path(tree)[0]}
          for name, tree in pure.items()}


def _check_shapes(config, source_model: dict, where: str, want: dict):
  """Each module of `want` ({module: {leaf: shape}}, this run's kept
  modules) has the same shapes in the checkpoint's model."""
  # Fields the checkpoint predates take this config's values.
  try:
    have = _shapes(nnx.to_pure_dict(nnx.state(nnx.eval_shape(
        lambda: model_lib.from_config(ml_collections.ConfigDict(
            {**config.model.to_dict(), **source_model}),
                                      rngs=nnx.Rngs(0))))))
  except (ValueError, TypeError, KeyError, AttributeError) as e:
    raise ConfigError(f"finetune.init_from: the checkpoint in {where} holds "
                      f"a model this version cannot build ({e})") from None
  for module, leaves in want.items():
    for leaf, shape in leaves.items():
      got = have.get(module, {}).get(leaf)
      if got != shape:
        layer = next((l for l in layers.NAMES if module in modules_of(l)),
                     module)  # A cuda-convnet layer is its own module.
        found = (f"has shape {got}" if got is not None
                 else "has no such parameter")
        raise ConfigError(
            f"finetune.keep: {module}{leaf} {found} in the checkpoint in "
            f"{where}, {shape} in this model; a kept layer must match the "
            f"checkpoint's model (its preset, width, towers, norm, "
            f"image_size), or leave {layer} out of finetune.keep to start "
            f"it fresh")


def _warn_preprocessing(config, where: str):
  """The pretrained layers expect the pixels their run saw: name a data.mean
  or data.std that differs from the source run's config.json."""
  try:
    with open(os.path.join(where, "config.json")) as f:
      data = json.load(f)["data"]
  except (OSError, ValueError, KeyError):
    return
  for field in ("mean", "std"):
    theirs, ours = tuple(data.get(field) or ()), tuple(config.data[field])
    if len(theirs) != len(ours) or any(
        abs(a - b) > 1e-3 for a, b in zip(theirs, ours)):
      print(f"warning: data.{field} is {ours}, the checkpoint's run used "
            f"{theirs}: the pretrained layers will see differently scaled "
            f"pixels", file=sys.stderr, flush=True)


def initialize(run, config: ml_collections.ConfigDict) -> dict:
  """Loads finetune.keep's layers from finetune.init_from into run's model
  state; returns what to record in the run's checkpoints. ConfigError names
  a source without checkpoints or a kept layer of another shape; nothing is
  written anywhere."""
  where, ckpts = _source(config)
  best = config.finetune.best
  pure = nnx.to_pure_dict(run.model_state)
  like = {m: pure[m] for l in config.finetune.keep for m in modules_of(l)
          if m in pure}
  want = _shapes(like)
  try:
    for step in ckpts.steps(best=best):
      try:
        meta = ckpts.read_meta(step, best=best)
      except Exception:  # pylint: disable=broad-except
        continue  # An unreadable step: the next older one.
      _check_shapes(config, meta.get("model_config", {}), where, want)
      try:
        loaded = ckpts.restore_partial(step, {"model": like}, best=best)
      except Exception as e:  # pylint: disable=broad-except
        checkpoint_lib.quiet_abandoned_reads()
        print(f"warning: finetune.init_from: step {step} of {where} does "
              f"not restore ({checkpoint_lib.restore_error(e)}); trying an "
              f"older one", file=sys.stderr, flush=True)
        continue
      pure.update(loaded["model"])
      nnx.replace_by_pure_dict(run.model_state, pure)
      if jax.process_index() == 0:
        _warn_preprocessing(config, where)
      return {"workdir": where, "step": step, "best": best,
              "layers": list(like)}
  finally:
    ckpts.close()
  raise ConfigError(f"finetune.init_from: no checkpoint in {where} restores")
