"""A short run's train loss per logged step, as JSON and a plot, with an
optional PyTorch twin run (experiments/torch_twin.py) in a second panel.

  python -m experiments.step_curve --workdir=DIR --out=experiments/results/X \
      [--twin=experiments/results/torch_twin/cifar10_paper_init.json] \
      [--run_command="python -m alexnet_jax.main ..."] [--commit=abc1234]

For runs too short for a per-epoch curve (experiments/summary.py): whether
the loss leaves chance (ln of the class count) at all. Writes OUT/steps.json
(per logged step: loss, accuracy, rate; the evaluations; the command) and
OUT/steps.png.
"""

from __future__ import annotations

import json
import math
import os

from absl import app
from absl import flags

from experiments import summary

FLAGS = flags.FLAGS


def step_rows(workdir: str) -> dict:
  rows = summary.read_rows(workdir)
  with open(os.path.join(workdir, "config.json")) as f:
    config = json.load(f)
  train = [r for r in rows if "train_loss" in r]
  return {
      "num_classes": config["model"]["num_classes"],
      "batch_size": config["batch_size"],
      "steps": [r["step"] for r in train],
      "train_loss": [r["train_loss"] for r in train],
      "train_accuracy": [r["train_accuracy"] for r in train],
      "learning_rate": [r["learning_rate"] for r in train],
      "images_per_sec": [r["images_per_sec"] for r in train],
      "evals": [{k: r[k] for k in ("step", "eval_loss", "eval_top1_error",
                                   "eval_examples")}
                for r in rows if "eval_top1_error" in r],
  }


def plot(run: dict, twin: dict | None, path: str, title: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  panels = 2 if twin else 1
  fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 3.8),
                           squeeze=False)
  ax = axes[0][0]
  ax.plot(run["steps"], run["train_loss"], "o-", ms=3,
          label=f"train loss (mean of {run['steps'][0]}-step windows)")
  ax.axhline(math.log(run["num_classes"]), ls=":", color="gray",
             label="chance")
  ax.set_xlabel("step")
  ax.set_ylabel("train loss")
  ax.set_title(title or "this run", fontsize=9)
  ax.set_ylim(0, min(max(run["train_loss"]) * 1.05, 3 * math.log(
      run["num_classes"])))
  ax.legend(fontsize=8)
  if twin:
    ax = axes[0][1]
    for side in ("jax", "torch"):
      loss = twin[side]["loss"]
      window = [sum(loss[max(0, i - 9):i + 1]) / len(loss[max(0, i - 9):i + 1])
                for i in range(len(loss))]
      ax.plot(range(1, len(loss) + 1), window, label=side)
    ax.axhline(math.log(twin["num_classes"]), ls=":", color="gray",
               label="chance")
    ax.set_xlabel("step")
    ax.set_ylabel("train loss (10-step mean)")
    ax.set_title(twin.get("title", "PyTorch twin"), fontsize=9)
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv):
  del argv
  run = step_rows(FLAGS.workdir)
  twin = None
  if FLAGS.twin:
    with open(FLAGS.twin) as f:
      twin = json.load(f)
    run["twin"] = FLAGS.twin
  summary.write_json(run, FLAGS.out, "steps.json")
  plot(run, twin, os.path.join(FLAGS.out, "steps.png"), FLAGS.title)
  last = run["evals"][-1] if run["evals"] else {}
  print(f"{run['steps'][-1]} steps; last train loss {run['train_loss'][-1]:.4f}"
        f" (chance {math.log(run['num_classes']):.4f}); last eval {last}")


if __name__ == "__main__":
  flags.DEFINE_string("workdir", None, "The run's workdir.")
  flags.DEFINE_string("out", None, "Folder for steps.json and steps.png.")
  flags.DEFINE_string("twin", "", "A torch_twin JSON to plot beside it.")
  flags.DEFINE_string("run_command", "", "The command that made the run.")
  flags.DEFINE_string("commit", "", "The commit the run was made with.")
  flags.DEFINE_string("title", "", "Title of the run's panel.")
  flags.DEFINE_string("extra", "", "A JSON object merged into steps.json.")
  flags.mark_flags_as_required(["workdir", "out"])
  app.run(main)
