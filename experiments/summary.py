"""A training run's curve per epoch, from its workdir, as JSON and a plot.

  python -m experiments.summary --workdir=DIR --out=experiments/results/X \
      --run_command="python -m alexnet_jax.main ..." --commit=abc1234

Reads DIR/metrics.jsonl and DIR/config.json (written by the training loop)
and writes OUT/metrics.json (test error and train loss per epoch, wall time,
images/s, the command and commit) and OUT/curve.png. `summarize` is the
function the sweeps use for their per-run files.
"""

from __future__ import annotations

import json
import os
import statistics

from absl import app
from absl import flags

FLAGS = flags.FLAGS


def read_rows(workdir: str) -> list[dict]:
  """metrics.jsonl; a step logged again after a resume keeps its last row."""
  rows = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      row = json.loads(line)
      kind = "eval" if "eval_top1_error" in row else "train"
      rows[(row["step"], kind)] = row
  return [rows[k] for k in sorted(rows)]


def summarize(workdir: str) -> dict:
  """Per-epoch test error and train loss, timing and the run's config."""
  rows = read_rows(workdir)
  with open(os.path.join(workdir, "config.json")) as f:
    config = json.load(f)
  train_rows = [r for r in rows if "train_loss" in r]
  eval_rows = [r for r in rows if "eval_top1_error" in r]
  if not train_rows:
    raise ValueError(f"no training rows in {workdir}/metrics.jsonl")
  batch = config["batch_size"]
  # Seconds spent in training steps: each log window's images / its rate.
  prev, train_seconds = 0, 0.0
  for r in train_rows:
    train_seconds += (r["step"] - prev) * batch / r["images_per_sec"]
    prev = r["step"]
  epochs = []
  for e in eval_rows:
    if "epoch" not in e:
      continue
    since = epochs[-1]["epoch"] if epochs else 0.0
    window = [r for r in train_rows if since < r["epoch"] <= e["epoch"] + 1e-9]
    epochs.append({
        "epoch": round(e["epoch"], 4),
        "step": e["step"],
        "test_top1_error": e["eval_top1_error"],
        "test_top5_error": e["eval_top5_error"],
        "test_loss": e["eval_loss"],
        "train_loss": (statistics.fmean(r["train_loss"] for r in window)
                       if window else None),
        "train_accuracy": (statistics.fmean(r["train_accuracy"]
                                            for r in window)
                           if window else None),
        "wall_seconds": round(e["wall_time"] - train_rows[0]["wall_time"], 1),
    })
  return {
      "epochs": epochs,
      "final_test_top1_error": eval_rows[-1]["eval_top1_error"] if (
          eval_rows) else None,
      "final_test_top5_error": eval_rows[-1]["eval_top5_error"] if (
          eval_rows) else None,
      "best_test_top1_error": min((r["eval_top1_error"] for r in eval_rows),
                                  default=None),
      "steps": train_rows[-1]["step"],
      "train_seconds": round(train_seconds, 1),
      # First to last row: includes evaluation and any pause of a resume.
      "wall_seconds": round(rows[-1]["wall_time"] - rows[0]["wall_time"], 1),
      "images_per_sec_median": statistics.median(
          r["images_per_sec"] for r in train_rows),
      "config": config,
  }


def plot(summary: dict, path: str, title: str = "") -> None:
  """Test top-1 error and train loss per epoch, one figure."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  ep = summary["epochs"]
  x = [e["epoch"] for e in ep]
  fig, ax = plt.subplots(figsize=(6.4, 4))
  ax.plot(x, [e["test_top1_error"] for e in ep], "o-", color="C0", ms=3,
          label="test top-1 error")
  ax.set_xlabel("epoch")
  ax.set_ylabel("test top-1 error", color="C0")
  ax.set_ylim(0, 1)
  ax.grid(alpha=0.3)
  ax2 = ax.twinx()
  ax2.plot(x, [e["train_loss"] for e in ep], "s-", color="C1", ms=3,
           label="train loss")
  ax2.set_ylabel("train loss (mean over the epoch)", color="C1")
  ax2.set_ylim(bottom=0)
  if title:
    ax.set_title(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write_json(data: dict, out: str, name: str) -> None:
  """data with the --run_command, --commit and --extra flags, as OUT/name."""
  data["command"] = FLAGS.run_command
  data["commit"] = FLAGS.commit
  data.update(json.loads(FLAGS.extra) if FLAGS.extra else {})
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, name), "w") as f:
    json.dump(data, f, indent=1)


def main(argv):
  del argv
  summary = summarize(FLAGS.workdir)
  write_json(summary, FLAGS.out, "metrics.json")
  plot(summary, os.path.join(FLAGS.out, "curve.png"), FLAGS.title)
  last = summary["epochs"][-1] if summary["epochs"] else {}
  print(f"{len(summary['epochs'])} evaluations; last: epoch "
        f"{last.get('epoch')} test top-1 error {last.get('test_top1_error')}"
        f"; {summary['wall_seconds']:.0f} s wall")


if __name__ == "__main__":
  flags.DEFINE_string("workdir", None, "The run's workdir.")
  flags.DEFINE_string("out", None, "Folder for metrics.json and curve.png.")
  flags.DEFINE_string("run_command", "", "The command that made the run.")
  flags.DEFINE_string("commit", "", "The commit the run was made with.")
  flags.DEFINE_string("title", "", "Plot title.")
  flags.DEFINE_string("extra", "", "A JSON object merged into metrics.json "
                      "(machine, load, ...).")
  flags.mark_flags_as_required(["workdir", "out"])
  app.run(main)
