"""The paper's Figure 1 from its two sweeps: the learning-rate grid per
activation, then seeds at each activation's fastest rate.

  python -m experiments.figure1_report \
      --grid=experiments/results/cifar10_figure1_paper \
      --seeds=experiments/results/cifar10_figure1_paper/seeds \
      --out=experiments/results/cifar10_figure1_paper

Reads the per-run files the sweep runner wrote (configs/cuda_convnet.py:fig1
and :fig1_seeds) and writes OUT/figure1.md, figure1.json and figure1.png
(training error against epochs, the 25% line: the paper's axes). The time
to 25% training error is interpolated between logged windows of the running
training error (experiments/summary.py), not rounded to epochs; a second
reading, less sensitive to one lucky 20-step window, is the first epoch at
which the step-weighted mean error of the last epoch's windows is <= 25%
(none for a run the runner stopped at its first window). The rate of each
activation is the one that reached 25% in the fewest epochs in the grid
(seed 0; the paper chose "to make training as fast as possible", on
training error). The ratio tanh / ReLU is estimated per seed (the same seed
gives both nets the same data order) and summarised as the geometric mean
with a 95% t-interval of the mean log ratio.
"""

from __future__ import annotations

import json
import math
import os

from absl import app
from absl import flags

from experiments import stats
from experiments import sweep_report

FLAGS = flags.FLAGS
TARGET = 0.25


def _field(run: dict, name: str):
  return run["cell"].get(name)


def _activation(run: dict) -> str:
  act = _field(run, "model.activation")
  if act is None:  # A fig1_seeds cell: option=fig1_relu | fig1_tanh.
    act = str(_field(run, "option")).split("_")[-1]
  return act


def _epochs(run: dict) -> float | None:
  return None if run.get("diverged") else run.get(
      "epochs_to_25pct_train_error")


def _trained(run: dict) -> float | None:
  """The epochs the run trained for (its last logged window's end)."""
  curve = run.get("train_curve") or []
  return max((point[0] for point in curve), default=None)


def epoch_mean_crossing(run: dict, threshold: float = TARGET,
                        span: float = 1.0) -> float | None:
  """The first logged epoch at which the step-weighted mean training error
  of the last `span` epochs of windows is <= threshold: a smoothed reading
  of the same curve, which one lucky 20-step window cannot reach early."""
  curve = run.get("train_curve") or []
  if run.get("diverged"):
    return None
  for end, _, _ in curve:
    if end < span:
      continue
    window = [(err, n) for e, err, n in curve if end - span < e <= end]
    steps = sum(n for _, n in window)
    if steps and sum(err * n for err, n in window) / steps <= threshold:
      return end
  return None


def _stopped_at_target(run: dict) -> bool:
  """Ended by the runner's stop rule (a window at sweep.stop_train_error):
  too soon for the 1-epoch mean to say anything."""
  stop = run.get("stop_train_error")
  curve = run.get("train_curve") or []
  return run.get("ended") == "target" or (
      stop is not None and any(err <= stop for _, err, _ in curve))


def _smoothed_text(run: dict) -> str:
  mean = epoch_mean_crossing(run)
  return ("- (stopped at the first window)" if mean is None and
          _stopped_at_target(run) else
          _unreached("not reached", _trained(run)) if mean is None else
          f"{mean:.2f}")


def _unreached(text: str, trained: float | None) -> str:
  """`text`, and within how many epochs where that is known."""
  return text if trained is None else f"{text} within {trained:.1f} epochs"


def rate_table(grid: list[dict]) -> dict:
  """{activation: {"rows": [(rate, epochs or None, diverged, gave up,
  epochs trained, the 1-epoch mean's text)], "best": rate or None}}
  from the grid's seed-0 runs."""
  out = {}
  for run in grid:
    rate = float(_field(run, "optim.learning_rate"))
    out.setdefault(_activation(run), {"rows": []})["rows"].append(
        (rate, _epochs(run), bool(run.get("diverged")),
         run.get("ended") == "gave_up", _trained(run),
         _smoothed_text(run)))
  for entry in out.values():
    entry["rows"].sort()
    reached = [(e, r) for r, e, *_ in entry["rows"] if e is not None]
    entry["best"] = min(reached)[1] if reached else None
  return out


def ratio(seeds: list[dict], measure=None) -> dict | None:
  """tanh / ReLU epochs to 25%, paired by seed: per-seed ratios and the
  geometric mean with a 95% t-interval of the mean log ratio."""
  by = {}
  for run in seeds:
    by.setdefault(run["seed"], {})[_activation(run)] = (measure or _epochs)(
        run)
  pairs = {s: v["tanh"] / v["relu"] for s, v in sorted(by.items())
           if v.get("relu") and v.get("tanh")}
  if not pairs:
    return None
  logs = [math.log(r) for r in pairs.values()]
  mean, lo, hi = stats.t_ci(logs)
  return {"per_seed": pairs, "geometric_mean": math.exp(mean),
          "ci": None if lo is None else [math.exp(lo), math.exp(hi)],
          "n": len(pairs),
          "not_reached": sorted(s for s, v in by.items()
                                if not (v.get("relu") and v.get("tanh"))),
          "at_least": _lower_bounds(seeds, by)}


def _lower_bounds(seeds: list[dict], by: dict) -> dict:
  """{seed: epochs tanh trained / ReLU's epochs} where ReLU reached 25% and
  tanh did not: that seed's ratio is above it, so leaving the seed out
  biases the mean ratio down."""
  trained = {r["seed"]: _trained(r) for r in seeds
             if _activation(r) == "tanh"}
  return {s: trained[s] / v["relu"] for s, v in sorted(by.items())
          if v.get("relu") and not v.get("tanh") and trained.get(s)}


def _ratio_line(what: str, result: dict) -> str:
  ci = (f"95% CI {result['ci'][0]:.2f} to {result['ci'][1]:.2f}"
        if result["ci"] else "no interval with one seed")
  missing = (f"; seeds {result['not_reached']} left out: an arm did not "
             f"reach 25%" if result["not_reached"] else "")
  bounds = result.get("at_least") or {}
  missing += "".join(f"; seed {s}: tanh did not reach 25% within the run, "
                     f"its ratio > {b:.2f}" for s, b in bounds.items())
  return (f"tanh / ReLU {what}: {result['geometric_mean']:.2f}x (geometric "
          f"mean over {result['n']} seeds, {ci}; per seed "
          + ", ".join(f"{s}: {r:.2f}" for s, r in result["per_seed"].items())
          + f"{missing}). The paper: six times.")


def to_markdown(table: dict, result: dict | None, seeds: list[dict],
                smoothed: dict | None = None) -> str:
  """The rate table, the seeds and the ratio. Two readings of each curve:
  the first 20-step window at <= 25% (interpolated; the runner's and the
  rate choice's), and the first epoch whose last-epoch mean is <= 25%."""
  lines = ["# Figure 1: ReLU vs tanh to 25% training error", "",
           "## Learning-rate grid (seed 0): epochs to 25% training error", "",
           "| activation | rate | first window at 25% | 1-epoch mean at 25% |",
           "|---|---|---|---|"]
  for act, entry in sorted(table.items()):
    for rate, epochs, diverged, gave_up, trained, smooth in entry["rows"]:
      text = ("diverged" if diverged else
              _unreached("did not leave chance, stopped", trained) if gave_up
              else _unreached("not reached", trained) if epochs is None
              else f"{epochs:.2f}")
      smooth = "-" if diverged or gave_up else smooth
      best = " (fastest)" if rate == entry["best"] else ""
      lines.append(f"| {act} | {rate:g}{best} | {text} | {smooth} |")
  lines.append("")
  if seeds:
    lines += ["## Seeds at the chosen rates", "",
              "| activation | seed | first window at 25% | 1-epoch mean at "
              "25% |", "|---|---|---|---|"]
    for run in sorted(seeds, key=lambda r: (_activation(r), r["seed"])):
      e = _epochs(run)
      first = _unreached("not reached", _trained(run)) if e is None else (
          f"{e:.2f}")
      lines.append(f"| {_activation(run)} | {run['seed']} | {first} | "
                   f"{_smoothed_text(run)} |")
    lines.append("")
  if result:
    lines += [_ratio_line("epochs to the first window at 25% training error",
                          result), ""]
  if smoothed:
    lines += [_ratio_line("epochs to a 1-epoch mean of 25% training error",
                          smoothed), ""]
  return "\n".join(lines)


def plot(runs: list[dict], path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  # The grid's runs all name a rate; among the seeds a grid run may stand in
  # for its seed (a copy at the chosen rate), and the seeds' plot stays one
  # colour per activation.
  grid = all(_field(r, "optim.learning_rate") is not None for r in runs)
  labelled = set()
  for i, run in enumerate(sorted(runs, key=lambda r: (
      _activation(r), r["seed"], float(_field(r, "optim.learning_rate") or 0)))):
    curve = run.get("train_curve") or []
    if not curve:
      continue
    act = _activation(run)
    # The grid: one colour per run, labelled by its rate; the seeds: one
    # colour per activation (solid ReLU, dashed tanh, as the paper).
    label = (f"{act}, lr {float(_field(run, 'optim.learning_rate')):g}"
             if grid else act)
    ax.plot([c[0] for c in curve], [c[1] for c in curve],
            "-" if act == "relu" else "--",
            color=f"C{i % 10}" if grid else ("C0" if act == "relu" else "C3"),
            lw=1, label=None if label in labelled else label)
    labelled.add(label)
  ax.axhline(TARGET, color="k", lw=0.8, ls=":")
  ax.set_xlabel("epochs")
  ax.set_ylabel("training error rate")
  ax.set_ylim(0, 0.8)
  ax.legend()
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv):
  del argv
  grid = sweep_report.load(FLAGS.grid)
  seeds = sweep_report.load(FLAGS.seeds) if FLAGS.seeds and os.path.isdir(
      os.path.join(FLAGS.seeds, "runs")) else []
  table = rate_table(grid)
  result = ratio(seeds) if seeds else None
  smoothed = ratio(seeds, epoch_mean_crossing) if seeds else None
  os.makedirs(FLAGS.out, exist_ok=True)
  with open(os.path.join(FLAGS.out, "figure1.json"), "w") as f:
    json.dump({"grid": table, "ratio": result, "ratio_1_epoch_mean": smoothed},
              f, indent=1)
  text = to_markdown(table, result, seeds, smoothed)
  with open(os.path.join(FLAGS.out, "figure1.md"), "w") as f:
    f.write(text + "\n")
  plot(seeds or grid, os.path.join(FLAGS.out, "figure1.png"))
  print(text)
  return 0


if __name__ == "__main__":
  flags.DEFINE_string("grid", None, "The rate grid's results folder.")
  flags.DEFINE_string("seeds", None, "The seeds' results folder (optional).")
  flags.DEFINE_string("out", None, "Where figure1.md/.json/.png go.")
  flags.mark_flags_as_required(["grid", "out"])
  app.run(main)
