"""Training and evaluation: optax SGD with the paper's update, jitted steps,
exact evaluation, metrics, and orbax checkpoints that resume exactly.

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

import dataclasses
import json
import math
import os
import signal
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from alexnet_jax import checkpoint as checkpoint_lib
from alexnet_jax import input_pipeline
from alexnet_jax import model as model_lib
from alexnet_jax import preflight
from alexnet_jax import sharding


ConfigError = preflight.ConfigError  # A config value that cannot work.


class Diverged(FloatingPointError):
  """The training loss became NaN or infinite."""


# ---------------------------------------------------------------- optimizer


def _scale_by_rate_arg() -> optax.GradientTransformationExtraArgs:
  """Multiplies updates by -learning_rate, given to each update call."""
  def update(updates, state, params=None, *, learning_rate, **extra):
    del params, extra
    return jax.tree.map(lambda u: -learning_rate * u, updates), state
  return optax.GradientTransformationExtraArgs(
      lambda params: optax.EmptyState(), update)


def _decoupled_decay(rate: float, mask) -> optax.GradientTransformation:
  """Adds -learning_rate * rate * w to the final update."""
  def update(updates, state, params, *, learning_rate, **extra):
    del extra
    updates = jax.tree.map(lambda u, w: u - learning_rate * rate * w,
                           updates, params)
    return updates, state
  tx = optax.GradientTransformationExtraArgs(
      lambda params: optax.EmptyState(), update)
  return optax.masked(tx, mask) if mask is not None else tx


def create_optimizer(optim: ml_collections.ConfigDict
                     ) -> optax.GradientTransformationExtraArgs:
  """SGD with momentum and weight decay as configured (paper by default).

  `update` takes the current rate as `learning_rate=`.
  """
  # Decay applies to every parameter, or (decay_biases=False) to kernels only.
  mask = None if optim.decay_biases else (
      lambda params: jax.tree.map(lambda w: w.ndim > 1, params))
  sgd = [_scale_by_rate_arg(), optax.trace(optim.momentum)]
  mode, wd = optim.weight_decay_mode, optim.weight_decay
  if mode == "coupled":
    return optax.chain(optax.add_decayed_weights(wd, mask), *sgd)
  if mode == "decoupled":
    return optax.chain(*sgd, _decoupled_decay(wd, mask))
  if mode == "none":
    return optax.chain(*sgd)
  raise ConfigError(f"optim.weight_decay_mode must be coupled, decoupled or "
                    f"none, got {mode!r}")


SCHEDULES = preflight.SCHEDULES


class LearningRate:
  """The learning rate at each step, and the plateau rule's host state.

  constant; step (x0.1 at each of optim.step_epochs); cosine (cosine to 0 at
  the last step); plateau (the paper: x plateau_factor when the eval top-1
  error has not improved for plateau_patience evaluations, at most
  plateau_max_reductions times). Every schedule starts with a linear warmup
  over optim.warmup_epochs (0: none, the paper).
  """

  def __init__(self, optim: ml_collections.ConfigDict, steps_per_epoch: int,
               total_steps: int):
    if optim.schedule not in SCHEDULES:
      raise ConfigError(f"optim.schedule must be one of {SCHEDULES}, "
                        f"got {optim.schedule!r}")
    self.optim, self.steps_per_epoch = optim, steps_per_epoch
    self.total_steps = total_steps
    self.plateau = {"scale": 1.0, "best": None, "bad_evals": 0,
                    "reductions": 0}

  def __call__(self, step: int) -> float:
    """The rate for the update that produces `step` (1-based)."""
    o, t = self.optim, step - 1
    warmup = int(o.warmup_epochs * self.steps_per_epoch)
    # Linear warmup from lr / warmup to lr, before any schedule.
    ramp = (t + 1) / warmup if t < warmup else 1.0
    if o.schedule == "step":
      passed = sum(t >= e * self.steps_per_epoch for e in o.step_epochs)
      return ramp * o.learning_rate * 0.1 ** passed
    if o.schedule == "cosine":
      if t < warmup:
        return ramp * o.learning_rate
      frac = (t - warmup) / max(1, self.total_steps - warmup)
      return o.learning_rate * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))
    if o.schedule == "plateau":
      return ramp * o.learning_rate * self.plateau["scale"]
    return ramp * o.learning_rate

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


# ---------------------------------------------------------------- steps


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def topk_correct(scores: jax.Array, labels: jax.Array, k: int) -> jax.Array:
  """1 where the label is among the k highest scores.

  Ties count against: a network whose logits are all equal scores 0, not
  100%, and a NaN score never counts as correct.
  """
  label_score = jnp.take_along_axis(scores, labels[:, None], axis=-1)
  at_least = jnp.sum(scores >= label_score, axis=-1)
  ok = (at_least <= k) & jnp.isfinite(label_score[:, 0])
  return ok.astype(jnp.float32)


def make_steps(model_graph, opt_graph, eval_graph):
  """Pure jitted train and eval steps over split NNX state.

  train_step(model_state, opt_state, batch, learning_rate) donates both
  states. eval_step(model_state, batch) returns masked sums; a batch whose
  images are (B, crops, H, W, 3) is scored by the softmax averaged over the
  crops (the paper's 10-crop test).
  """

  def train_step(model_state, opt_state, batch, learning_rate):
    model = nnx.merge(model_graph, model_state)
    optimizer = nnx.merge(opt_graph, opt_state)

    # Rows of unreadable images have mask=False and do not count.
    mask = batch["mask"].astype(jnp.float32)
    count = jnp.maximum(mask.sum(), 1.0)

    def loss_fn(model):
      logits = model(batch["image"])
      return jnp.sum(cross_entropy(logits, batch["label"]) * mask) / count, (
          logits)

    grad_fn = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, nnx.Param),
                                 has_aux=True)
    (loss, logits), grads = grad_fn(model)
    optimizer.update(model, grads, learning_rate=learning_rate)
    correct = topk_correct(logits, batch["label"], 1)
    metrics = {"loss": loss, "accuracy": jnp.sum(correct * mask) / count}
    return nnx.state(model), nnx.state(optimizer), metrics

  def eval_step(model_state, batch):
    model = nnx.merge(eval_graph, model_state)
    images, labels = batch["image"], batch["label"]
    if images.ndim == 5:  # (B, crops, H, W, C): average the softmax.
      b, crops = images.shape[:2]
      logits = model(images.reshape(b * crops, *images.shape[2:]))
      probs = jax.nn.softmax(logits).reshape(b, crops, -1).mean(axis=1)
      nll = -jnp.log(jnp.take_along_axis(probs, labels[:, None], -1)[:, 0])
      scores = probs
    else:
      scores = model(images)
      nll = cross_entropy(scores, labels)
    mask = batch["mask"].astype(jnp.float32)
    return {"loss": jnp.sum(nll * mask),
            "top1": jnp.sum(topk_correct(scores, labels, 1) * mask),
            "top5": jnp.sum(topk_correct(scores, labels, 5) * mask),
            "count": jnp.sum(mask)}

  return (jax.jit(train_step, donate_argnums=(0, 1)), jax.jit(eval_step))


# ---------------------------------------------------------------- setup


def create_train_state(config: ml_collections.ConfigDict):
  """The model (train mode), its eval-mode graph and the optimizer."""
  try:
    model = model_lib.from_config(config.model,
                                  half_precision=config.half_precision,
                                  rngs=nnx.Rngs(config.seed))
  except ValueError as e:
    raise ConfigError(str(e)) from None
  optimizer = nnx.Optimizer(model, create_optimizer(config.optim),
                            wrt=nnx.Param)
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


@dataclasses.dataclass
class Run:
  """Everything a training or evaluation loop works on."""
  config: ml_collections.ConfigDict
  mesh: Any
  model_state: Any
  opt_state: Any
  train_step: Any
  eval_step: Any
  image_size: int
  num_params: int


def setup(config: ml_collections.ConfigDict) -> Run:
  """Mesh, model and optimizer states placed on it, and the jitted steps."""
  preflight.check_config(config)
  mesh = preflight.check_mesh(config)
  with jax.set_mesh(mesh):
    model, optimizer, eval_graph = create_train_state(config)
    model_graph, model_state = nnx.split(model)
    opt_graph, opt_state = nnx.split(optimizer)
    model_state = sharding.place(
        model_state, sharding.state_shardings(model_state, mesh))
    opt_state = sharding.place(opt_state,
                               sharding.state_shardings(opt_state, mesh))
  train_step, eval_step = make_steps(model_graph, opt_graph, eval_graph)
  return Run(config, mesh, model_state, opt_state, train_step, eval_step,
             model.image_size, model_lib.count_params(model))


def _pure(state) -> dict:
  return nnx.to_pure_dict(state)


def restore_into(run: Run, ckpts: checkpoint_lib.Checkpoints, step: int, *,
                 best: bool = False) -> dict:
  """Loads checkpoint `step` into run's states; returns its meta."""
  meta = ckpts.read_meta(step, best=best)
  check_compatible(meta, run.config)
  like = {"model": _pure(run.model_state), "opt": _pure(run.opt_state)}
  state, meta = ckpts.restore(step, like, best=best)
  nnx.replace_by_pure_dict(run.model_state, state["model"])
  nnx.replace_by_pure_dict(run.opt_state, state["opt"])
  return meta


def _restore_error(error: BaseException) -> str:
  """What was wrong, in a line: the innermost cause's first line (for a
  damaged file, TensorStore's 'Error reading ... byte range ...')."""
  while (error.__cause__ or error.__context__) is not None:
    error = error.__cause__ or error.__context__
  lines = [l.strip() for l in str(error).splitlines() if l.strip()]
  text = lines[0] if lines else type(error).__name__
  return text.split(" See full TensorStore details")[0][:240]


def _quiet_abandoned_reads():
  """After a restore fails, orbax's reads of the other arrays still finish
  on TensorStore threads and report to an event loop that has closed:
  'Exception ignored in <coroutine _read_array_index_and_device_put>'
  tracebacks, possibly much later. They say nothing the warning does not."""
  previous = sys.unraisablehook
  if getattr(previous, "quiets_orbax", False):
    return

  def hook(unraisable):
    text = f"{unraisable.object!r} {unraisable.exc_value!r}"
    if ("_read_array_index_and_device_put" in text or
        "Event loop is closed" in text):
      return
    previous(unraisable)

  hook.quiets_orbax = True
  sys.unraisablehook = hook


def restore_latest(run: Run, ckpts: checkpoint_lib.Checkpoints, *,
                   best: bool = False, set_aside: bool = False) -> dict | None:
  """Restores the newest checkpoint that restores; its meta, or None if the
  workdir holds none.

  A step that does not restore (a truncated or missing file, a half-written
  save) is named in a warning and skipped; with set_aside (training, one
  process) it is moved to checkpoints_corrupt/ once an older step has
  restored, so that the run saves that step again. A checkpoint of another
  model is a ConfigError, as is a workdir where no step restores; in both
  cases nothing in the workdir has changed.
  """
  steps = ckpts.steps(best=best)
  failed = []
  for step in steps:
    try:
      meta = restore_into(run, ckpts, step, best=best)
    except ConfigError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      # Orbax and TensorStore raise assorted types for unreadable files.
      _quiet_abandoned_reads()
      failed.append((step, _restore_error(e)))
      continue
    for bad, why in failed:
      if set_aside and jax.process_count() == 1:
        where = ckpts.set_aside(bad)
        print(f"warning: checkpoint step {bad} does not restore ({why}); "
              f"moved to {where}; resuming from step {step}",
              file=sys.stderr, flush=True)
      else:
        print(f"warning: checkpoint step {bad} does not restore ({why}); "
              f"using step {step}", file=sys.stderr, flush=True)
    return meta
  if not failed:
    return None
  where = ckpts.directory(best=best)
  dirs = ", ".join(str(s) for s, _ in failed)
  raise ConfigError(
      f"no checkpoint in {where} restores (step {failed[0][0]}: "
      f"{failed[0][1]}); move the step directories ({dirs}) out of {where} "
      f"to start this run over, or use a new --workdir")


def check_compatible(meta: dict, config: ml_collections.ConfigDict):
  """A checkpoint of another model is a user error, never overwritten."""
  saved, now = meta.get("model_config", {}), config.model.to_dict()
  diff = [f"model.{k}={saved.get(k)!r} (now {now.get(k)!r})"
          for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)]
  if diff:
    raise ConfigError(f"the workdir holds a checkpoint of a different model: "
                      f"{', '.join(diff)}; use a new --workdir or the same "
                      f"model config")


# ---------------------------------------------------------------- logging


class MetricsLog:
  """Console lines, metrics.jsonl and TensorBoard events (process 0 only)."""

  def __init__(self, workdir: str):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.tb = None
    if self.enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, scalars: dict[str, float], suffix: str = "",
            epoch: float | None = None):
    """One row: console, TensorBoard, and metrics.jsonl (which also gets the
    epoch and the wall time, for curves per epoch and against time)."""
    if not self.enabled:
      return
    row = {"step": step, **scalars, "wall_time": round(time.time(), 3)}
    if epoch is not None:
      row["epoch"] = round(epoch, 6)
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")
    for k, v in scalars.items():
      self.tb.add_scalar(k, v, step)
    self.tb.flush()
    text = "  ".join(f"{k}={v:.4g}" for k, v in scalars.items())
    print(f"step {step:>7d}  {text}{suffix}", flush=True)

  def info(self, text: str):
    if self.enabled:
      print(text, flush=True)

  def close(self):
    if self.tb is not None:
      self.tb.close()


def _eta(seconds: float) -> str:
  m, s = divmod(int(seconds), 60)
  h, m = divmod(m, 60)
  return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class StopRequest:
  """SIGTERM/SIGINT: the loop saves a checkpoint and exits after this step.

  One process: a signal handler sets a flag. Several processes: every process
  must stop at the same step, so the decision is JAX's preemption sync point
  (its service catches SIGTERM once jax.distributed is initialized), read
  through orbax's `reached_preemption`.
  """

  def __init__(self):
    self.signal = None
    self._previous = {}

  def __enter__(self):
    if jax.process_count() == 1:
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    if self.signal is not None:  # A second signal: stop without waiting.
      raise KeyboardInterrupt
    self.signal = signal.Signals(signum).name

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def requested(self, step: int, ckpts) -> bool:
    if jax.process_count() > 1:
      if ckpts.latest.reached_preemption(step):
        self.signal = "preemption"
    return self.signal is not None


# ---------------------------------------------------------------- loops


def data_slice(run: Run) -> dict[str, int]:
  """Which slice of each global batch this process loads, from the mesh.

  Usually (process index, process count); when the `model` axis spans
  processes, the processes of a tower pair load the same rows.
  """
  rows = sharding.local_batch_rows(run.mesh, run.config.batch_size)
  per = rows.stop - rows.start
  return {"process_index": rows.start // per,
          "process_count": run.config.batch_size // per}


def evaluate(run: Run) -> dict[str, float]:
  """Top-1/top-5 error and loss over every evaluation example exactly once."""
  _, batches = input_pipeline.eval_iterator(
      run.config, image_size=run.image_size, **data_slice(run))
  totals = None
  for batch in input_pipeline.prefetch_to_device(
      batches, sharding.batch_sharding(run.mesh)):
    out = run.eval_step(run.model_state, batch)
    totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
  totals = {k: float(v) for k, v in jax.device_get(totals).items()}
  n = totals["count"]
  metrics = {"eval_loss": totals["loss"] / n,
             "eval_top1_error": 1.0 - totals["top1"] / n,
             "eval_top5_error": 1.0 - totals["top5"] / n,
             "eval_examples": n}
  if batches.num_skipped:
    metrics["eval_skipped_images"] = batches.num_skipped
  return metrics


def _write_config(config, workdir):
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> dict[str, Any]:
  """Trains as configured (resuming from the workdir), returns last metrics.

  Every check (preflight.py, then the resumable checkpoint) runs before
  anything is compiled or written: ConfigError / input_pipeline.DataError /
  sharding.MeshError leave the workdir as it was. Diverged (a non-finite
  loss) keeps the last good checkpoint.
  """
  preflight.run(config, workdir, train=True,
                process_count=jax.process_count())
  run = setup(config)
  ckpts = checkpoint_lib.Checkpoints(
      workdir, max_to_keep=config.max_checkpoints_to_keep)
  try:
    meta = restore_latest(run, ckpts, set_aside=True) or {}
    os.makedirs(workdir, exist_ok=True)
    log = MetricsLog(workdir)
    try:
      return _train_loop(run, ckpts, log, workdir, meta)
    finally:
      log.close()
  finally:
    ckpts.close()


def _train_loop(run: Run, ckpts, log: MetricsLog, workdir: str, meta: dict):
  config = run.config
  start = meta.get("step", 0)
  if start:
    log.info(f"resuming from the checkpoint at step {start}")
  # The iterator starts at the checkpoint's step: its position is the step.
  info, train_batches = input_pipeline.train_iterator(
      config, image_size=run.image_size, start_step=start, **data_slice(run))
  steps_per_epoch, num_steps = steps_for(config, info.num_examples)
  lr = LearningRate(config.optim, steps_per_epoch, num_steps)
  lr.plateau = meta.get("plateau", lr.plateau)
  best = meta.get("best_eval_top1_error")
  _write_config(config, workdir)
  if start >= num_steps:
    log.info(f"the checkpoint at step {start} already reaches num_train_steps "
             f"{num_steps}: nothing to train (--mode=eval evaluates it)")
    return {"step": start}
  batches = input_pipeline.prefetch_to_device(
      train_batches, sharding.batch_sharding(run.mesh))

  log.info(f"model: {run.num_params:,} parameters, {run.image_size}x"
           f"{run.image_size} input; {num_steps} steps ({steps_per_epoch} per "
           f"epoch) at batch {config.batch_size} on mesh "
           f"{dict(run.mesh.shape)}")
  eval_every = config.eval_every_steps
  if eval_every <= 0:
    eval_every = steps_per_epoch

  def meta(step):
    return {"step": step, "plateau": lr.plateau, "best_eval_top1_error": best,
            "model_config": config.model.to_dict()}

  def state():
    return {"model": _pure(run.model_state), "opt": _pure(run.opt_state)}

  pending, window_start, window_steps = [], time.perf_counter(), 0
  train_start, last = time.perf_counter(), {}

  def flush_metrics(step):
    """Fetches pending step metrics; raises Diverged on a non-finite loss."""
    nonlocal pending, window_start, window_steps
    if not pending:
      return
    fetched = jax.device_get(pending)
    for i, m in enumerate(fetched):
      if not np.isfinite(m["loss"]):
        bad = step - len(fetched) + 1 + i
        good = ckpts.latest_step()
        kept = (f"the last good checkpoint (step {good}) is kept" if good
                else "no checkpoint had been saved")
        raise Diverged(f"the training loss is {m['loss']} at step {bad}; "
                       f"{kept}; lower optim.learning_rate (or see README, "
                       f"training notes) and rerun")
    scalars = {f"train_{k}": float(np.mean([m[k] for m in fetched]))
               for k in fetched[0]}
    elapsed = time.perf_counter() - window_start
    scalars["learning_rate"] = lr(step)
    scalars["images_per_sec"] = window_steps * config.batch_size / elapsed
    if train_batches.num_skipped:
      scalars["train_skipped_images"] = train_batches.num_skipped
    done = step - start
    rate = done / (time.perf_counter() - train_start)
    epoch = step / steps_per_epoch
    log.write(step, scalars, f"  epoch {epoch:.2f}  "
              f"ETA {_eta((num_steps - step) / max(rate, 1e-9))}", epoch)
    last.update(scalars)
    pending, window_start, window_steps = [], time.perf_counter(), 0

  with jax.set_mesh(run.mesh), StopRequest() as stop:
    for step in range(start + 1, num_steps + 1):
      batch = next(batches)
      run.model_state, run.opt_state, metrics = run.train_step(
          run.model_state, run.opt_state, batch, jnp.float32(lr(step)))
      pending.append(metrics)
      window_steps += 1
      stopping = stop.requested(step, ckpts)
      end_of_epoch = step % steps_per_epoch == 0
      if (step % config.log_every_steps == 0 or step == num_steps or
          stopping):
        flush_metrics(step)
      best_metrics = None
      if step % eval_every == 0 or step == num_steps:
        flush_metrics(step)
        eval_metrics = evaluate(run)
        log.write(step, eval_metrics, epoch=step / steps_per_epoch)
        last.update(eval_metrics)
        if lr.observe(eval_metrics["eval_top1_error"]):
          log.info(f"eval error has not improved for "
                   f"{config.optim.plateau_patience} evaluations: learning "
                   f"rate now {lr(step + 1):.3g}")
        if best is None or eval_metrics["eval_top1_error"] < best:
          best = eval_metrics["eval_top1_error"]
          best_metrics = {"eval_top1_error": best}
        window_start = time.perf_counter()
      if (step % config.checkpoint_every_steps == 0 or end_of_epoch or
          step == num_steps or stopping or best_metrics is not None):
        flush_metrics(step)  # Never save after an unchecked loss.
        ckpts.save(step, state(), meta(step), best_metrics=best_metrics)
      if stopping:
        ckpts.wait()
        log.info(f"stopped by {stop.signal} at step {step}; checkpoint "
                 f"saved; run the same command again to resume")
        last["stopped_at"] = step
        return last
    ckpts.wait()
  return last


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str, *,
                        best: bool = False) -> dict[str, Any]:
  """Evaluates the latest (or best) checkpoint in the workdir that restores.

  Changes nothing in the workdir (a step that does not restore is named in
  a warning and left in place).
  """
  preflight.run(config, workdir, train=False,
                process_count=jax.process_count())
  kind = "best " if best else ""
  if not os.path.isdir(os.path.join(
      workdir, "checkpoints_best" if best else "checkpoints")):
    raise ConfigError(f"no {kind}checkpoints in {workdir}; train first with "
                      f"--mode=train")
  run = setup(config)
  ckpts = checkpoint_lib.Checkpoints(
      workdir, max_to_keep=config.max_checkpoints_to_keep)
  try:
    meta = restore_latest(run, ckpts, best=best)
    if meta is None:
      raise ConfigError(f"no {kind}checkpoint in {workdir}; train first with "
                        f"--mode=train")
    with jax.set_mesh(run.mesh):
      metrics = evaluate(run)
  finally:
    ckpts.close()
  step = meta["step"]
  text = "  ".join(f"{k}={v:.4g}" for k, v in metrics.items())
  if jax.process_index() == 0:
    print(f"checkpoint step {step}: {text}", flush=True)
  return {"step": step, **metrics}
