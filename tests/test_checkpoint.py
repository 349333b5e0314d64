"""Checkpoints, resume, preemption, divergence and bad input, end to end.

These run `python -m alexnet_jax.main` as real subprocesses (SIGKILL and
SIGTERM need a real process), with the 8 fake devices of conftest.py.
"""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from alexnet_jax import checkpoint as checkpoint_lib
from alexnet_jax import input_pipeline
from alexnet_jax import train
from configs import smoke
from tests import xla_flags

ROOT = pathlib.Path(__file__).resolve().parent.parent
# A wider smoke model: slow enough per step (~0.1 s) that a kill lands
# mid-run; the subprocesses get one device (quicker to compile) unless a test
# asks for a mesh.
BASE = ["--config=configs/smoke.py", "--config.log_every_steps=1",
        "--config.eval_every_steps=1000", "--config.model.width=0.25"]


def command(workdir, *extra):
  return [sys.executable, "-m", "alexnet_jax.main", f"--workdir={workdir}",
          *BASE, *extra]


def environment(devices=1):
  return dict(os.environ, XLA_FLAGS=xla_flags.flags(devices))


def run(workdir, *extra, devices=1, timeout=None):
  return subprocess.run(command(workdir, *extra), cwd=ROOT,
                        env=environment(devices), capture_output=True,
                        text=True, timeout=timeout)


def start(workdir, *extra):
  return subprocess.Popen(command(workdir, *extra), cwd=ROOT,
                          env=environment(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def logged_steps(workdir):
  path = pathlib.Path(workdir) / "metrics.jsonl"
  if not path.exists():
    return []
  return [json.loads(l)["step"] for l in path.read_text().splitlines()
          if "train_loss" in l]


def train_losses(workdir):
  """{step: train loss}, the last row for a step logged twice."""
  path = pathlib.Path(workdir) / "metrics.jsonl"
  return {json.loads(l)["step"]: json.loads(l)["train_loss"]
          for l in path.read_text().splitlines() if "train_loss" in l}


def saved_steps(workdir):
  d = pathlib.Path(workdir) / "checkpoints"
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if (
      d.exists()) else []


def wait_for(predicate, proc, timeout=240):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if predicate():
      return
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    time.sleep(0.005)
  raise AssertionError("timed out waiting for the training run")


def saved_state(workdir, step):
  path = pathlib.Path(workdir) / "checkpoints" / str(step) / "state"
  return ocp.StandardCheckpointer().restore(path)


def assert_trees_equal(a, b):
  la, lb = jax.tree.leaves_with_path(a), jax.tree.leaves_with_path(b)
  assert [p for p, _ in la] == [p for p, _ in lb]
  for (path, x), (_, y) in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y),
                                  err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
  """20 steps without interruption, checkpoints every 10."""
  workdir = tmp_path_factory.mktemp("straight")
  proc = run(workdir, "--config.num_train_steps=20",
             "--config.checkpoint_every_steps=10")
  assert proc.returncode == 0, proc.stderr[-2000:]
  return workdir


def test_sigkill_then_resume_gives_identical_parameters(straight_run,
                                                        tmp_path):
  args = ("--config.num_train_steps=20", "--config.checkpoint_every_steps=10")
  proc = start(tmp_path, *args)
  wait_for(lambda: 10 in saved_steps(tmp_path), proc)
  proc.send_signal(signal.SIGKILL)
  proc.communicate()
  assert proc.returncode == -signal.SIGKILL
  assert saved_steps(tmp_path) == [10], "the kill came after the last save"
  resumed = run(tmp_path, *args)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert "resuming from the checkpoint at step 10" in resumed.stdout
  assert_trees_equal(saved_state(straight_run, 20), saved_state(tmp_path, 20))
  # Determinism too: another process with the same config and seed logged
  # the same losses, bit for bit (steps the killed run logged after its last
  # checkpoint were logged again by the resumed run; the last row counts).
  assert train_losses(tmp_path) == train_losses(straight_run)


def test_sigterm_saves_exits_zero_and_resumes_at_the_next_step(tmp_path):
  proc = start(tmp_path, "--config.num_train_steps=100000",
               "--config.checkpoint_every_steps=100000")
  wait_for(lambda: len(logged_steps(tmp_path)) >= 3, proc)
  t0 = time.time()
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=60)
  assert proc.returncode == 0, err[-2000:]
  assert time.time() - t0 < 30  # "within seconds", generously for CI.
  stopped = saved_steps(tmp_path)[-1]
  assert f"stopped by SIGTERM at step {stopped}" in out
  resumed = run(tmp_path, f"--config.num_train_steps={stopped + 2}",
                "--config.checkpoint_every_steps=100000")
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert f"resuming from the checkpoint at step {stopped}" in resumed.stdout
  assert logged_steps(tmp_path)[-2:] == [stopped + 1, stopped + 2]


def test_divergence_stops_with_the_step_and_keeps_the_last_checkpoint(
    tmp_path):
  proc = run(tmp_path, "--config.optim.learning_rate=1e8",
             "--config.checkpoint_every_steps=1", "--config.num_train_steps=50")
  assert proc.returncode == 3
  assert "training diverged" in proc.stderr
  assert "Traceback" not in proc.stderr, proc.stderr[-6000:]
  bad_step = int(proc.stderr.split(" at step ")[1].split(";")[0])
  steps = saved_steps(tmp_path)
  assert steps and steps[-1] == bad_step - 1
  state = saved_state(tmp_path, steps[-1])
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state["model"])
             if np.issubdtype(np.asarray(x).dtype, np.floating))


def test_incompatible_checkpoint_is_refused_and_left_intact(straight_run):
  before = {p: p.stat().st_mtime_ns
            for p in pathlib.Path(straight_run).rglob("*") if p.is_file()}
  proc = run(straight_run, "--config.num_train_steps=30",
             "--config.model.towers=1")
  assert proc.returncode == 2
  assert "checkpoint of a different model" in proc.stderr
  assert "model.towers=None (now 1)" in proc.stderr
  assert "Traceback" not in proc.stderr, proc.stderr[-6000:]
  after = {p: p.stat().st_mtime_ns for p in before}
  assert before == after
  assert saved_steps(straight_run) == [10, 20]


@pytest.mark.parametrize("args,message", [
    (["--config.model.nonexistent=1"], "no such config field 'nonexistent'"),
    (["--config.batch_size=lots"], "--config.batch_size=lots"),
    (["--config.mesh.data=3"], "mesh 3x1 (data x model) needs 3 devices"),
    (["--config=configs/missing.py"], "cannot load --config"),
])
def test_bad_input_gives_one_line_and_exit_2(tmp_path, args, message):
  proc = run(tmp_path, *args)
  assert proc.returncode == 2
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert any(message in l and l.startswith("error:") for l in lines), (
      proc.stderr[-2000:])
  assert "Traceback" not in proc.stderr, proc.stderr[-6000:]


def test_metrics_jsonl_and_tensorboard_hold_the_scalars(straight_run):
  rows = [json.loads(l) for l in
          (straight_run / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows if "train_loss" in r] == list(range(1, 21))
  assert any("eval_top5_error" in r for r in rows)
  import tensorflow as tf  # An independent reader of the event files.
  scalars = {}
  for path in (straight_run / "tensorboard").glob("events.out.tfevents.*"):
    for event in tf.compat.v1.train.summary_iterator(str(path)):
      for v in event.summary.value:
        scalars.setdefault(v.tag, []).append((event.step, v.simple_value))
  assert {"train_loss", "train_accuracy", "learning_rate", "images_per_sec",
          "eval_top1_error", "eval_top5_error"} <= set(scalars)
  np.testing.assert_allclose(
      [v for _, v in sorted(scalars["train_loss"])],
      [r["train_loss"] for r in rows if "train_loss" in r], rtol=1e-6)


def test_eval_mode_reads_the_checkpoint(straight_run):
  proc = run(straight_run, "--mode=eval")
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "checkpoint step 20: " in proc.stdout
  final = [json.loads(l) for l in
           (straight_run / "metrics.jsonl").read_text().splitlines()][-1]
  assert f"eval_top1_error={final['eval_top1_error']:.4g}" in proc.stdout


def tiny_config(**top):
  config = smoke.get_config()
  config.log_every_steps = 1
  config.data.num_eval_examples = 40
  for k, v in top.items():
    config[k] = v
  return config


def test_plateau_state_survives_resume(tmp_path):
  config = tiny_config(num_train_steps=3, eval_every_steps=1)
  config.optim.schedule = "plateau"
  config.optim.plateau_patience = 1
  config.optim.learning_rate = 1e-9  # Nothing improves: a cut every eval.
  config.optim.plateau_max_reductions = 2
  train.train_and_evaluate(config, str(tmp_path))
  ckpts = checkpoint_lib.Checkpoints(str(tmp_path), max_to_keep=3)
  meta = ckpts.read_meta(ckpts.latest_step())
  ckpts.close()
  assert meta["plateau"]["reductions"] == 2
  config.num_train_steps = 4
  train.train_and_evaluate(config, str(tmp_path))
  row = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text()
         .splitlines() if "train_loss" in l][-1]
  assert row["step"] == 4
  np.testing.assert_allclose(row["learning_rate"], 1e-9 * 0.01, rtol=1e-9)


class SignalOnFirstBatch:
  """Eval batches that send this process SIGTERM as the first is read."""

  def __init__(self, batches):
    self.batches, self.num_skipped = batches, 0

  def __iter__(self):
    for i, batch in enumerate(self.batches):
      if i == 0:
        os.kill(os.getpid(), signal.SIGTERM)
      yield batch


def test_a_signal_during_an_evaluation_saves_and_the_resume_evaluates(
    tmp_path, monkeypatch, capsys):
  config = tiny_config(num_train_steps=4, eval_every_steps=2)
  real = input_pipeline.eval_iterator

  def signalling(*args, **kwargs):
    info, batches = real(*args, **kwargs)
    return info, SignalOnFirstBatch(batches)

  monkeypatch.setattr(input_pipeline, "eval_iterator", signalling)
  out = train.train_and_evaluate(config, str(tmp_path))
  # The stop did not wait for the evaluation (two batches of 32 rows).
  assert out["stopped_at"] == 2
  assert "eval_top1_error" not in out
  assert "the evaluation at this step runs first on resume" in (
      capsys.readouterr().out)
  ckpts = checkpoint_lib.Checkpoints(str(tmp_path), max_to_keep=3)
  assert ckpts.steps() == [2]
  assert ckpts.read_meta(2)["eval_pending"] is True
  ckpts.close()
  assert not [l for l in (tmp_path / "metrics.jsonl").read_text()
              .splitlines() if "eval_top1_error" in l]

  monkeypatch.setattr(input_pipeline, "eval_iterator", real)
  out = train.train_and_evaluate(config, str(tmp_path))
  assert "resuming from the checkpoint at step 2" in capsys.readouterr().out
  evals = [json.loads(l)["step"] for l in (tmp_path / "metrics.jsonl")
           .read_text().splitlines() if "eval_top1_error" in l]
  assert evals == [2, 4]
  assert "stopped_at" not in out
  ckpts = checkpoint_lib.Checkpoints(str(tmp_path), max_to_keep=3)
  assert ckpts.read_meta(4)["eval_pending"] is False
  assert ckpts.steps(best=True)
  ckpts.close()


def test_checkpoint_from_a_2x2_mesh_resumes_on_one_device(tmp_path):
  # Two towers on two devices and two data shards, 11 steps: checkpoints at
  # 10 and 11. Then drop 11 and redo step 11 from checkpoint 10 on one device.
  # Nothing is killed here: the smoke width (0.125) is enough.
  narrow = "--config.model.width=0.125"
  moved = run(tmp_path, "--config.num_train_steps=11",
              "--config.checkpoint_every_steps=10", "--config.mesh.model=2",
              narrow, devices=4)
  assert moved.returncode == 0, moved.stderr[-2000:]
  assert "'data': 2, 'model': 2" in moved.stdout
  assert saved_steps(tmp_path) == [10, 11]
  on_2x2 = saved_state(tmp_path, 11)
  loss_2x2 = train_losses(tmp_path)[11]
  shutil.rmtree(tmp_path / "checkpoints" / "11")
  proc = run(tmp_path, "--config.num_train_steps=11",
             "--config.checkpoint_every_steps=10", narrow)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "resuming from the checkpoint at step 10" in proc.stdout
  assert "'data': 1, 'model': 1" in proc.stdout
  # One step on another mesh sums in another order: equal to float32
  # rounding, not bit for bit. (Over many steps of this small net the
  # rounding differences grow, so one step is what is compared.)
  np.testing.assert_allclose(train_losses(tmp_path)[11], loss_2x2, rtol=1e-5)
  on_1x1 = saved_state(tmp_path, 11)
  for a, b in zip(jax.tree.leaves(on_2x2["model"]),
                  jax.tree.leaves(on_1x1["model"])):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4,
                               atol=1e-6)


def test_abandoned_orbax_reads_are_quiet_from_any_thread(monkeypatch):
  """After a failed restore, an 'Event loop is closed' raised in a Python
  thread (threading.excepthook) is dropped; other errors still reach the
  hook that was there before."""
  import logging  # pylint: disable=g-import-not-at-top
  import threading  # pylint: disable=g-import-not-at-top
  reached = []
  # Python's own hooks: an earlier test in this process may have installed
  # the quiet ones already (the function installs them once).
  monkeypatch.setattr(sys, "unraisablehook", sys.__unraisablehook__)
  monkeypatch.setattr(sys, "excepthook", sys.__excepthook__)
  monkeypatch.setattr(threading, "excepthook",
                      lambda args: reached.append(str(args.exc_value)))
  monkeypatch.setattr(logging.getLogger("asyncio"), "filters", [])
  checkpoint_lib.quiet_abandoned_reads()

  def raise_in_thread(error):
    def target():
      raise error
    t = threading.Thread(target=target)
    t.start()
    t.join()

  raise_in_thread(RuntimeError("Event loop is closed"))
  raise_in_thread(RuntimeError("a real bug"))
  assert reached == ["a real bug"]
