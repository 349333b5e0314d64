"""A sweep's report, rebuilt from its per-run JSON files alone.

  python -m experiments.sweep_report --results=experiments/results/cifar10_ablation

Reads RESULTS/runs/*.json (written by experiments/ablation.py) and writes
RESULTS/results.json, results.md, curves.png (validation top-1 error per
epoch, mean over seeds with a 95% CI band, per cell), train_curves.png
(step-weighted training error per epoch, the axis of the paper's Figure 1,
with the 25% line) and bars.png (final validation error per cell, 95% CI).

Every cell runs with the same seeds, and a seed fixes the init, data order
and dropout in every cell, so seeds are blocks (experiments/stats.py): for
every axis each value is compared with the reference (first) value as a
paired difference per seed of the final validation top-1 error, averaged
over the other axes (main effect) and at each of their levels (simple
effects), with a 95% CI and Holm-adjusted p-values over all those
contrasts; a two-way (or k-way) ANOVA with seeds as blocks tests the main
effects and interactions. Only seeds complete in every cell enter them.
The test split, evaluated once at the end of each run, is reported apart.
The same contrasts on the train/validation gap, on the test error and (runs
scored by experiments/multiview.py) on the 10-view error follow as families
of their own (experiments/sweep_effects.py).

Per-run files from before the validation split (keys test_top1_error per
epoch, final_test_top1_error) evaluated on the test split: read as "eval
split = test", without a separate test number.
"""

from __future__ import annotations

import glob
import itertools
import json
import math
import os
import statistics

from absl import app
from absl import flags
import numpy as np

from experiments import stats
from experiments import sweep_effects
from experiments import summary

FLAGS = flags.FLAGS
mean_std = stats.mean_std


def load(results: str) -> list[dict]:
  runs = []
  for path in sorted(glob.glob(os.path.join(results, "runs", "*.json"))):
    with open(path) as f:
      runs.append(json.load(f))
  return runs


_key = sweep_effects.cell_key


def _ms(values) -> list | None:
  """[mean, sd, n] of the values that are not None (None if none are)."""
  values = [v for v in values if v is not None]
  return [*mean_std(values), len(values)] if values else None


def _band(values) -> list | None:
  """[mean, lower, upper] of a 95% t interval over seeds."""
  ok = values and all(v is not None for v in values)
  return list(stats.t_ci(values)) if ok else None


def _cell(key: str, vs: list[dict]) -> dict:
  n_epochs = min(len(v["epochs"]) for v in vs)
  curve = [_band([v["epochs"][i]["val"] for v in vs]) for i in range(n_epochs)]
  best = min(range(n_epochs), key=lambda i: curve[i][0]) if n_epochs else 0
  lrn = {}
  for v in vs:
    for layer, d in v["lrn"].items():
      for name, x in d.items():
        lrn.setdefault(layer, {}).setdefault(name, []).append(x)
  m, lo, hi = stats.t_ci([v["val"] for v in vs])
  return {
      "cell": vs[0]["cell"], "name": key, "seeds": [v["seed"] for v in vs],
      "final_val_top1": [v["val"] for v in vs], "val_mean": m,
      "val_sd": mean_std([v["val"] for v in vs])[1], "val_ci": [lo, hi],
      "val_top5_mean": statistics.fmean(v["val5"] for v in vs),
      "test_top1": _ms(v["test"] for v in vs),
      "test_top5": _ms(v["test5"] for v in vs),
      "final_train_error": _ms(v["train"] for v in vs),
      "train_val_gap": _ms(v["gap"] for v in vs),
      "lrn_final": {layer: {k: statistics.fmean(x) for k, x in d.items()}
                    for layer, d in lrn.items()},
      "best_epoch": vs[0]["epochs"][best]["epoch"] if n_epochs else None,
      "curve_epochs": [vs[0]["epochs"][i]["epoch"] for i in range(n_epochs)],
      "curve": curve,
      "train_curve": [_band([v["epochs"][i]["train"] for v in vs])
                      for i in range(n_epochs)],
      "epochs_to_25pct_train_error": [v["to25"] for v in vs],
      "wall_seconds": statistics.fmean(v["wall"] for v in vs),
      "train_seconds": statistics.fmean(v["train_s"] for v in vs),
      "images_per_sec": statistics.fmean(v["ips"] for v in vs)}


def _plan(runs: list[dict]) -> dict:
  """The sweep the runs belong to. A sweep split across runners (each given
  some seeds or some of an axis's values by `--config.sweep.*`) records
  each runner's part in its runs; the plan is their union, each axis's
  values in the order of the widest part (the reference value first).
  Parts that have no finished run yet are not known here."""
  def size(part):
    return math.prod(len(v) for _, v in part["axes"]) * len(part["seeds"])
  axes = {}
  for part in sorted((r["sweep"] for r in runs), key=size, reverse=True):
    for field, values in part["axes"]:
      known = axes.setdefault(field, [])
      known += [v for v in values if v not in known]
  seeds = sorted({s for r in runs for s in r["sweep"]["seeds"]})
  return {"axes": [[f, v] for f, v in axes.items()], "seeds": seeds}


def _grid(axes):
  fields = [f for f, _ in axes]
  return [dict(zip(fields, combo))
          for combo in itertools.product(*[v for _, v in axes])]


def build(results: str) -> dict:
  """The report as a dict (also what results.json holds)."""
  runs = load(results)
  if not runs:
    raise ValueError(f"no per-run results in {results}/runs")
  plan = _plan(runs)
  axes = [(f, v) for f, v in plan["axes"]]
  diverged = [{"cell": r["cell"], "seed": r["seed"]} for r in runs
              if r.get("diverged")]
  views = [summary.record_view(r) for r in runs if not r.get("diverged")]
  by_cell = {}
  for v in views:
    by_cell.setdefault(_key(v["cell"]), []).append(v)
  grid = _grid(axes)
  order = {_key(c): i for i, c in enumerate(grid)}
  cells = [_cell(k, sorted(vs, key=lambda v: v["seed"]))
           for k, vs in sorted(by_cell.items(),
                               key=lambda kv: order.get(kv[0], len(order)))]
  done = {(_key(v["cell"]), v["seed"]) for v in views}
  seeds = list(dict.fromkeys(list(plan["seeds"]) + sorted(
      {v["seed"] for v in views})))
  complete = [s for s in seeds if all((_key(c), s) in done for c in grid)]
  partial = [s for s in seeds if s not in complete and any(
      (_key(c), s) in done for c in grid)]
  splits = sorted({v["eval_split"] for v in views})
  report = {
      "axes": plan["axes"], "seeds": plan["seeds"], "cells": cells,
      "diverged": diverged,
      "eval_splits": splits, "old_style_runs": sum(not v["new"] for v in views),
      "seed_spread": (statistics.fmean(c["val_sd"] for c in cells
                                       if len(c["seeds"]) > 1)
                      if any(len(c["seeds"]) > 1 for c in cells) else None),
      "seeds_complete": complete, "seeds_left_out": partial,
      "comparisons": [], "family": None, "anova": None,
      "secondary_effects": [],
      "runs_planned": len(grid) * len(plan["seeds"]), "runs_done": len(runs),
      "missing": [f"{_key(c)} seed {s}" for c in grid for s in plan["seeds"]
                  if (_key(c), s) not in done],
      "config": runs[0]["config"],
      "commits": sorted({v["commit"] for v in views})}
  primary = sweep_effects.effects(views, grid, axes, complete, "val",
                                  _error_name(splits))
  if primary:
    report.update(comparisons=primary["comparisons"],
                  family=primary["family"], anova=primary["anova"])
    report["secondary_effects"] = sweep_effects.secondary(
        views, grid, axes, complete)
  return report


def _error_name(splits) -> str:
  return ("error on the test split used as eval split" if splits == ["test"]
          else "validation error")


def _num(x, fmt) -> str:
  return "-" if x is None else format(x, fmt)


def _pm(ms) -> str:
  return "-" if ms is None else f"{ms[0]:.2f} +- {ms[1]:.2f}"


def to_markdown(report: dict) -> str:
  splits = report["eval_splits"]
  n_min = min(len(c["seeds"]) for c in report["cells"])
  axes = "; ".join(f"{f} = {' | '.join(map(str, v))}"
                   for f, v in report["axes"])
  lines = ["# Sweep results", "",
           f"{report['runs_done']} of {report['runs_planned']} runs done "
           f"(axes: {axes}; "
           f"seeds {', '.join(map(str, report['seeds']))}). Errors in % "
           f"at the last evaluation, mean +- sample sd over seeds; the "
           f"validation (eval) split: {', '.join(splits)}.", ""]
  if report.get("diverged"):
    lines += ["Diverged (a non-finite training loss; left out of every "
              "number below): " + "; ".join(
                  f"{_key(d['cell'])} seed {d['seed']}"
                  for d in report["diverged"]) + ".", ""]
  if splits == ["test"]:
    once = all(len(c["curve_epochs"]) == 1 for c in report["cells"])
    lines += ["These runs evaluated on the test split " + (
        "once, after the last step" if once else "at every epoch") +
              " (no held-out validation split): their 'validation' error "
              "is the test error, and no separate test number exists.", ""]
  if report["old_style_runs"]:
    lines += [f"{report['old_style_runs']} old-style run files: their "
              "per-epoch training error is the unweighted mean of the log "
              "windows, and epochs to 25% is interpolated between epoch "
              "means.", ""]
  if n_min < 5:
    lines += [f"With n = {n_min} seeds per cell this is a screen: the "
              "intervals are wide, and a difference that is not "
              "significant is no evidence of no effect.", ""]
  if report["missing"]:
    lines += [f"Not done yet: {'; '.join(report['missing'])}.", ""]
  lines += ["| cell | seeds | validation top-1 | 95% CI | top-5 | final "
            "training error | train/val gap | best epoch | epochs to 25% "
            "train error | training time per run | images/s |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
  for c in report["cells"]:
    to25 = ", ".join("-" if e is None else f"{e:.2f}"
                     for e in c["epochs_to_25pct_train_error"])
    lines.append(
        f"| {c['name']} | {len(c['seeds'])} | {c['val_mean']:.2f} +- "
        f"{c['val_sd']:.2f} | {_num(c['val_ci'][0], '.2f')} to "
        f"{_num(c['val_ci'][1], '.2f')} | {c['val_top5_mean']:.2f} | "
        f"{_pm(c['final_train_error'])} | {_pm(c['train_val_gap'])} | "
        f"{c['best_epoch']} | {to25} | {c['train_seconds'] / 60:.1f} min | "
        f"{c['images_per_sec']:.0f} |")
  if any(c["test_top1"] for c in report["cells"]):
    lines += ["", "## Test split (evaluated once at the end of training)",
              "", "Nothing in a run was chosen on it.", "",
              "| cell | runs with a test row | test top-1 | test top-5 |",
              "|---|---|---|---|"]
    lines += [f"| {c['name']} | {(c['test_top1'] or [0, 0, 0])[2]} | "
              f"{_pm(c['test_top1'])} | {_pm(c['test_top5'])} |"
              for c in report["cells"]]
  if any(c["lrn_final"] for c in report["cells"]):
    lines += ["", "## LRN statistic at the last evaluation (mean over "
              "seeds; alexnet_jax/lrn_stats.py)", "",
              "| cell | layer | spread | mean | logdev |",
              "|---|---|---|---|---|"]
    lines += [f"| {c['name']} | {layer} | {_num(d.get('spread'), '.4g')} | "
              f"{_num(d.get('mean'), '.4g')} | {_num(d.get('logdev'), '.4g')} |"
              for c in report["cells"] for layer, d in c["lrn_final"].items()]
  lines += ["", "## Effects (paired over seeds)", ""]
  done, left = report["seeds_complete"], report["seeds_left_out"]
  if not done:
    lines.append("No seed is complete in every cell yet: no paired analysis.")
  else:
    lines.append(f"On the {len(done)} seeds complete in every cell "
                 f"({', '.join(map(str, done))})" + (
                     f"; left out: {len(left)} seeds incomplete "
                     f"({', '.join(map(str, left))})" if left else "") +
                 f". {report['family']}.")
    lines += [""] + [f"- {c['text']}." for c in report["comparisons"]]
    lines += ["", "Blocked ANOVA of the final validation top-1 error "
              "(seeds as an additive block factor; SS in points^2). Its F "
              "tests pool one residual over all cells; each contrast above "
              "uses only its own per-seed differences (df = seeds - 1).", "",
              "| source | SS | df | MS | F | p |", "|---|---|---|---|---|---|"]
    lines += [f"| {t['source']} | {t['ss']:.3f} | {t['df']} | "
              f"{_num(t['ms'], '.3f')} | {_num(t['F'], '.2f')} | "
              f"{sweep_effects.p_text(t['p'])} |"
              for t in report["anova"]["terms"]]
    lines += sweep_effects.to_markdown(report.get("secondary_effects", []))
  if report["seed_spread"] is not None:
    lines += ["", f"Seed-to-seed spread (mean within-cell sd): "
              f"{report['seed_spread']:.2f} points."]
  lines += ["", f"Commits: {', '.join(report['commits'])}."]
  return "\n".join(lines) + "\n"


def _curves(plt, report, key, ylabel, path, hline=None) -> None:
  """One line per cell (mean over seeds) with its 95% CI band."""
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for i, c in enumerate(report["cells"]):
    pts = [(x, v) for x, v in zip(c["curve_epochs"], c[key]) if v is not None]
    x = [p[0] for p in pts]
    ax.plot(x, [p[1][0] for p in pts], "-", color=f"C{i}",
            label=f"{c['name']} (n={len(c['seeds'])})")
    band = [p for p in pts if p[1][1] is not None]
    if band:
      ax.fill_between([p[0] for p in band], [p[1][1] for p in band],
                      [p[1][2] for p in band], color=f"C{i}", alpha=0.2)
  if hline is not None:
    ax.axhline(hline, color="gray", linestyle="--", linewidth=1)
  ax.set_xlabel("epoch")
  ax.set_ylabel(ylabel)
  ax.set_title("mean over seeds, band: 95% CI", fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot(report: dict, results: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  split = "/".join(report["eval_splits"])
  _curves(plt, report, "curve", f"validation ({split}) top-1 error (%)",
          os.path.join(results, "curves.png"))
  weights = ("mean over the log windows" if report["old_style_runs"]
             else "step-weighted")
  _curves(plt, report, "train_curve", f"training error (%), {weights}",
          os.path.join(results, "train_curves.png"), hline=25.0)

  cells = report["cells"]
  fig, ax = plt.subplots(figsize=(7, 4))
  lo = [c["val_ci"][0] if c["val_ci"][0] is not None else c["val_mean"]
        for c in cells]
  hi = [c["val_ci"][1] if c["val_ci"][1] is not None else c["val_mean"]
        for c in cells]
  ax.bar(range(len(cells)), [c["val_mean"] for c in cells],
         yerr=[[c["val_mean"] - l for c, l in zip(cells, lo)],
               [h - c["val_mean"] for c, h in zip(cells, hi)]], capsize=4,
         color=[f"C{i}" for i in range(len(cells))])
  ax.set_xticks(range(len(cells)), [c["name"] for c in cells], rotation=20,
                ha="right", fontsize=8)
  ax.set_ylabel(f"final {split} top-1 error (%)")
  ax.set_title("validation error per cell: mean, 95% CI over seeds",
               fontsize=9)
  span = max(hi) - min(lo)
  ax.set_ylim(max(0, min(lo) - span - 1), max(hi) + span * 0.5 + 1)
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
