"""The sweep runner and its report, on tiny synthetic cells."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from experiments import ablation
from experiments import sweep_report
from tests.test_checkpoint import ROOT, environment

TINY = ["--config.data.source=synthetic", "--config.model.width=0.125",
        "--config.data.num_train_examples=128",
        "--config.data.num_eval_examples=64", "--config.batch_size=32",
        "--config.num_epochs=2", "--config.log_every_steps=2",
        "--config.data.synthetic_noise=1.0"]


def sweep(workdir, *extra, wait=True):
  command = [sys.executable, "-m", "experiments.ablation",
             "--config=configs/ablation_cifar10.py", f"--workdir={workdir}",
             *TINY, *extra]
  if not wait:
    return subprocess.Popen(command, cwd=ROOT, env=environment(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
  return subprocess.run(command, cwd=ROOT, env=environment(),
                        capture_output=True, text=True, timeout=900)


def test_axes_parse_and_cells_start_with_the_reference():
  axes = ablation.parse_axes(("model.norm=lrn|none", "model.towers=2|1",
                              "data.pca_lighting=True|False"))
  assert axes[1] == ("model.towers", [2, 1])
  assert axes[2] == ("data.pca_lighting", [True, False])
  grid = ablation.cells(axes)
  assert len(grid) == 8
  assert grid[0] == {"model.norm": "lrn", "model.towers": 2,
                     "data.pca_lighting": True}
  with pytest.raises(ValueError, match="twice"):
    ablation.parse_axes(("model.norm=lrn|none", "model.norm=lrn|batchnorm"))


# Slow (8 training subprocesses, ~80 s): the default run keeps a sweep end to
# end (the killed-run test: 2 runs, resume, results) and the report's
# statistics (test_stats.py).
@pytest.mark.slow
def test_a_2x2_sweep_runs_reports_and_skips_what_is_done(tmp_path):
  # 2 x 2 of the config's axes (its norm axis has a third value, scale).
  grid = ("--config.sweep.axes=('model.norm=lrn|none', "
          "'model.pool=overlap|nonoverlap')", "--config.sweep.seeds=(0, 1)")
  proc = sweep(tmp_path, *grid)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  results = tmp_path / "results"
  runs = sorted(os.listdir(results / "runs"))
  assert len(runs) == 8  # 2 x 2 cells x 2 seeds.
  assert "norm-lrn_pool-overlap__seed0.json" in runs
  for name in ("results.md", "results.json", "curves.png", "train_curves.png",
               "bars.png"):
    assert (results / name).stat().st_size > 0
  assert "epoch 2.00/2" in proc.stdout and "sweep ETA" in proc.stdout
  record = json.loads((results / "runs" / runs[0]).read_text())
  assert [e["epoch"] for e in record["epochs"]] == [1.0, 2.0]
  assert record["command"].startswith("python -m alexnet_jax.main")
  report = json.loads((results / "results.json").read_text())
  assert report["runs_done"] == report["runs_planned"] == 8
  assert report["missing"] == []
  # One comparison over all cells and one per context, for each axis.
  assert len(report["comparisons"]) == 2 * 3
  # The report is rebuilt from the per-run files alone, identically.
  rebuilt = json.loads(json.dumps(sweep_report.build(str(results))))
  assert rebuilt == report
  md = (results / "results.md").read_text()
  assert ("norm=none - norm=lrn, averaged over pool: " in md and
          "paired over 2 seeds" in md)

  before = {r: (results / "runs" / r).stat().st_mtime_ns for r in runs}
  again = sweep(tmp_path, *grid)
  assert again.returncode == 0
  assert "8 done, 0 to run" in again.stdout
  assert "alexnet_jax.main" not in again.stdout  # Nothing was trained.
  assert before == {r: (results / "runs" / r).stat().st_mtime_ns
                    for r in runs}


def test_a_killed_run_resumes_and_only_what_is_missing_runs(tmp_path):
  args = ["--config.sweep.axes=('model.pool=overlap|nonoverlap',)",
          "--config.sweep.seeds=(0,)", "--config.num_epochs=6"]
  runner = sweep(tmp_path, *args, wait=False)
  first = tmp_path / "runs" / "pool-overlap" / "seed0" / "checkpoints"
  deadline = time.time() + 300
  while not (first.is_dir() and any(p.name.isdigit() for p in first.iterdir())):
    assert time.time() < deadline and runner.poll() is None
    time.sleep(0.2)
  child = subprocess.run(["pgrep", "-P", str(runner.pid)], capture_output=True,
                         text=True).stdout.split()
  assert len(child) == 1
  os.kill(int(child[0]), signal.SIGKILL)
  out, _ = runner.communicate(timeout=120)
  assert runner.returncode != 0 and "exited with code -9" in out
  assert not (tmp_path / "results" / "runs").exists()

  proc = sweep(tmp_path, *args)
  assert proc.returncode == 0, proc.stdout[-3000:]
  assert "0 done, 2 to run" in proc.stdout
  assert "resuming from the checkpoint at step" in proc.stdout
  assert sorted(os.listdir(tmp_path / "results" / "runs")) == [
      "pool-nonoverlap__seed0.json", "pool-overlap__seed0.json"]


def test_the_runner_ends_runs_at_a_target_or_when_they_give_up(tmp_path):
  # One cell, one seed: with give_up_error 0 every run "gives up" at its
  # first logged window past give_up_epochs; with stop_train_error 1 every
  # run reaches its target at its first window.
  for rule, ended in ((("--config.sweep.give_up_epochs=1",
                         "--config.sweep.give_up_error=0.0"), "gave_up"),
                      (("--config.sweep.stop_train_error=1.0",), "target")):
    results = tmp_path / ended
    proc = sweep(tmp_path / f"w_{ended}", f"--results={results}", *rule,
                 "--config.sweep.axes=('model.pool=overlap',)",
                 "--config.sweep.seeds=(0,)", "--config.num_epochs=4")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "stopping the run" in proc.stdout
    record = json.loads((results / "runs" / "pool-overlap__seed0.json")
                        .read_text())
    assert record["ended"] == ended
    # Ended early: fewer than the 4 epochs' steps were trained.
    assert record["steps"] < 4 * 4


def test_a_run_another_runner_finished_meanwhile_is_skipped(tmp_path,
                                                            capsys):
  todo = [({"model.pool": "overlap"}, 0), ({"model.pool": "nonoverlap"}, 0),
          ({"model.pool": "overlap"}, 1)]
  done = []
  for i, cell, seed in ablation.pending(todo, str(tmp_path)):
    done.append((cell["model.pool"], seed))
    if i == 0:  # Meanwhile another runner writes the third run's record.
      path = ablation.result_path(str(tmp_path), *todo[2])
      os.makedirs(os.path.dirname(path))
      with open(path, "w") as f:
        f.write("{}")
  assert done == [("overlap", 0), ("nonoverlap", 0)]
  assert ("[3/3] pool-overlap seed 1: finished by another runner"
          in capsys.readouterr().out)


def test_the_figure1_report_command_names_the_grid_and_the_seeds():
  grid = ablation.figure1_command(
      "res/fig1", ("model.activation=relu|tanh", "optim.learning_rate=0.1"))
  assert grid == ("python -m experiments.figure1_report --grid=res/fig1 "
                  "--out=res/fig1")
  seeds = ablation.figure1_command("res/fig1/seeds/",
                                   ("option=fig1_relu|fig1_tanh",))
  assert seeds == ("python -m experiments.figure1_report --grid=res/fig1 "
                   "--seeds=res/fig1/seeds/ --out=res/fig1")


def test_the_runner_keeps_its_own_sweep_overrides_from_the_runs():
  """A run of an option axis (`:11pct,cpu`) loads a config without a sweep
  block, so `--config.sweep.seeds=(0,)` given to the runner must not reach
  it; every other override does."""
  from configs import cuda_convnet  # pylint: disable=g-import-not-at-top
  argv = ["--config=configs/cuda_convnet.py:lrn_claim,cpu",
          "--config.sweep.seeds=(0,)", "--config.num_epochs=2",
          "--workdir=w", "--config.sweep.axes=('option=11pct,cpu',)"]
  assert ablation.child_overrides(argv) == ["--config.num_epochs=2"]
  assert "sweep" not in cuda_convnet.get_config("11pct,cpu")
  claim = cuda_convnet.get_config("lrn_claim,cpu")
  assert "sweep" in claim
  # Each cell's own config reads the test split once, at the end, as the
  # claim's config says: its options carry ',once'.
  cells = ablation.parse_axes(claim.sweep.axes)[0][1]
  assert cells == ["11pct,cpu,once", "13pct,cpu,once",
                   "11pct,cpu,once,nonorm"]
  nets = []
  for option in cells:
    c = cuda_convnet.get_config(option)
    assert c.eval_every_steps >= 10 ** 9 and c.num_epochs == 40
    nets.append((c.model.net, c.model.norm))
  # The control: 11pct, its rnorm layers dropped, everything else kept.
  assert nets == [("11pct", "rnorm"), ("13pct", "rnorm"), ("11pct", "none")]
  assert (cuda_convnet.get_config(cells[2]).optim.to_dict() ==
          cuda_convnet.get_config(cells[0]).optim.to_dict())
  # However the claim's own suffixes are spelled, its cells get the CPU
  # schedule.
  assert ablation.parse_axes(cuda_convnet.get_config(
      "lrn_claim,cpu,once").sweep.axes)[0][1] == cells
  assert cuda_convnet.get_config("11pct,cpu").eval_every_steps < 10 ** 9
  with pytest.raises(ValueError, match="unknown config option"):
    cuda_convnet.get_config("11pct,twice")


def test_a_sweep_split_across_runners_reports_as_one(tmp_path):
  """Seed 0 ran as the whole sweep; seeds 1 and 2 ran as two runners, one
  per norm value (`--config.sweep.axes`, `--config.sweep.seeds`): each run
  records its runner's part, and the report plans their union."""
  # pylint: disable=g-import-not-at-top
  from tests.test_stats import AXES, _effect, _old_record, _write
  pools = AXES[1]
  for norm in ("lrn", "none"):
    for pool in pools[1]:
      cell = {"model.norm": norm, "model.pool": pool}
      for seed in range(3):
        record = _old_record(cell, seed, _effect(cell, seed))
        # Scored on 10 views (experiments/multiview.py): 1 point lower.
        record["multiview"] = {"eval_top1_error": _effect(cell, seed) - 0.01}
        if seed:
          record["sweep"] = {"axes": [["model.norm", [norm]], pools],
                             "seeds": [1, 2]}
        else:
          record["sweep"] = {"axes": AXES, "seeds": [0]}
        _write(tmp_path, record)
  report = sweep_report.build(str(tmp_path))
  assert report["axes"] == AXES and report["seeds"] == [0, 1, 2]
  assert report["runs_done"] == report["runs_planned"] == 12
  assert report["missing"] == [] and report["seeds_complete"] == [0, 1, 2]
  main = report["comparisons"][0]
  assert main["text"].startswith("norm=none - norm=lrn, averaged over pool")
  (views,) = [f for f in report["secondary_effects"]
              if f["metric"] == "multiview"]
  assert views["comparisons"][0]["mean"] == pytest.approx(main["mean"])
  # Runs that read the test split once, at the end, are said to have.
  for path in (tmp_path / "runs").glob("*.json"):
    record = json.loads(path.read_text())
    record["epochs"] = record["epochs"][-1:]
    path.write_text(json.dumps(record))
  sweep_report.write(sweep_report.build(str(tmp_path)), str(tmp_path))
  assert "on the test split once, after the last step" in (
      tmp_path / "results.md").read_text()


def test_multiview_scores_each_finished_run_from_its_checkpoint(tmp_path):
  """One tiny run, then experiments/multiview.py: its per-run file gains
  the 10-view error and the LRN statistic of its last checkpoint; a second
  pass skips it; a run whose checkpoints are gone is named, exit 1."""
  proc = sweep(tmp_path, "--config.sweep.axes=('model.norm=lrn',)",
               "--config.sweep.seeds=(0,)")
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  results = tmp_path / "results"
  command = [sys.executable, "-m", "experiments.multiview",
             f"--workdir={tmp_path}", f"--results={results}"]

  def multiview():
    return subprocess.run(command, cwd=ROOT, env=environment(),
                          capture_output=True, text=True, timeout=600)
  proc = multiview()
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  (path,) = (results / "runs").glob("*.json")
  record = json.loads(path.read_text())
  mv = record["multiview"]
  assert mv["eval_crops"] == 10 and mv["step"] == record["steps"]
  assert 0.0 <= mv["eval_top1_error"] <= 1.0
  assert mv["eval_examples"] == 64  # Every eval image once, 10 views each.
  assert {"lrn/conv1/mean", "lrn/conv2/spread"} <= set(mv)
  assert "scored already" in multiview().stdout
  del record["multiview"]
  path.write_text(json.dumps(record))
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.rmtree(tmp_path / "runs")
  proc = multiview()
  assert proc.returncode == 1 and "not scored" in proc.stderr
