"""Scores each finished run of a sweep again on cuda-convnet's multiview
test, from its last checkpoint, and stores it in the run's per-run file.

  python -m experiments.multiview --workdir=WORKDIR \
      --results=experiments/results/cifar10_lrn_claim

The multiview test (`--multiview-test` of cuda-convnet, data.eval_crops=10)
averages the softmax over the four corner crops, the centre and their
mirrors; the 11pct cfg's 11% was measured that way, where a sweep's runs
read the single centre crop. Each run is evaluated by its own training
command (the per-run file's `command`) with `--mode=eval --json
--config.data.eval_crops=10`, on the run's eval split, so the checkpoints
must still be in WORKDIR/runs/<cell>/seed<k> (the sweep's --workdir). The
result (error, loss, the LRN statistic where the net has LRN, the step)
goes under `multiview` in the per-run file; the sweep report then adds the
10-view error as a family of its own. A run already scored is skipped; a
run whose checkpoints are gone is named and left as it is.
"""

from __future__ import annotations

import glob
import json
import os
import shlex
import subprocess
import sys

from absl import app
from absl import flags

from experiments import ablation
from experiments import sweep_report

FLAGS = flags.FLAGS
CROPS = 10


def eval_command(record: dict, run_dir: str) -> list[str]:
  """The run's training command as an evaluation of its last checkpoint
  with the multiview test."""
  args = [a for a in shlex.split(record["command"])[1:]
          if not a.startswith(("--workdir=", "--mode="))]
  return [sys.executable, *args, f"--workdir={run_dir}", "--mode=eval",
          "--json", f"--config.data.eval_crops={CROPS}"]


def score(record: dict, run_dir: str) -> dict:
  """{"eval_crops", "step", eval metrics}; RuntimeError with the
  program's last words where the evaluation fails."""
  proc = subprocess.run(eval_command(record, run_dir), cwd=ablation.ROOT,
                        capture_output=True, text=True, check=False)
  lines = proc.stdout.strip().splitlines()
  if proc.returncode or not lines:
    raise RuntimeError((proc.stderr.strip().splitlines() or ["no output"])
                       [-1])
  return {"eval_crops": CROPS, **json.loads(lines[-1])}


def main(argv):
  del argv
  paths = sorted(glob.glob(os.path.join(FLAGS.results, "runs", "*.json")))
  if not paths:
    print(f"error: no per-run files in {FLAGS.results}/runs",
          file=sys.stderr)
    return 2
  failed = 0
  for path in paths:
    with open(path) as f:
      record = json.load(f)
    name = os.path.basename(path)
    if "multiview" in record:
      print(f"{name}: scored already", flush=True)
      continue
    run_dir = os.path.join(FLAGS.workdir, "runs",
                           ablation.cell_name(record["cell"]),
                           f"seed{record['seed']}")
    try:
      record["multiview"] = score(record, run_dir)
    except RuntimeError as e:
      print(f"{name}: not scored ({e})", file=sys.stderr, flush=True)
      failed += 1
      continue
    ablation.write_record(path, record)
    print(f"{name}: {CROPS}-view error "
          f"{100 * record['multiview']['eval_top1_error']:.2f}% at step "
          f"{record['multiview']['step']}", flush=True)
  report = sweep_report.build(FLAGS.results)
  sweep_report.write(report, FLAGS.results)
  print(f"report: {os.path.join(FLAGS.results, 'results.md')}", flush=True)
  return 1 if failed else 0


if __name__ == "__main__":
  flags.DEFINE_string("workdir", None, "The sweep's --workdir (holds "
                      "runs/<cell>/seed<k>/ with their checkpoints).")
  flags.DEFINE_string("results", None, "The sweep's --results (per-run "
                      "files in runs/).")
  flags.mark_flags_as_required(["workdir", "results"])
  app.run(main)
