"""Trains the JAX model and an independent PyTorch twin side by side.

  python -m experiments.torch_twin --config=configs/cifar10.py \
      --config.model.init=paper --config.data.std="()" \
      --config.optim.schedule=constant --config.optim.warmup_epochs=0 \
      --config.batch_size=128 --steps=400 \
      --out=experiments/results/torch_twin/cifar10_paper_init

(the committed twin run: the paper's init and 0-255 pixels at the paper's
batch and constant rate; drop the first two overrides for the recipe).

Both networks start from the same parameters (the JAX model's initial
parameters copied into `torch.nn`), see the same batches (the project's
input pipeline, each batch fed to both), take the same learning rate at
every step (`optim.LearningRate`) and the same update, written out by hand
on the torch side:  v <- m v - lr (wd w + g);  w <- w + v. Only the dropout
masks differ (each framework draws its own); with
`--config.model.dropout_rate=0` the two runs are the same computation in two
frameworks and their losses should agree to float32 rounding for many steps.

The torch side shares none of the model code: its convolutions, grouped
convolutions (groups=2), LRN (torch.nn.LocalResponseNorm per tower, with
alpha * n since torch divides by n), max-pooling, dropout and loss are
torch's own (`experiments/torch_peer.py`). If the JAX run stalls
and the twin learns, the JAX code has a bug; if both stall, it is the recipe.

Writes OUT.json (per-step losses and accuracies of both, their eval errors,
the command) and OUT.png. The BatchNorm variant is not supported (torch's
running statistics would need their own mapping).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from absl import app
from absl import flags
from ml_collections import config_flags

import alexnet_jax  # noqa: F401  (sets the XLA:CPU flags before jax starts)
import jax
import jax.numpy as jnp
import numpy as np

from experiments import torch_peer
from alexnet_jax import input_pipeline
from alexnet_jax import optim
from alexnet_jax import preprocess
from alexnet_jax import train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "A config file.",
                                lock_config=True)
flags.DEFINE_integer("steps", 300, "Training steps for both runs.")
flags.DEFINE_integer("eval_batches", 0, "Evaluate both on this many eval "
                     "batches at the end (0: the whole eval split).")
flags.DEFINE_string("out", None, "Output path without extension.")
flags.DEFINE_integer("log_every", 25, "Print a line every N steps.")
flags.mark_flags_as_required(["config", "out"])


def _commit() -> str:
  try:
    return subprocess.run(["git", "describe", "--always", "--dirty"],
                          capture_output=True, text=True,
                          check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def plot(result: dict, path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  def smooth(v, k=10):
    v = np.asarray(v, float)
    return np.convolve(v, np.ones(k) / k, mode="valid") if len(v) > k else v

  fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
  for side in ("jax", "torch"):
    axes[0].plot(smooth(result[side]["loss"]), label=side)
    axes[1].plot(smooth(result[side]["accuracy"]), label=side)
  axes[0].axhline(np.log(result["num_classes"]), color="grey", ls=":",
                  label="chance")
  axes[1].axhline(1 / result["num_classes"], color="grey", ls=":")
  axes[0].set_ylabel("train loss (10-step mean)")
  axes[1].set_ylabel("train accuracy (10-step mean)")
  for ax in axes:
    ax.set_xlabel("step")
    ax.legend()
  fig.suptitle(result["title"], fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def main(argv):
  del argv
  config = FLAGS.config
  try:
    import torch  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    raise SystemExit("error: the twin needs PyTorch (pip install "
                     "torch==2.13.0)") from None
  run = train.setup(config)
  info, batches = input_pipeline.train_iterator(config,
                                                image_size=run.image_size)
  steps_per_epoch, _ = train.steps_for(config, info.num_examples)
  lr = optim.LearningRate(config.optim, steps_per_epoch, FLAGS.steps)
  size = run.image_size
  twin = torch_peer.TorchTwin(config, run.model_state)

  out = {"jax": {"loss": [], "accuracy": []},
         "torch": {"loss": [], "accuracy": []}, "learning_rate": []}
  seconds = {"jax": 0.0, "torch": 0.0}
  with jax.set_mesh(run.mesh):
    for step in range(1, FLAGS.steps + 1):
      # Float images for both (data.normalize_on_device yields uint8).
      batch = preprocess.finished_batch(config.data, next(batches))
      rate = lr(step)
      t = time.perf_counter()
      run.model_state, run.opt_state, m = run.train_step(
          run.model_state, run.opt_state,
          jax.device_put(batch), jnp.float32(rate))
      m = jax.device_get(m)
      seconds["jax"] += time.perf_counter() - t
      t = time.perf_counter()
      tl, ta = twin.step(batch["image"], batch["label"], rate)
      seconds["torch"] += time.perf_counter() - t
      out["jax"]["loss"].append(float(m["loss"]))
      out["jax"]["accuracy"].append(float(m["accuracy"]))
      out["torch"]["loss"].append(tl)
      out["torch"]["accuracy"].append(ta)
      out["learning_rate"].append(rate)
      if not (np.isfinite(tl) and np.isfinite(float(m["loss"]))):
        print(f"step {step}: a loss is not finite (jax {float(m['loss'])}, "
              f"torch {tl}); stopping", flush=True)
        break
      if step % FLAGS.log_every == 0 or step == FLAGS.steps:
        k = FLAGS.log_every
        mean = lambda s, f: float(np.mean(out[s][f][-k:]))
        print(f"step {step:5d}  loss jax {mean('jax', 'loss'):.4f} torch "
              f"{mean('torch', 'loss'):.4f}  acc jax "
              f"{mean('jax', 'accuracy'):.3f} torch "
              f"{mean('torch', 'accuracy'):.3f}  lr {rate:.3g}", flush=True)

    # Both evaluated on the same eval batches (center crops).
    config.unlock()
    config.data.eval_crops = 1
    _, eval_batches = input_pipeline.eval_iterator(config, image_size=size)
    jc = tc = n = 0.0
    for i, batch in enumerate(eval_batches):
      if FLAGS.eval_batches and i >= FLAGS.eval_batches:
        break
      batch = preprocess.finished_batch(config.data, batch)
      r = run.eval_step(run.model_state, jax.device_put(batch))
      jc += float(r["top1"])
      c, cnt = twin.eval_counts(batch["image"], batch["label"], batch["mask"])
      tc += c
      n += cnt
  out["jax"]["eval_top1_error"] = 1 - jc / n
  out["torch"]["eval_top1_error"] = 1 - tc / n
  out["eval_examples"] = n
  out["seconds"] = seconds
  out["num_classes"] = config.model.num_classes
  out["command"] = " ".join(["python -m experiments.torch_twin"] +
                            sys.argv[1:])
  out["commit"] = _commit()
  first = min(10, len(out["jax"]["loss"]))
  diff = np.abs(np.subtract(out["jax"]["loss"][:first],
                            out["torch"]["loss"][:first]))
  out["max_loss_diff_first_steps"] = float(diff.max())
  out["title"] = (f"{config.model.preset} width {config.model.width} init "
                  f"{config.model.init}, lr {config.optim.learning_rate}, "
                  f"dropout {config.model.dropout_rate}: JAX vs PyTorch twin")
  print(f"eval top-1 error: jax {out['jax']['eval_top1_error']:.4f}  torch "
        f"{out['torch']['eval_top1_error']:.4f}  ({int(n)} images); max |loss "
        f"difference| over the first {first} steps "
        f"{out['max_loss_diff_first_steps']:.2e}", flush=True)
  os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
  with open(FLAGS.out + ".json", "w") as f:
    json.dump(out, f)
  plot(out, FLAGS.out + ".png")


if __name__ == "__main__":
  app.run(main)
