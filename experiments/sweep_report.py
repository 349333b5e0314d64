"""A sweep's report, rebuilt from its per-run JSON files alone.

  python -m experiments.sweep_report --results=experiments/results/cifar10_ablation

Reads RESULTS/runs/*.json (written by experiments/ablation.py) and writes
RESULTS/results.json, results.md, curves.png (test top-1 error per epoch,
mean and band of +-1 std over seeds, per cell), train_curves.png (training
error per epoch, the axis of the paper's Figure 1, with the 25% line) and
bars.png (final test error per cell with std error bars). For every axis it
compares each value with the axis's reference (first) value: the difference
of the final test top-1 error (points), its standard error, Welch's t-test,
and whether the difference exceeds the seed-to-seed spread, in words.
"""

from __future__ import annotations

import glob
import json
import math
import os
import statistics

from absl import app
from absl import flags

FLAGS = flags.FLAGS


def mean_std(values: list[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (n - 1); std 0 for one value."""
  m = statistics.fmean(values)
  return m, (statistics.stdev(values) if len(values) > 1 else 0.0)


def welch(a: list[float], b: list[float]) -> dict:
  """Welch's t-test of mean(b) - mean(a): difference, standard error, t,
  Welch-Satterthwaite degrees of freedom and the two-sided p-value."""
  (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
  va, vb = sa * sa / len(a), sb * sb / len(b)
  se = math.sqrt(va + vb)
  out = {"diff": mb - ma, "se": se, "n": [len(a), len(b)]}
  if se == 0 or len(a) < 2 or len(b) < 2:
    return {**out, "t": None, "df": None, "p": None}
  t = (mb - ma) / se
  df = (va + vb) ** 2 / (va * va / (len(a) - 1) + vb * vb / (len(b) - 1))
  from scipy import stats  # pylint: disable=g-import-not-at-top
  p = 2 * stats.t.sf(abs(t), df)
  return {**out, "t": t, "df": df, "p": float(p)}


def load(results: str) -> list[dict]:
  runs = []
  for path in sorted(glob.glob(os.path.join(results, "runs", "*.json"))):
    with open(path) as f:
      runs.append(json.load(f))
  return runs


def _key(cell: dict) -> str:
  return ", ".join(f"{k}={v}" for k, v in cell.items())


def epochs_to(epochs: list[dict], train_error: float) -> float | None:
  """First epoch whose mean training error is <= train_error, or None."""
  for e in epochs:
    if e["train_accuracy"] is not None and 1 - e["train_accuracy"] <= (
        train_error):
      return e["epoch"]
  return None


def build(results: str) -> dict:
  """The report as a dict (also what results.json holds)."""
  runs = load(results)
  if not runs:
    raise ValueError(f"no per-run results in {results}/runs")
  plan = runs[0]["sweep"]
  axes = [(f, v) for f, v in plan["axes"]]
  by_cell = {}
  for r in runs:
    by_cell.setdefault(_key(r["cell"]), []).append(r)
  cells = []
  for key, rs in by_cell.items():
    rs.sort(key=lambda r: r["seed"])
    finals = [100 * r["final_test_top1_error"] for r in rs]
    top5 = [100 * r["final_test_top5_error"] for r in rs]
    m, s = mean_std(finals)
    n_epochs = min(len(r["epochs"]) for r in rs)
    curve = [mean_std([100 * r["epochs"][i]["test_top1_error"] for r in rs])
             for i in range(n_epochs)]
    train_curve = [
        mean_std([100 * (1 - r["epochs"][i]["train_accuracy"]) for r in rs])
        if all(r["epochs"][i]["train_accuracy"] is not None for r in rs)
        else None for i in range(n_epochs)]
    best = min(range(n_epochs), key=lambda i: curve[i][0]) if n_epochs else 0
    to25 = [epochs_to(r["epochs"], 0.25) for r in rs]
    cells.append({
        "cell": rs[0]["cell"], "name": key, "seeds": [r["seed"] for r in rs],
        "final_top1": finals, "mean": m, "std": s,
        "top5_mean": mean_std(top5)[0],
        "best_epoch": rs[0]["epochs"][best]["epoch"] if n_epochs else None,
        "curve_epochs": [rs[0]["epochs"][i]["epoch"] for i in range(n_epochs)],
        "curve": curve, "train_curve": train_curve,
        "epochs_to_25pct_train_error": to25,
        "wall_seconds": statistics.fmean(r["wall_seconds"] for r in rs),
        "images_per_sec": statistics.fmean(r["images_per_sec_median"]
                                           for r in rs),
    })
  order = {_key(c): i for i, c in enumerate(_grid(axes))}
  cells.sort(key=lambda c: order.get(c["name"], len(order)))
  spread = statistics.fmean(c["std"] for c in cells if len(c["seeds"]) > 1) \
      if any(len(c["seeds"]) > 1 for c in cells) else None
  comparisons = [comp for field, values in axes
                 for comp in _compare(field, values, cells, spread)]
  planned = len(_grid(axes)) * len(plan["seeds"])
  done = {(c["name"], s) for c in cells for s in c["seeds"]}
  missing = [f"{_key(c)} seed {s}" for c in _grid(axes) for s in plan["seeds"]
             if (_key(c), s) not in done]
  return {"axes": plan["axes"], "seeds": plan["seeds"], "cells": cells,
          "seed_spread": spread, "comparisons": comparisons,
          "runs_planned": planned, "runs_done": len(runs), "missing": missing,
          "config": runs[0]["config"], "commits": sorted(
              {r.get("commit", "") for r in runs})}


def _grid(axes):
  import itertools  # pylint: disable=g-import-not-at-top
  fields = [f for f, _ in axes]
  return [dict(zip(fields, combo))
          for combo in itertools.product(*[v for _, v in axes])]


def _compare(field, values, cells, spread):
  """Each value of one axis against its reference, overall and per context
  (the other axes fixed)."""
  ref = values[0]
  out = []
  for value in values[1:]:
    def finals(v, context=None):
      return [x for c in cells if c["cell"][field] == v and (
          context is None or all(c["cell"][k] == w for k, w in context.items()))
              for x in c["final_top1"]]
    contexts = [None] + [
        {k: w for k, w in c["cell"].items() if k != field}
        for c in cells if c["cell"][field] == ref and len(c["cell"]) > 1]
    for context in contexts:
      a, b = finals(ref, context), finals(value, context)
      if not a or not b:
        continue
      stats = welch(a, b)
      out.append({"field": field, "reference": ref, "value": value,
                  "context": context, **stats,
                  "text": _words(field, ref, value, context, stats, spread)})
  return out


def _words(field, ref, value, context, s, spread) -> str:
  where = ("over all cells" if context is None else "with " + ", ".join(
      f"{k}={v}" for k, v in context.items()))
  head = (f"{field}={value} instead of {ref} ({where}, n = {s['n'][0]} vs "
          f"{s['n'][1]} runs): final test top-1 error {s['diff']:+.2f} "
          f"points, standard error {s['se']:.2f}")
  if s["p"] is None:
    return head + "; too few runs for a t-test."
  verdict = ("significant at the 5% level" if s["p"] < 0.05 else
             "not significant at the 5% level")
  size = ""
  if spread is not None:
    size = (f"; the difference is {'larger' if abs(s['diff']) > spread else 'smaller'} "
            f"than the seed-to-seed spread ({spread:.2f} points)")
  return (f"{head} (Welch t = {s['t']:.2f}, df = {s['df']:.1f}, "
          f"p = {s['p']:.3f}: {verdict}){size}.")


def to_markdown(report: dict) -> str:
  lines = ["# Sweep results", "",
           f"{report['runs_done']} of {report['runs_planned']} runs done "
           f"(axes: {'; '.join(f + ' = ' + ' | '.join(map(str, v)) for f, v in report['axes'])}; "
           f"seeds {', '.join(map(str, report['seeds']))}). Errors in % "
           "(test top-1 at the last epoch, mean +- sample std over seeds).",
           ""]
  if report["missing"]:
    lines += [f"Not done yet: {'; '.join(report['missing'])}.", ""]
  lines += ["| cell | seeds | final top-1 error | top-5 | best epoch | "
            "epochs to 25% train error | wall time per run | images/s |",
            "|---|---|---|---|---|---|---|---|"]
  for c in report["cells"]:
    to25 = ", ".join("-" if e is None else f"{e:g}"
                     for e in c["epochs_to_25pct_train_error"])
    lines.append(
        f"| {c['name']} | {len(c['seeds'])} | {c['mean']:.2f} +- "
        f"{c['std']:.2f} | {c['top5_mean']:.2f} | {c['best_epoch']} | {to25} "
        f"| {c['wall_seconds'] / 60:.1f} min | {c['images_per_sec']:.0f} |")
  lines += ["", "## Differences", ""]
  if report["seed_spread"] is not None:
    lines.append(f"Seed-to-seed spread (mean within-cell std): "
                 f"{report['seed_spread']:.2f} points.")
    lines.append("")
  lines += [f"- {c['text']}" for c in report["comparisons"]]
  lines += ["", f"Commits: {', '.join(report['commits'])}."]
  return "\n".join(lines) + "\n"


def _curves(plt, report, key, ylabel, path, hline=None) -> None:
  """One line per cell (mean over seeds) with a +-1 std band."""
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for i, c in enumerate(report["cells"]):
    pts = [(x, v) for x, v in zip(c["curve_epochs"], c[key]) if v is not None]
    x = [p[0] for p in pts]
    m = [p[1][0] for p in pts]
    s = [p[1][1] for p in pts]
    ax.plot(x, m, "-", color=f"C{i}", label=f"{c['name']} (n={len(c['seeds'])})")
    ax.fill_between(x, [a - b for a, b in zip(m, s)],
                    [a + b for a, b in zip(m, s)], color=f"C{i}", alpha=0.2)
  if hline is not None:
    ax.axhline(hline, color="gray", linestyle="--", linewidth=1)
  ax.set_xlabel("epoch")
  ax.set_ylabel(ylabel)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot(report: dict, results: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  _curves(plt, report, "curve", "test top-1 error (%)",
          os.path.join(results, "curves.png"))
  _curves(plt, report, "train_curve", "training error (%), mean over the epoch",
          os.path.join(results, "train_curves.png"), hline=25.0)

  fig, ax = plt.subplots(figsize=(7, 4))
  names = [c["name"] for c in report["cells"]]
  ax.bar(range(len(names)), [c["mean"] for c in report["cells"]],
         yerr=[c["std"] for c in report["cells"]], capsize=4,
         color=[f"C{i}" for i in range(len(names))])
  ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
  ax.set_ylabel("final test top-1 error (%), mean +- std")
  lo = min(c["mean"] - c["std"] for c in report["cells"])
  hi = max(c["mean"] + c["std"] for c in report["cells"])
  ax.set_ylim(max(0, lo - (hi - lo) - 1), hi + (hi - lo) * 0.5 + 1)
  ax.grid(axis="y", alpha=0.3)
  fig.tight_layout()
  fig.savefig(os.path.join(results, "bars.png"), dpi=110)
  plt.close(fig)


def write(report: dict, results: str) -> None:
  os.makedirs(results, exist_ok=True)
  with open(os.path.join(results, "results.json"), "w") as f:
    json.dump(report, f, indent=1)
  with open(os.path.join(results, "results.md"), "w") as f:
    f.write(to_markdown(report))
  plot(report, results)


def main(argv):
  del argv
  report = build(FLAGS.results)
  write(report, FLAGS.results)
  print(to_markdown(report))


if __name__ == "__main__":
  flags.DEFINE_string("results", None, "Folder holding runs/*.json.")
  flags.mark_flags_as_required(["results"])
  app.run(main)
