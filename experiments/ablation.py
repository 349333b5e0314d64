"""Runs a sweep config: every cell x seed as an ordinary training run.

  python -m experiments.ablation --config=configs/ablation_cifar10.py \
      --workdir=/tmp/ablation [--results=experiments/results/cifar10_ablation] \
      [--config.model.width=0.5 ...] [--report_only]

The config's `sweep` block names the axes ("model.norm=lrn|none", one line
each, the reference value first) and the seeds. An axis named `option`
("option=13pct,cpu|11pct,cpu") varies the config file's own option instead
of a field: each cell trains `--config=<file>:<value>`. With
`sweep.stop_train_error` set, a run ends as soon as a logged training
window's error is at or below it (the runner sends SIGTERM; the child saves
and stops): for experiments that time how fast a net reaches a training
error (Figure 1), not its final numbers. With `sweep.give_up_epochs` and
`sweep.give_up_error`, a run whose window error is still at or above the
latter after the former ends too (a rate that left the net at chance);
the per-run file says which (`ended`: target | gave_up). Each cell x seed runs as

  python -m alexnet_jax.main --config=<the sweep config> \
      --workdir=WORKDIR/runs/<cell>/seed<k> <your overrides> <the cell's> \
      --config.seed=<k>

(your overrides less `--config.sweep.*`, which are the runner's: e.g.
`"--config.sweep.seeds=(3,)"` gives each core its own seeds, and the
report plans the union of the parts) in a subprocess, with a progress line
at each of its evaluations (cell, seed, epoch, ETA of the whole sweep).
Resumable at every level: a run whose result file exists is skipped; an
interrupted one resumes from its checkpoint (the training program's own
resume); SIGTERM/Ctrl-C is passed
to the running child, which saves and stops. Each finished run writes
RESULTS/runs/<cell>__seed<k>.json (per-epoch test error and train loss,
wall time, images/s, config, command; small, to commit), and the report
(experiments/sweep_report.py) is rebuilt from those files alone, so a sweep
can be spread over machines and days.
"""

from __future__ import annotations

import ast
import itertools
import json
import os
import signal
import subprocess
import sys
import time

from absl import app
from absl import flags
from ml_collections import config_flags

from experiments import summary
from experiments import sweep_report

FLAGS = flags.FLAGS
OPTION = "option"  # The axis that varies the config file's option.
DIVERGED = 3  # alexnet_jax.main's exit code for a non-finite loss.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_axes(axes) -> list[tuple[str, list]]:
  """("model.norm=lrn|none", ...) -> [("model.norm", ["lrn", "none"]), ...]."""
  out = []
  for line in axes:
    field, sep, values = str(line).partition("=")
    if not sep or not values or ("." not in field and field != OPTION):
      raise ValueError(f"sweep axis {line!r}: want 'block.field=a|b' or "
                       f"'{OPTION}=a|b'")
    if field == OPTION:  # Config options stay strings ("13pct,cpu").
      out.append((field, values.split("|")))
      continue
    out.append((field, [_value(v) for v in values.split("|")]))
  fields = [f for f, _ in out]
  if len(set(fields)) != len(fields):
    raise ValueError(f"sweep axes set a field twice: {fields}")
  return out


def _value(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def cells(axes) -> list[dict]:
  """Every combination of axis values, the reference (first) cell first."""
  fields = [f for f, _ in axes]
  return [dict(zip(fields, combo))
          for combo in itertools.product(*[v for _, v in axes])]


def cell_name(cell: dict) -> str:
  return "_".join(f"{k.split('.')[-1]}-{v}" for k, v in cell.items())


def result_path(results: str, cell: dict, seed: int) -> str:
  return os.path.join(results, "runs", f"{cell_name(cell)}__seed{seed}.json")


def pending(todo: list, results: str):
  """(i, cell, seed) of each listed run whose result file is still absent
  when its turn comes: another runner sharing the results directory (given
  other seeds) may have finished it since this sweep listed it; resuming it
  would train nothing and rewrite its record with this sweep's fields."""
  for i, (cell, seed) in enumerate(todo):
    if os.path.exists(result_path(results, cell, seed)):
      print(f"[{i + 1}/{len(todo)}] {cell_name(cell)} seed {seed}: finished "
            f"by another runner since this sweep started; skipped",
            flush=True)
      continue
    yield i, cell, seed


def _commit() -> str:
  try:
    return subprocess.run(["git", "describe", "--always", "--dirty"],
                          capture_output=True, text=True, cwd=ROOT,
                          check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


class Child:
  """One training run in a subprocess; SIGTERM/SIGINT are passed to it."""

  def __init__(self, command: list[str]):
    self.proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
    self.stop = None
    self._previous = {s: signal.signal(s, self._forward)
                      for s in (signal.SIGTERM, signal.SIGINT)}

  def _forward(self, signum, frame):
    del frame
    self.stop = signal.Signals(signum).name
    self.proc.send_signal(signal.SIGTERM)  # It saves a checkpoint and stops.

  def lines(self):
    yield from self.proc.stdout

  def wait(self) -> int:
    code = self.proc.wait()
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    return code


class Progress:
  """ETA of the whole sweep from the epochs this invocation has timed."""

  def __init__(self, runs_left: int, epochs: float):
    self.epochs_left = runs_left * epochs
    self.epochs_per_run = epochs
    self.timed_epochs, self.timed_seconds = 0.0, 0.0

  def epoch_done(self, seconds: float, epochs: float = 1.0):
    self.timed_epochs += epochs
    self.timed_seconds += seconds
    self.epochs_left = max(0.0, self.epochs_left - epochs)

  def eta(self) -> str:
    if not self.timed_epochs:
      return "?"
    s = int(self.epochs_left * self.timed_seconds / self.timed_epochs)
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def child_overrides(argv: list[str]) -> list[str]:
  """The command line's config overrides that each run gets: not the
  runner's own `--config.sweep.*` (seeds, axes), which an option's config
  (`:11pct,cpu`) has no field for."""
  return [a for a in argv if a.startswith("--config.")
          and not a.startswith("--config.sweep.")]


def run_one(config_arg: str, overrides: list[str], workdir: str, cell: dict,
            seed: int, label: str, progress: Progress, sweep=None):
  """Trains one cell x seed (resuming from its checkpoint).

  Returns (ran to the end or was ended by the sweep's rules, command, exit
  code, signal passed on, workdir, why the runner ended it: None, "target"
  (sweep.stop_train_error reached) or "gave_up" (the training error still
  at or above sweep.give_up_error after sweep.give_up_epochs)).
  """
  sweep = sweep or {}
  target = sweep.get("stop_train_error")
  give_up = (sweep.get("give_up_epochs"), sweep.get("give_up_error"))
  run_dir = os.path.join(workdir, "runs", cell_name(cell), f"seed{seed}")
  if OPTION in cell:
    config_arg = f"{config_arg.partition(':')[0]}:{cell[OPTION]}"
  command = [sys.executable, "-m", "alexnet_jax.main",
             f"--config={config_arg}", f"--workdir={run_dir}", *overrides,
             *[f"--config.{k}={v}" for k, v in cell.items() if k != OPTION],
             f"--config.seed={seed}"]
  print(f"{label}: {' '.join(command[1:])}", flush=True)
  child = Child(command)
  per_epoch, last_eval, tail, ended = None, time.time(), [], None
  last_step = 0  # Of the last evaluation, or the step this run resumed at.
  for line in child.lines():
    tail = (tail + [line])[-20:]
    if ended is None and "train_accuracy=" in line and "  epoch " in line:
      error = 1 - float(line.split("train_accuracy=")[1].split()[0])
      epoch = float(line.split("  epoch ")[1].split()[0])
      if target is not None and error <= target:
        ended = "target"
        why = f"training error {error:.4f} <= {target}"
      elif None not in give_up and epoch >= give_up[0] and (
          error >= give_up[1]):
        ended = "gave_up"
        why = (f"training error {error:.4f} still >= {give_up[1]} after "
               f"{give_up[0]} epochs")
      if ended:
        print(f"{label}: {why} at step {line.split()[1]}: stopping the run",
              flush=True)
        child.proc.send_signal(signal.SIGTERM)
    if line.startswith(("resuming from", "warning:", "error:")):
      print(f"{label}: {line.strip()}", flush=True)
    if line.startswith("resuming from the checkpoint at step "):
      last_step = int(line.split()[-1])
    if " per epoch)" in line:  # "... N steps (M per epoch) at batch ..."
      per_epoch = int(line.split(" per epoch)")[0].split("(")[-1])
    if "eval_top1_error=" in line and per_epoch:
      step = int(line.split()[1])
      error = line.split("eval_top1_error=")[1].split()[0]
      now = time.time()
      # Epochs since the last evaluation: one for a run evaluated every
      # epoch, all of them for one evaluated once, at the end.
      progress.epoch_done(now - last_eval, (step - last_step) / per_epoch)
      last_eval, last_step = now, step
      print(f"{label}: epoch {step / per_epoch:.2f}/"
            f"{progress.epochs_per_run:g}  eval top-1 error {error}  "
            f"sweep ETA {progress.eta()}", flush=True)
  code = child.wait()
  finished = code == 0 and child.stop is None and (ended or not any(
      "stopped by" in l for l in tail))
  if code != 0:
    sys.stdout.write("".join(tail))
    print(f"{label}: exited with code {code}", flush=True)
  return finished, command, code, child.stop, run_dir, ended


# What a per-run file holds beside its run's summary.
KEPT = ("cell", "seed", "sweep", "commit", "command", "stop_train_error",
        "diverged", "ended", "multiview")


def figure1_command(results: str, axes) -> str:
  """The report's command for a sweep of runs ended at a training error:
  the rate grid's folder, or, for the seeds (an option axis, written into
  the grid's seeds/ folder), the grid beside them."""
  if not any(name == OPTION for name, _ in parse_axes(axes)):
    return (f"python -m experiments.figure1_report --grid={results} "
            f"--out={results}")
  grid = os.path.dirname(os.path.normpath(results))
  return (f"python -m experiments.figure1_report --grid={grid} "
          f"--seeds={results} --out={grid}")


def write_record(path: str, record: dict) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + ".tmp", "w") as f:
    json.dump(record, f, indent=1)
  os.replace(path + ".tmp", path)  # A result file is whole or absent.


def main(argv):
  del argv
  config = FLAGS.config
  if "sweep" not in config:
    print("error: the config has no `sweep` block (configs/ablation_*.py)",
          file=sys.stderr)
    return 2
  results = FLAGS.results or os.path.join(FLAGS.workdir, "results")
  try:
    axes = parse_axes(config.sweep.axes)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  seeds = list(config.sweep.seeds)
  # Seed by seed: a sweep stopped part way has every cell at its first
  # seeds rather than some cells complete and others absent.
  grid = [(c, s) for s in seeds for c in cells(axes)]
  plan = {"axes": [[f, v] for f, v in axes], "seeds": seeds}
  if FLAGS.resummarize:
    for cell, seed in grid:
      path = result_path(results, cell, seed)
      run_dir = os.path.join(FLAGS.workdir, "runs", cell_name(cell),
                             f"seed{seed}")
      if not (os.path.exists(path) and os.path.isdir(run_dir)):
        continue
      with open(path) as f:
        old = json.load(f)
      record = summary.summarize(run_dir)
      record.update({k: old[k] for k in KEPT if k in old})
      write_record(path, record)
      print(f"resummarized {path}", flush=True)
  elif not FLAGS.report_only:
    config_arg = config_flags.get_config_filename(FLAGS["config"])
    overrides = child_overrides(sys.argv[1:])
    todo = [(c, s) for c, s in grid
            if not os.path.exists(result_path(results, c, s))]
    print(f"sweep: {len(grid)} runs ({len(cells(axes))} cells x "
          f"{len(seeds)} seeds), {len(grid) - len(todo)} done, "
          f"{len(todo)} to run", flush=True)
    progress = Progress(len(todo), config.num_epochs if
                        config.num_train_steps <= 0 else 0)
    for i, cell, seed in pending(todo, results):
      label = f"[{i + 1}/{len(todo)}] {cell_name(cell)} seed {seed}"
      finished, command, code, stop, run_dir, ended = run_one(
          config_arg, overrides, FLAGS.workdir, cell, seed, label, progress,
          config.sweep)
      if stop:
        print(f"sweep: stopped by {stop}; rerun the same command to "
              f"continue", flush=True)
        return 0
      diverged = code == DIVERGED
      if not finished and not diverged:
        print(f"sweep: run {label} failed (exit {code}); fix it and rerun "
              f"the same command", file=sys.stderr, flush=True)
        return code or 1
      if diverged:  # An outcome of the cell (a rate grid), not a failure.
        print(f"{label}: diverged; recorded, the sweep goes on", flush=True)
        try:
          record = summary.summarize(run_dir)
        except (OSError, ValueError):  # Nothing logged before it diverged.
          record = {"epochs": []}
        record["diverged"] = True
      else:
        record = summary.summarize(run_dir)
      record.update(cell=cell, seed=seed, sweep=plan, commit=_commit(),
                    command="python " + " ".join(command[1:]),
                    stop_train_error=config.sweep.get("stop_train_error"),
                    ended=ended)
      write_record(result_path(results, cell, seed), record)
  if any(config.sweep.get(k) is not None
         for k in ("stop_train_error", "give_up_epochs")):
    # Runs ended at a training error have no final evaluation to compare.
    print(f"per-run files in {os.path.join(results, 'runs')}; report: "
          f"{figure1_command(results, config.sweep.axes)}", flush=True)
    return 0
  report = sweep_report.build(results)
  sweep_report.write(report, results)
  print(f"report: {os.path.join(results, 'results.md')} "
        f"({report['runs_done']} of {report['runs_planned']} runs)",
        flush=True)
  return 0


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", None, "A sweep config "
                                  "(configs/ablation_*.py).",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "Holds runs/<cell>/seed<k>/.")
  flags.DEFINE_string("results", None, "Per-run JSONs and the report "
                      "(default: WORKDIR/results).")
  flags.DEFINE_bool("report_only", False, "Rebuild the report from the "
                    "per-run files; train nothing.")
  flags.DEFINE_bool("resummarize", False, "Rewrite every per-run file "
                    "whose run's workdir is still under --workdir from that "
                    "workdir (after a change to experiments/summary.py), "
                    "keeping its cell, seed, commit and command; train "
                    "nothing.")
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
