"""Training and evaluation: optax SGD with the paper's update, jitted steps.

The paper's update (section 5), with learning rate e, momentum m, decay wd:
    v <- m * v - e * wd * w - e * dL/dw,    w <- w + v
is `optax.chain(add_decayed_weights(wd), scale_by_learning_rate(e), trace(m))`:
the learning rate multiplies each gradient as it enters the velocity, so a
rate change does not rescale the velocity already accumulated (unlike
`optax.sgd`, which scales the whole trace by the current rate).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx

from alexnet_jax import input_pipeline
from alexnet_jax import model as model_lib
from alexnet_jax import sharding


class ConfigError(ValueError):
  """A config value that cannot work (a user error)."""


# ---------------------------------------------------------------- optimizer


def learning_rate_schedule(optim: ml_collections.ConfigDict,
                           steps_per_epoch: int) -> optax.Schedule:
  """constant, or step: divided by 10 at each of optim.step_epochs."""
  lr = optim.learning_rate
  if optim.schedule == "constant":
    return optax.constant_schedule(lr)
  if optim.schedule == "step":
    bounds = {int(e * steps_per_epoch): 0.1 for e in optim.step_epochs}
    return optax.piecewise_constant_schedule(lr, bounds)
  raise ConfigError(f"optim.schedule must be constant or step, "
                    f"got {optim.schedule!r}")


def _decoupled_decay(rate: float, schedule: optax.Schedule,
                     mask) -> optax.GradientTransformation:
  """Adds -lr(step) * rate * w to the final update (decoupled decay)."""
  def init(params):
    del params
    return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

  def update(updates, state, params):
    lr = schedule(state.count)
    updates = jax.tree.map(lambda u, w: u - lr * rate * w, updates, params)
    return updates, optax.ScaleByScheduleState(count=state.count + 1)

  tx = optax.GradientTransformation(init, update)
  return optax.masked(tx, mask) if mask is not None else tx


def create_optimizer(optim: ml_collections.ConfigDict,
                     steps_per_epoch: int) -> optax.GradientTransformation:
  """SGD with momentum and weight decay as configured (paper by default)."""
  schedule = learning_rate_schedule(optim, steps_per_epoch)
  # Decay applies to every parameter, or (decay_biases=False) to kernels only.
  mask = None if optim.decay_biases else (
      lambda params: jax.tree.map(lambda w: w.ndim > 1, params))
  sgd = [optax.scale_by_learning_rate(schedule), optax.trace(optim.momentum)]
  mode, wd = optim.weight_decay_mode, optim.weight_decay
  if mode == "coupled":
    decay = optax.add_decayed_weights(wd, mask)
    return optax.chain(decay, *sgd)
  if mode == "decoupled":
    return optax.chain(*sgd, _decoupled_decay(wd, schedule, mask))
  if mode == "none":
    return optax.chain(*sgd)
  raise ConfigError(f"optim.weight_decay_mode must be coupled, decoupled or "
                    f"none, got {mode!r}")


# ---------------------------------------------------------------- steps


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def topk_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
  """1 where the label is among the k highest logits.

  Ties count against: a network whose logits are all equal scores 0, not
  100%, and a NaN logit never counts as correct.
  """
  label_logit = jnp.take_along_axis(logits, labels[:, None], axis=-1)
  at_least = jnp.sum(logits >= label_logit, axis=-1)
  ok = (at_least <= k) & jnp.isfinite(label_logit[:, 0])
  return ok.astype(jnp.float32)


def make_steps(model_graph, opt_graph, eval_graph):
  """Pure jitted train and eval steps over split NNX state."""

  def train_step(model_state, opt_state, batch):
    model = nnx.merge(model_graph, model_state)
    optimizer = nnx.merge(opt_graph, opt_state)

    def loss_fn(model):
      logits = model(batch["image"])
      return cross_entropy(logits, batch["label"]).mean(), logits

    grad_fn = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, nnx.Param),
                                 has_aux=True)
    (loss, logits), grads = grad_fn(model)
    optimizer.update(model, grads)
    metrics = {"loss": loss,
               "accuracy": topk_correct(logits, batch["label"], 1).mean()}
    return nnx.state(model), nnx.state(optimizer), metrics

  def eval_step(model_state, batch):
    model = nnx.merge(eval_graph, model_state)
    logits = model(batch["image"])
    mask = batch["mask"].astype(jnp.float32)
    return {"loss": jnp.sum(cross_entropy(logits, batch["label"]) * mask),
            "top1": jnp.sum(topk_correct(logits, batch["label"], 1) * mask),
            "top5": jnp.sum(topk_correct(logits, batch["label"], 5) * mask),
            "count": jnp.sum(mask)}

  return (jax.jit(train_step, donate_argnums=(0, 1)), jax.jit(eval_step))


# ---------------------------------------------------------------- setup


def create_train_state(config: ml_collections.ConfigDict,
                       steps_per_epoch: int):
  """The model (train mode), its eval-mode graph and the optimizer."""
  try:
    model = model_lib.from_config(config.model,
                                  half_precision=config.half_precision,
                                  rngs=nnx.Rngs(config.seed))
  except ValueError as e:
    raise ConfigError(str(e)) from None
  tx = create_optimizer(config.optim, steps_per_epoch)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  model.eval()
  eval_graph, _ = nnx.split(model)
  model.train()
  return model, optimizer, eval_graph


def steps_for(config, num_train_examples: int) -> tuple[int, int]:
  """(steps per epoch, total training steps) from epochs or num_train_steps."""
  steps_per_epoch = max(1, num_train_examples // config.batch_size)
  if config.num_train_steps > 0:
    return steps_per_epoch, config.num_train_steps
  return steps_per_epoch, int(config.num_epochs * steps_per_epoch)


def _validate(config):
  if config.batch_size < 1:
    raise ConfigError(f"batch_size must be positive, got {config.batch_size}")
  if config.batch_size % jax.device_count():
    raise ConfigError(f"batch_size {config.batch_size} is not divisible by "
                      f"the {jax.device_count()} devices")


class MetricsLog:
  """metrics.jsonl rows and console lines, from process 0 only."""

  def __init__(self, workdir: str):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")

  def write(self, step: int, scalars: dict[str, float]):
    if not self.enabled:
      return
    with open(self.path, "a") as f:
      f.write(json.dumps({"step": step, **scalars}) + "\n")
    text = "  ".join(f"{k}={v:.4g}" for k, v in scalars.items())
    print(f"step {step:>7d}  {text}", flush=True)


# ---------------------------------------------------------------- loops


def evaluate(eval_step, model_state, config, mesh, image_size: int):
  """Top-1/top-5 error and loss over every evaluation example exactly once."""
  _, batches = input_pipeline.eval_iterator(
      config, image_size=image_size, process_index=jax.process_index(),
      process_count=jax.process_count())
  batch_sharding = sharding.batch_sharding(mesh)
  totals = None
  for batch in batches:
    out = eval_step(model_state, _to_device(batch, batch_sharding))
    totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
  totals = jax.device_get(totals)
  totals = {k: float(v) for k, v in totals.items()}
  n = totals["count"]
  return {"eval_loss": totals["loss"] / n,
          "eval_top1_error": 1.0 - totals["top1"] / n,
          "eval_top5_error": 1.0 - totals["top5"] / n,
          "eval_examples": n}


def _to_device(batch: dict[str, np.ndarray], sharding) -> dict[str, Any]:
  return {k: jax.make_array_from_process_local_data(sharding, v)
          for k, v in batch.items()}


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> dict[str, float]:
  """Trains as configured, evaluates, and returns the last metrics."""
  _validate(config)
  mesh = sharding.create_mesh(config.mesh)
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))

  with jax.set_mesh(mesh):
    image_size = model_lib.input_size(config.model)
    info, batches = input_pipeline.train_iterator(
        config, image_size=image_size, process_index=jax.process_index(),
        process_count=jax.process_count())
    steps_per_epoch, num_steps = steps_for(config, info.num_examples)
    model, optimizer, eval_graph = create_train_state(config, steps_per_epoch)
    schedule = learning_rate_schedule(config.optim, steps_per_epoch)

    model_graph, model_state = nnx.split(model)
    opt_graph, opt_state = nnx.split(optimizer)
    model_state = jax.device_put(
        model_state, sharding.state_shardings(model_state, mesh))
    opt_state = jax.device_put(opt_state,
                               sharding.state_shardings(opt_state, mesh))
    train_step, eval_step = make_steps(model_graph, opt_graph, eval_graph)
    batch_sharding = sharding.batch_sharding(mesh)

    log = MetricsLog(workdir)
    if log.enabled:
      print(f"model: {model_lib.count_params(model):,} parameters, "
            f"{image_size}x{image_size} input; {num_steps} steps "
            f"({steps_per_epoch} per epoch) at batch {config.batch_size} on "
            f"mesh {dict(mesh.shape)}", flush=True)
    del model, optimizer

    eval_every = config.eval_every_steps
    if eval_every <= 0:
      eval_every = steps_per_epoch
    pending, window_start, window_steps = [], time.perf_counter(), 0
    last = {}
    for step in range(1, num_steps + 1):
      batch = _to_device(next(batches), batch_sharding)
      model_state, opt_state, metrics = train_step(model_state, opt_state,
                                                   batch)
      pending.append(metrics)
      window_steps += 1
      if step % config.log_every_steps == 0 or step == num_steps:
        pending = jax.device_get(pending)
        elapsed = time.perf_counter() - window_start
        last = {f"train_{k}": float(np.mean([m[k] for m in pending]))
                for k in pending[0]}
        if not np.isfinite(last["train_loss"]):
          raise FloatingPointError(f"non-finite training loss at step {step}")
        last["learning_rate"] = float(schedule(step - 1))
        last["images_per_sec"] = window_steps * config.batch_size / elapsed
        log.write(step, last)
        pending, window_start, window_steps = [], time.perf_counter(), 0
      if step % eval_every == 0 or step == num_steps:
        eval_metrics = evaluate(eval_step, model_state, config, mesh,
                                image_size)
        log.write(step, eval_metrics)
        last.update(eval_metrics)
        window_start = time.perf_counter()
  return last
