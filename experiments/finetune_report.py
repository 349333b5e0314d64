"""Fine-tuned runs next to training from scratch: one plot, one table.

  python -m experiments.finetune_report \
      --runs=scratch=workdirs/finetune_scratch,finetune=workdirs/finetune \
      --out=experiments/results/cifar10_finetune

Each run's workdir (metrics.jsonl, config.json) becomes OUT/<label>.json
(experiments.summary's per-evaluation summary, plus where its pretrained
layers came from); OUT/curves.png plots every run's test top-1 error and
training loss against the step, and OUT/results.md tabulates the error at
a few points of the run. The first run is the baseline the others are
compared with.
"""

from __future__ import annotations

import json
import os

from absl import app
from absl import flags

from experiments import summary as summary_lib

FLAGS = flags.FLAGS


def load(workdir: str) -> dict:
  """summary.summarize(workdir) with the fine-tuning settings of its config."""
  s = summary_lib.summarize(workdir)
  finetune = s["config"].get("finetune", {})
  s["finetune"] = {k: finetune.get(k) for k in
                   ("init_from", "keep", "freeze", "lr_scale")}
  return s


def error_at(s: dict, step: int) -> float | None:
  """The test error of the last evaluation at or before `step`."""
  rows = [e for e in s["epochs"] if e["step"] <= step]
  return rows[-1]["test_top1_error"] if rows else None


def table(runs: dict[str, dict]) -> str:
  """A markdown table: the error at the first run's evaluations nearest to
  each quarter of it, the best, the difference to the first run at the end
  and the median training images/s as run."""
  base = next(iter(runs.values()))
  evals = {e["step"]: e["epoch"] for e in base["epochs"]}
  points = sorted({min(evals, key=lambda st: abs(st - base["steps"] * q / 4))
                   for q in (1, 2, 3, 4)})
  head = (["run"] + [f"error, step {p} (epoch {evals[p]:.2f})"
                     for p in points] +
          ["best", "vs first run (end)", "train images/s (as run)"])
  lines = ["| " + " | ".join(head) + " |",
           "|" + "---|" * len(head)]
  for label, s in runs.items():
    errors = [error_at(s, p) for p in points]
    final, base_final = errors[-1], error_at(base, points[-1])
    diff = ("" if s is base or final is None or base_final is None else
            f"{100 * (final - base_final):+.2f} points")
    lines.append("| " + " | ".join(
        [label] + [f"{e:.4f}" if e is not None else "" for e in errors] +
        [f"{s['best_test_top1_error']:.4f}", diff,
         f"{s['images_per_sec_median']:.0f}"]) + " |")
  return "\n".join(lines)


def plot(runs: dict[str, dict], path: str) -> None:
  """Test top-1 error (left) and training loss (right) against the step."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4))
  for i, (label, s) in enumerate(runs.items()):
    ep = s["epochs"]
    ax.plot([e["step"] for e in ep], [e["test_top1_error"] for e in ep],
            "o-", ms=2.5, color=f"C{i}", label=label)
    ax2.plot([e["step"] for e in ep], [e["train_loss"] for e in ep],
             "-", color=f"C{i}", label=label)
  ax.set_xlabel("step")
  ax.set_ylabel("test top-1 error")
  ax.set_ylim(0, None)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  ax2.set_xlabel("step")
  ax2.set_ylabel("training loss (mean since the last evaluation)")
  ax2.set_ylim(0, None)
  ax2.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def parse_runs(text: str) -> dict[str, str]:
  runs = {}
  for item in text.split(","):
    label, sep, workdir = item.partition("=")
    if not sep or not label or not workdir:
      raise app.UsageError(f"--runs: {item!r} is not label=workdir")
    runs[label] = workdir
  return runs


def main(argv):
  del argv
  runs = {label: load(workdir)
          for label, workdir in parse_runs(FLAGS.runs).items()}
  os.makedirs(FLAGS.out, exist_ok=True)
  for label, s in runs.items():
    with open(os.path.join(FLAGS.out, f"{label}.json"), "w") as f:
      json.dump(s, f, indent=1)
  plot(runs, os.path.join(FLAGS.out, "curves.png"))
  text = table(runs)
  with open(os.path.join(FLAGS.out, "results.md"), "w") as f:
    f.write(text + "\n")
  print(text)


if __name__ == "__main__":
  flags.DEFINE_string("runs", None, "label=workdir,...; the first is the "
                      "baseline.")
  flags.DEFINE_string("out", None, "Where the JSON, plot and table go.")
  flags.mark_flags_as_required(["runs", "out"])
  app.run(main)
