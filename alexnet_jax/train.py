"""Training and evaluation: setup, the train loop, evaluating a checkpoint.

The pieces live beside it: the paper's optimizer and the learning-rate
schedules in optim.py, the jitted steps in steps.py, exact evaluation in
evaluation.py, console/metrics/stop signals in progress.py, orbax
checkpoints and resuming in checkpoint.py, the config against the
checkpoint's in resume_check.py, the workdir's lock and failed writes in
workdir.py.
The loop below reads top to bottom: one train step, then whatever is due at
that step (a log line, an evaluation, a checkpoint, a stop).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from alexnet_jax import checkpoint as checkpoint_lib
from alexnet_jax import evaluation
from alexnet_jax import finetune
from alexnet_jax import input_pipeline
from alexnet_jax import model as model_lib
from alexnet_jax import optim
from alexnet_jax import precision
from alexnet_jax import preprocess
from alexnet_jax import preflight
from alexnet_jax import progress
from alexnet_jax import resume_check
from alexnet_jax import sharding
from alexnet_jax import steps
from alexnet_jax import workdir as workdir_lib


ConfigError = preflight.ConfigError  # A config value that cannot work.
Diverged = progress.Diverged  # A non-finite training loss.
data_slice = evaluation.data_slice  # The rows of a batch this process loads.
evaluate = evaluation.evaluate  # A split's errors, every example once.


# ---------------------------------------------------------------- setup


def create_train_state(config: ml_collections.ConfigDict):
  """The model (train mode), its eval-mode graph and the optimizer (with a
  loss scale when the compute dtype is float16: precision.py)."""
  try:
    prec = precision.choose(config)
    model = model_lib.from_config(config.model, dtype=prec.compute_dtype,
                                  rngs=nnx.Rngs(config.seed))
  except ValueError as e:
    raise ConfigError(str(e)) from None
  optimizer = precision.attach(nnx.Optimizer(
      model, optim.create_optimizer(config.optim,
                                    finetune.layer_scales(config)),
      wrt=finetune.trainable(config)), prec)
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
  eval_graph: Any = None  # The model's eval-mode graph (predict's forward).
  num_trained: int | None = None  # Parameters training changes (not frozen).


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
  wrt = finetune.trainable(config)
  train_step, eval_step = steps.make_steps(
      model_graph, opt_graph, eval_graph, wrt=wrt,
      finish=preprocess.device_finish(config.data))
  return Run(config, mesh, model_state, opt_state, train_step, eval_step,
             model.image_size, model_lib.count_params(model), eval_graph,
             model_lib.count_params(model, wrt))


# ---------------------------------------------------------------- loops


def write_config(config, workdir):
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       allow_config_change: bool = False) -> dict[str, Any]:
  """Trains as configured (resuming from the workdir), returns last metrics.

  Every check (preflight.py, the workdir's lock, the resumable checkpoint,
  the config against the checkpoint's: resume_check.py, which
  allow_config_change relaxes) runs before anything is compiled or written:
  a user error (ConfigError, DataError, MeshError, WorkdirError) leaves the
  workdir as it was. Diverged (a non-finite loss) and WorkdirError for a
  failed write (a full disk) keep the last complete checkpoint.
  """
  splits = preflight.run(config, workdir, train=True,
                         process_count=jax.process_count())
  with workdir_lib.held(workdir):
    run = setup(config)
    ckpts = checkpoint_lib.Checkpoints(
        workdir, max_to_keep=config.max_checkpoints_to_keep)
    try:
      meta = checkpoint_lib.restore_latest(run, ckpts, set_aside=True) or {}
      resume_check.check(
          config, meta, workdir, rows=data_slice(run)["rows"],
          num_examples=splits[config.data.train_split].num_examples,
          allow=allow_config_change)
      if not meta and config.get("finetune") and config.finetune.init_from:
        # A new run: the pretrained layers, once; its checkpoints hold them.
        meta = {"initialized_from": finetune.initialize(run, config)}
      log = progress.MetricsLog(workdir)
      try:
        return _Loop(run, ckpts, log, workdir, meta).train()
      finally:
        log.close()
    finally:
      ckpts.close()


def _itstime(step: int, every: int, last: int) -> bool:
  """Something done every `every` steps is due at `step` (and at the last)."""
  return step == last or (every > 0 and step % every == 0)


class _Loop:
  """One training run from the checkpoint's step to num_steps.

  The state that outlives a step (the learning rate's plateau state, the
  best eval error, the metrics window, the last metrics) is held here, so
  that each thing the loop does at a step is a method that reads it.
  """

  def __init__(self, run: Run, ckpts, log: progress.MetricsLog, workdir: str,
               meta: dict):
    config = self.config = run.config
    self.run, self.ckpts, self.log, self.workdir = run, ckpts, log, workdir
    self.start = meta.get("step", 0)
    # The iterator starts at the checkpoint's step: its position is the step.
    info, self.train_batches = input_pipeline.train_iterator(
        config, image_size=run.image_size, start_step=self.start,
        **data_slice(run))
    self.steps_per_epoch, self.num_steps = steps_for(config,
                                                     info.num_examples)
    # Saved with every checkpoint, so that predict needs no data set.
    self.class_names = list(info.class_names) or [
        f"class {i}" for i in range(config.model.num_classes)]
    self.lr = optim.LearningRate(config.optim, self.steps_per_epoch,
                                 self.num_steps)
    self.lr.plateau = meta.get("plateau", self.lr.plateau)
    self.best = meta.get("best_eval_top1_error")
    # An evaluation that a stop signal interrupted runs first on resume;
    # the test split's, after the last step, until metrics.jsonl holds it.
    self.eval_pending = meta.get("eval_pending", False)
    self.test_pending = False
    self.eval_every = (config.eval_every_steps if config.eval_every_steps > 0
                       else self.steps_per_epoch)
    self.window = progress.Window(self.start, self.num_steps,
                                  config.batch_size)
    self.initialized_from = meta.get("initialized_from")
    self.last = {}

  def train(self) -> dict[str, Any]:
    """Runs the steps; the last metrics (with stopped_at after a signal)."""
    config, run, start = self.config, self.run, self.start
    if start:
      self.log.info(f"resuming from the checkpoint at step {start}")
    elif self.initialized_from:
      src = self.initialized_from
      self.log.info(f"fine-tuning: {', '.join(src['layers'])} from step "
                    f"{src['step']} of {src['workdir']}; the other layers "
                    f"start from model.init={config.model.get('init')}")
    write_config(config, self.workdir)
    with jax.set_mesh(run.mesh), progress.StopRequest(
        self.ckpts.latest, start, self.num_steps) as stop:
      if self.eval_pending:
        improved = self._evaluate(start, stop)
        if self.eval_pending:  # Interrupted again.
          return self._stopped(start, stop)
        if improved:
          self._save(start, True)
      if start >= self.num_steps:
        self.log.info(f"the checkpoint at step {start} already reaches "
                      f"num_train_steps {self.num_steps}: nothing to train "
                      f"(--mode=eval evaluates it)")
        if not self._test(stop):
          return self._stopped(start, stop)
        return {"step": start, **self.last}
      frozen = checkpoint_lib.frozen_layers(config)
      trained = (f" ({run.num_trained:,} trained; {', '.join(frozen)} "
                 f"frozen)" if frozen else "")
      self.log.info(
          f"model: {run.num_params:,} parameters{trained}, {run.image_size}x"
          f"{run.image_size} input; {self.num_steps} steps "
          f"({self.steps_per_epoch} per epoch) at batch {config.batch_size} "
          f"on mesh {dict(run.mesh.shape)}")
      precision.log_choice(precision.choose(config))
      batches = input_pipeline.prefetch_to_device(
          self.train_batches, sharding.batch_sharding(run.mesh))
      self.window.restart(run=True)
      for step in range(start + 1, self.num_steps + 1):
        run.model_state, run.opt_state, metrics = run.train_step(
            run.model_state, run.opt_state, next(batches),
            jnp.float32(self.lr(step)))
        self.window.add(metrics)
        stopping = stop.requested(step)
        if stopping or _itstime(step, config.log_every_steps, self.num_steps):
          self._log_train(step)
        improved = False
        if _itstime(step, self.eval_every, self.num_steps):
          self.eval_pending = True
          if not stopping:
            self._log_train(step)
            improved = self._evaluate(step, stop)
            stopping = self.eval_pending  # A signal interrupted it.
        if (stopping or improved or
            _itstime(step, config.checkpoint_every_steps, self.num_steps) or
            step % self.steps_per_epoch == 0):
          self._save(step, improved)
        if stopping:
          return self._stopped(step, stop)
      self.ckpts.wait()
      if not self._test(stop):
        return self._stopped(self.num_steps, stop)
    return self.last

  def _test(self, stop) -> bool:
    """data.test_split, evaluated once after the last step (every decision
    of the run was made on data.eval_split), unless metrics.jsonl holds it
    already; False when a stop signal interrupted it."""
    split = self.config.data.get("test_split")
    if not split or self.log.logged(self.num_steps, "test_top1_error"):
      return True
    metrics = evaluate(self.run, stop, split=split, prefix="test")
    self.test_pending = metrics is None
    if metrics is not None:
      self.log.write(self.num_steps, metrics,
                     f"  (test split {split!r}, once, at the end)")
      self.last.update(metrics)
    return not self.test_pending

  def _log_train(self, step: int):
    """A train line from the steps not yet fetched (Diverged if a loss is
    not finite)."""
    means = self.window.fetch(step, self.ckpts.latest_step())
    if means is None:
      return
    scalars = {**means, "learning_rate": self.lr(step),
               "images_per_sec": self.window.images_per_sec}
    if self.train_batches.num_skipped:
      scalars["train_skipped_images"] = self.train_batches.num_skipped
    epoch = step / self.steps_per_epoch
    self.log.write(step, scalars, f"  epoch {epoch:.2f}  ETA "
                   f"{self.window.eta(step)}", epoch)
    self.last.update(scalars)

  def _evaluate(self, step: int, stop) -> bool:
    """Evaluates at `step`, feeds the plateau rule; True when the eval error
    is the best so far. A signal during it leaves eval_pending set."""
    metrics = evaluate(self.run, stop)
    self.window.restart()
    if metrics is None:
      return False
    self.eval_pending = False
    self.log.write(step, metrics, epoch=step / self.steps_per_epoch)
    self.last.update(metrics)
    if self.lr.observe(metrics["eval_top1_error"]):
      self.log.info(f"eval error has not improved for "
                    f"{self.config.optim.plateau_patience} evaluations: "
                    f"learning rate now {self.lr(step + 1):.3g}")
    if self.best is None or metrics["eval_top1_error"] < self.best:
      self.best = metrics["eval_top1_error"]
      return True
    return False

  def _save(self, step: int, best: bool):
    """Saves step (asynchronously); into the best slot too when `best`."""
    self._log_train(step)  # Never save after an unchecked loss.
    meta = {"step": step, "plateau": self.lr.plateau,
            "best_eval_top1_error": self.best,
            "eval_pending": self.eval_pending,
            "model_config": self.config.model.to_dict(),
            "config": resume_check.as_json(self.config),
            "data_shards": resume_check.data_shards(self.config,
                                                    **data_slice(self.run)),
            "frozen": sorted(checkpoint_lib.frozen_layers(self.config)),
            "class_names": self.class_names,
            **precision.checkpoint_meta(self.run.opt_state)}
    if self.initialized_from:
      meta["initialized_from"] = self.initialized_from
    self.ckpts.save(step, checkpoint_lib.run_state(self.run), meta,
                    best_metrics={"eval_top1_error": self.best} if best
                    else None)

  def _stopped(self, step: int, stop) -> dict[str, Any]:
    self._save(step, False)
    self.ckpts.wait()
    pending = (" (the evaluation at this step runs first on resume)"
               if self.eval_pending else
               " (the test split's evaluation runs on resume)"
               if self.test_pending else "")
    self.log.info(f"stopped by {stop.signal} at step {step}; checkpoint "
                  f"saved{pending}; run the same command again to resume")
    self.last["stopped_at"] = step
    return self.last


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str, *,
                        best: bool = False, quiet: bool = False
                        ) -> dict[str, Any]:
  """Evaluates the latest (or best) checkpoint in the workdir that restores
  ({"step", metrics}; printed as a line unless quiet).

  Changes nothing in the workdir (a step that does not restore is named in
  a warning and left in place).
  """
  preflight.run(config, workdir, train=False,
                process_count=jax.process_count())
  run, meta = restore_trained(config, workdir, best=best)
  with jax.set_mesh(run.mesh):
    metrics = evaluate(run)
  step = meta["step"]
  text = "  ".join(f"{k}={v:.4g}" for k, v in metrics.items())
  if jax.process_index() == 0 and not quiet:
    print(f"checkpoint step {step}: {text}", flush=True)
  return {"step": step, **metrics}


def restore_trained(config: ml_collections.ConfigDict, workdir: str, *,
                    best: bool = False) -> tuple[Run, dict]:
  """(run, meta): the workdir's latest (or best) checkpoint that restores,
  loaded into a fresh Run, for eval, predict and the figures. Changes nothing
  in the workdir; ConfigError when it holds no checkpoint."""
  kind = "best " if best else ""
  if not os.path.isdir(os.path.join(
      workdir, "checkpoints_best" if best else "checkpoints")):
    raise ConfigError(f"no {kind}checkpoints in {workdir}; train first with "
                      f"--mode=train")
  run = setup(config)
  ckpts = checkpoint_lib.Checkpoints(
      workdir, max_to_keep=config.max_checkpoints_to_keep)
  try:
    meta = checkpoint_lib.restore_latest(run, ckpts, best=best)
  finally:
    ckpts.close()
  if meta is None:
    raise ConfigError(f"no {kind}checkpoint in {workdir}; train first with "
                      f"--mode=train")
  return run, meta
