"""A training run's curve per epoch, from its workdir, as JSON and a plot.

  python -m experiments.summary --workdir=DIR --out=experiments/results/X \
      --run_command="python -m alexnet_jax.main ..." --commit=abc1234

Reads DIR/metrics.jsonl and DIR/config.json (written by the training loop)
and writes OUT/metrics.json and OUT/curve.png. `summarize` is the function
the sweeps use for their per-run files.

Three kinds of metrics.jsonl rows: train rows ("train_loss", the means over
the steps since the previous train row), eval rows ("eval_top1_error" on
data.eval_split, the validation split, at each evaluation, with the LRN
statistic "lrn/<layer>/<name>" when the net has LRN) and at most one test
row ("test_top1_error" on data.test_split, evaluated once after the last
step). The training log windows have unequal lengths (they restart at each
evaluation), so every mean over train rows here is weighted by the steps
each row covers.
"""

from __future__ import annotations

import json
import os
import statistics

from absl import app
from absl import flags

FLAGS = flags.FLAGS


def _kind(row: dict) -> str:
  if "eval_top1_error" in row:
    return "eval"
  return "test" if "test_top1_error" in row else "train"


def read_rows(workdir: str) -> list[dict]:
  """metrics.jsonl; a step logged again after a resume keeps its last row."""
  rows = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      row = json.loads(line)
      rows[(row["step"], _kind(row))] = row
  return [rows[k] for k in sorted(rows)]


def train_windows(rows: list[dict]) -> list[tuple[int, int, dict]]:
  """(start, end, row) per train row: the row covers steps (start, end],
  start being the previous train row's step (0 for the first)."""
  out, prev = [], 0
  for r in rows:
    if "train_loss" in r:
      out.append((prev, r["step"], r))
      prev = r["step"]
  return out


def weighted(windows, key: str, lo: float = 0, hi: float = float("inf")
             ) -> float | None:
  """The mean of row[key] over steps (lo, hi], each row weighted by the
  steps of its window inside that range; None if no step is covered."""
  total = weight = 0.0
  for start, end, r in windows:
    w = min(end, hi) - max(start, lo)
    if w > 0 and r.get(key) is not None:
      total += w * r[key]
      weight += w
  return total / weight if weight else None


def crossing(windows, threshold: float) -> float | None:
  """Where a curve given as window means first reaches <= threshold: each
  (start, end, value) is placed at its window's midpoint and the curve is
  linear between midpoints; the first midpoint if it is already there."""
  pts = [((s + e) / 2, v) for s, e, v in windows if v is not None]
  for i, (x, v) in enumerate(pts):
    if v <= threshold:
      if i == 0:
        return x
      x0, v0 = pts[i - 1]
      return x0 + (v0 - threshold) / (v0 - v) * (x - x0)
  return None


def steps_to_error(rows: list[dict], threshold: float) -> float | None:
  """The first step at which the running training error (1 - train
  accuracy) reaches <= threshold, interpolated between train rows."""
  return crossing([(s, e, 1 - r["train_accuracy"])
                   for s, e, r in train_windows(rows)
                   if r.get("train_accuracy") is not None], threshold)


def steps_per_epoch(rows: list[dict]) -> float | None:
  """From the rows' epoch = step / steps_per_epoch (the latest row, whose
  rounding of the epoch matters least)."""
  tagged = [r for r in rows if r.get("epoch") and r["step"] > 0]
  if not tagged:
    return None
  r = max(tagged, key=lambda r: r["step"])
  spe = r["step"] / r["epoch"]
  return float(round(spe)) if abs(spe - round(spe)) < 0.01 else spe


def epochs_to_error(rows: list[dict], threshold: float) -> float | None:
  """steps_to_error in epochs."""
  steps, spe = steps_to_error(rows, threshold), steps_per_epoch(rows)
  return None if steps is None or spe is None else steps / spe


def lrn_nested(row: dict) -> dict:
  """{"conv1": {"spread": .., "mean": .., "logdev": ..}, ...} from a row's
  "lrn/<layer>/<name>" keys."""
  out = {}
  for k, v in row.items():
    parts = k.split("/")
    if len(parts) == 3 and parts[0] == "lrn":
      out.setdefault(parts[1], {})[parts[2]] = v
  return out


def summarize(workdir: str) -> dict:
  """Per-evaluation validation error and step-weighted training loss and
  error, the test split's error, timing and the run's config.

  Also holds the names older readers use for the validation (eval split)
  numbers: per epoch test_top1_error/test_top5_error/test_loss, top level
  final_test_top1_error/final_test_top5_error/best_test_top1_error.
  """
  rows = read_rows(workdir)
  with open(os.path.join(workdir, "config.json")) as f:
    config = json.load(f)
  windows = train_windows(rows)
  eval_rows = [r for r in rows if _kind(r) == "eval"]
  test_row = next((r for r in reversed(rows) if _kind(r) == "test"), None)
  if not windows:
    raise ValueError(f"no training rows in {workdir}/metrics.jsonl")
  batch = config["batch_size"]
  # Seconds spent in training steps: each log window's images / its rate.
  train_seconds = sum((e - s) * batch / r["images_per_sec"]
                      for s, e, r in windows)
  epochs, since = [], 0
  for e in eval_rows:
    if "epoch" not in e:
      continue
    loss = weighted(windows, "train_loss", since, e["step"])
    acc = weighted(windows, "train_accuracy", since, e["step"])
    since = e["step"]
    epochs.append({
        "epoch": round(e["epoch"], 4),
        "step": e["step"],
        "val_top1_error": e["eval_top1_error"],
        "val_top5_error": e["eval_top5_error"],
        "val_loss": e["eval_loss"],
        "train_loss": loss,
        "train_error": None if acc is None else 1 - acc,
        "train_accuracy": acc,
        "lrn": {k: v for k, v in e.items() if k.startswith("lrn/")},
        "wall_seconds": round(e["wall_time"] - windows[0][2]["wall_time"], 1),
        # Older names of the validation numbers.
        "test_top1_error": e["eval_top1_error"],
        "test_top5_error": e["eval_top5_error"],
        "test_loss": e["eval_loss"],
    })
  last = windows[-1][1]
  spe = steps_per_epoch(rows) or last
  acc = weighted(windows, "train_accuracy", last - spe, last)
  final_train = None if acc is None else 1 - acc
  final = eval_rows[-1] if eval_rows else {}
  val = final.get("eval_top1_error")
  test = test_row or {}
  return {
      "epochs": epochs,
      "eval_split": config.get("data", {}).get("eval_split"),
      "test_split": config.get("data", {}).get("test_split") or None,
      "final_val_top1_error": val,
      "final_val_top5_error": final.get("eval_top5_error"),
      "best_val_top1_error": min((r["eval_top1_error"] for r in eval_rows),
                                 default=None),
      "test_top1_error": test.get("test_top1_error"),
      "test_top5_error": test.get("test_top5_error"),
      "test_loss": test.get("test_loss"),
      "final_train_error": final_train,
      "train_val_gap": (None if val is None or final_train is None
                        else val - final_train),
      "lrn_final": lrn_nested(final),
      "epochs_to_25pct_train_error": epochs_to_error(rows, 0.25),
      # Every logged window: [epoch at its end, its running training error,
      # its steps], the curve of the paper's Figure 1.
      "train_curve": [[round(e / spe, 4), round(1 - r["train_accuracy"], 5),
                       e - s] for s, e, r in windows],
      "steps": last,
      "train_seconds": round(train_seconds, 1),
      # First to last row: includes evaluation and any pause of a resume.
      "wall_seconds": round(rows[-1]["wall_time"] - rows[0]["wall_time"], 1),
      "images_per_sec_median": statistics.median(
          r["images_per_sec"] for _, _, r in windows),
      "config": config,
      # Older names of the validation numbers.
      "final_test_top1_error": val,
      "final_test_top5_error": final.get("eval_top5_error"),
      "best_test_top1_error": min((r["eval_top1_error"] for r in eval_rows),
                                  default=None),
  }


def _pct(x):
  return None if x is None else 100 * x


def record_view(run: dict) -> dict:
  """A per-run file's numbers in percent, as the sweep report reads them,
  from a new-style file or an old one (its eval split was the test split:
  keys test_top1_error per epoch, final_test_top1_error, no test row)."""
  new = "final_val_top1_error" in run
  if new:
    epochs = [{"epoch": e["epoch"], "val": _pct(e["val_top1_error"]),
               "train": _pct(e["train_error"])} for e in run["epochs"]]
    train_final, to25 = run["final_train_error"], run[
        "epochs_to_25pct_train_error"]
  else:  # Per-epoch train means there were unweighted; a crossing from them.
    epochs = [{"epoch": e["epoch"], "val": _pct(e["test_top1_error"]),
               "train": _pct(None if e["train_accuracy"] is None
                             else 1 - e["train_accuracy"])}
              for e in run["epochs"]]
    train_final = epochs[-1]["train"] / 100 if epochs and epochs[-1][
        "train"] is not None else None
    to25 = crossing(
        [(a["epoch"] if a else 0.0, b["epoch"],
          None if b["train"] is None else b["train"] / 100)
         for a, b in zip([None] + epochs[:-1], epochs)], 0.25)
  val = run["final_val_top1_error" if new else "final_test_top1_error"]
  return {
      "cell": run["cell"], "seed": run["seed"], "new": new,
      "eval_split": (run.get("eval_split") if new else None) or run.get(
          "config", {}).get("data", {}).get("eval_split") or "test",
      "val": _pct(val),
      "val5": _pct(run["final_val_top5_error" if new
                       else "final_test_top5_error"]),
      "test": _pct(run.get("test_top1_error")) if new else None,
      "test5": _pct(run.get("test_top5_error")) if new else None,
      "train": _pct(train_final),
      "gap": (None if train_final is None or val is None
              else _pct(val - train_final)),
      # experiments/multiview.py: the eval split on cuda-convnet's 10 views.
      "multiview": _pct(run.get("multiview", {}).get("eval_top1_error")),
      "lrn": run.get("lrn_final") or lrn_nested(run.get("multiview", {})),
      "to25": to25, "epochs": epochs,
      "wall": run["wall_seconds"], "ips": run["images_per_sec_median"],
      "train_s": _training_seconds(run),
      "commit": run.get("commit", "")}


def _training_seconds(run: dict) -> float:
  """Steps x batch / the median logged rate: the time the steps took,
  without the restarts and pauses (SIGSTOP included) between working
  stretches that a resumed run's wall time, and a paused log window's
  rate, count. The wall time where the record lacks any of these."""
  batch = (run.get("config") or {}).get("batch_size")
  ips = run.get("images_per_sec_median")
  if not (batch and ips and run.get("steps")):
    return run["wall_seconds"]
  return run["steps"] * batch / ips


def plot(summary: dict, path: str, title: str = "") -> None:
  """Validation top-1 error and train loss per epoch, one figure."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  ep = summary["epochs"]
  x = [e["epoch"] for e in ep]
  split = summary.get("eval_split") or "eval"
  fig, ax = plt.subplots(figsize=(6.4, 4))
  ax.plot(x, [e["val_top1_error"] for e in ep], "o-", color="C0", ms=3,
          label=f"validation ({split}) top-1 error")
  ax.plot(x, [e["train_error"] for e in ep], "^--", color="C0", ms=3,
          alpha=0.6, label="training error (running, over the epoch)")
  ax.set_xlabel("epoch")
  ax.set_ylabel(f"top-1 error ({split} split; dashed: training)", color="C0")
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
  test = ("" if summary["test_top1_error"] is None else
          f"; test ({summary['test_split']}) top-1 error "
          f"{summary['test_top1_error']:.4f}")
  print(f"{len(summary['epochs'])} evaluations; last: epoch "
        f"{last.get('epoch')} validation top-1 error "
        f"{last.get('val_top1_error')}{test}; "
        f"{summary['wall_seconds']:.0f} s wall")


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
