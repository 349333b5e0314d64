"""Fail fast and recover, the workdir's cases: a second run in a running
run's workdir, a lock left by a killed run, a full disk, a config that
changed on resume, and two processes that share one lock and one stop. Each
a real `python -m alexnet_jax.main` subprocess on real files, asserting the
exit code, the one-line message and what happened to the workdir.

docs/training.md "Failures" lists the same cases.
"""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import pytest

from alexnet_jax import workdir as workdir_lib
from tests.test_checkpoint import ROOT, command, environment, run, saved_steps
from tests.test_checkpoint import straight_run  # noqa: F401  (a fixture)
from tests.test_failures import assert_one_error, copy_of, snapshot
from tests.test_failures import two_checkpoints  # noqa: F401  (a fixture)
from tests.test_sharding import free_port, worker_env


def wait_until(predicate, proc, timeout=240):
  deadline = time.time() + timeout
  while not predicate():
    assert proc.poll() is None, "the training run ended"
    assert time.time() < deadline, "timed out waiting for the training run"
    time.sleep(0.05)


def test_one_training_run_per_workdir(tmp_path):
  workdir = tmp_path / "w"
  first = subprocess.Popen(
      command(workdir, "--config.num_train_steps=100000",
              "--config.checkpoint_every_steps=5",
              "--config.log_every_steps=50"), cwd=ROOT, env=environment(),
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    wait_until(lambda: saved_steps(workdir), first)
    lock = workdir / workdir_lib.LOCK_NAME
    kept = {p: (p.read_text(), p.stat().st_mtime_ns)
            for p in (lock, workdir / "config.json")}
    events = sorted((workdir / "tensorboard").iterdir())
    second = run(workdir, "--config.num_train_steps=100000")
    assert_one_error(second, 2, f"--workdir {workdir}",
                     f"pid {first.pid} on host {socket.gethostname()}, "
                     f"running since ")
    assert first.poll() is None, "the first run was harmed"
    assert {p: (p.read_text(), p.stat().st_mtime_ns) for p in kept} == kept
    assert sorted((workdir / "tensorboard").iterdir()) == events

    # Killed: the kernel drops its flock; its owner line stays behind.
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=60)
  finally:
    first.kill()
  step = saved_steps(workdir)[-1]
  third = run(workdir, f"--config.num_train_steps={step + 2}")
  assert third.returncode == 0, third.stderr[-3000:]
  taken = [l for l in third.stderr.splitlines() if "taking over" in l]
  assert len(taken) == 1 and f"pid {first.pid} on host " in taken[0]
  assert taken[0].startswith(f"warning: taking over the lock of --workdir "
                             f"{workdir}")
  assert f"resuming from the checkpoint at step {step}" in third.stdout
  assert lock.read_text() == ""  # Released by the run that ended.


@pytest.fixture
def small_disk(tmp_path):
  """A 12 MB tmpfs (about three checkpoints of the smoke model and the
  best one); skipped where mounting is not permitted."""
  path = tmp_path / "disk"
  path.mkdir()
  mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs",
                          str(path)], capture_output=True, text=True)
  if mount.returncode:
    pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.strip()}")
  yield path
  subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_full_disk_is_one_line_and_the_same_command_resumes(small_disk):
  workdir = small_disk / "w"
  args = ("--config.model.width=0.125", "--config.num_train_steps=30",
          "--config.checkpoint_every_steps=5", "--config.log_every_steps=5",
          "--config.max_checkpoints_to_keep=10")
  proc = run(workdir, *args)
  assert_one_error(proc, 2, "error: the disk is full: writing the "
                   f"checkpoint of step ", f"({workdir}/checkpoints/",
                   "No space left on device", f"free on {workdir}'s file "
                   "system", "free space and run the same command to resume")
  kept = int(proc.stderr.split("complete checkpoint (step ")[1].split(")")[0])
  assert saved_steps(workdir)[-1] == kept and kept < 30
  assert not list(workdir.glob(f"checkpoints*/*{workdir_lib.PARTIAL}*"))
  subprocess.run(["mount", "-o", "remount,size=100m", str(small_disk)],
                 check=True)
  resumed = run(workdir, *args)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert resumed.stderr == ""
  assert f"resuming from the checkpoint at step {kept}" in resumed.stdout
  assert saved_steps(workdir)[-1] == 30


def test_a_config_that_moves_the_data_is_refused_unless_allowed(
    two_checkpoints, tmp_path):
  workdir = copy_of(two_checkpoints, tmp_path / "w")
  before = {p: snapshot(workdir / p) for p in ("checkpoints",
                                               "checkpoints_best")}
  files = {p: (workdir / p).read_text() for p in ("config.json",
                                                  "metrics.jsonl")}
  proc = run(workdir, "--config.num_train_steps=22", "--config.batch_size=16")
  assert_one_error(proc, 2, "moves the data position of the checkpoint at "
                   "step 20", "batch_size 32 -> 16", "--allow_config_change")
  assert {p: snapshot(workdir / p) for p in before} == before
  assert {p: (workdir / p).read_text() for p in files} == files

  proc = run(workdir, "--config.num_train_steps=22", "--config.batch_size=16",
             "--allow_config_change", "--config.optim.learning_rate=0.01",
             "--config.log_every_steps=2")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stderr.splitlines() == [
      "warning: num_train_steps changed since the checkpoint at step 20: "
      "20 -> 22",
      "warning: optim.learning_rate changed since the checkpoint at step 20: "
      "0.005 -> 0.01",
      "warning: --allow_config_change: batch_size 32 -> 16; step 20 is kept "
      "and the training data restarts at example 20 x 16 = 320 of the new "
      "stream (epoch 0.31; the checkpoint's run was at example 640); "
      "epochs, and the schedule and the run's length where given in epochs, "
      "count at the new batch size"]
  assert "resuming from the checkpoint at step 20" in proc.stdout
  assert saved_steps(workdir) == [10, 20, 22]


# ---------------------------------------------------------------- processes


def start_two(workdir, *extra, stdout=subprocess.PIPE):
  """Two processes of one training run (one CPU device each)."""
  address = f"127.0.0.1:{free_port()}"
  return [subprocess.Popen(
      [sys.executable, "-m", "alexnet_jax.main", "--config=configs/smoke.py",
       f"--workdir={workdir}", f"--config.mesh.coordinator_address={address}",
       "--config.mesh.num_processes=2", f"--config.mesh.process_id={i}",
       "--config.mesh.initialization_timeout=120", *extra],
      cwd=ROOT, env=worker_env(1), stdout=stdout, stderr=subprocess.PIPE,
      text=True) for i in range(2)]


def finish(procs, timeout=300):
  try:
    return [p.communicate(timeout=timeout) for p in procs]
  finally:
    for p in procs:
      p.kill()


def test_two_processes_are_refused_together_when_the_lock_is_held(tmp_path):
  lock = workdir_lib.acquire(str(tmp_path))
  try:
    procs = start_two(tmp_path, "--config.num_train_steps=4")
    outs = finish(procs)
  finally:
    lock.release()
  lines = []
  for p, (_, err) in zip(procs, outs):
    errors = [l for l in err.splitlines() if l.startswith("error:")]
    assert p.returncode == 2 and len(errors) == 1, err[-3000:]
    assert "Traceback" not in err
    lines.append(errors[0])
  assert lines[0] == lines[1]
  assert f"pid {os.getpid()} on host {socket.gethostname()}" in lines[0]
  assert not (tmp_path / "checkpoints").exists()


@pytest.mark.slow
def test_two_processes_stop_together_in_the_final_evaluation(tmp_path):
  """SIGTERM to one process while both evaluate after the last step: both
  stop at the same evaluation batch, save with the evaluation pending and
  exit 0; the resumed run evaluates."""
  workdir = tmp_path / "w"
  args = ("--config.num_train_steps=3", "--config.log_every_steps=1",
          "--config.eval_every_steps=1000")
  procs = start_two(workdir, *args, "--config.data.num_eval_examples=40000")
  try:
    for line in procs[0].stdout:  # The last train line: the eval is next.
      if line.startswith("step       3"):
        break
    time.sleep(2)
    procs[1].send_signal(signal.SIGTERM)
    outs = finish(procs)
  finally:
    for p in procs:
      p.kill()
  assert [p.returncode for p in procs] == [0, 0], outs[1][1][-3000:]
  assert "stopped by preemption at step 3; checkpoint saved (the " \
         "evaluation at this step runs first on resume)" in outs[0][0]
  rows = [json.loads(l) for l in pathlib.Path(
      workdir / "metrics.jsonl").read_text().splitlines()]
  assert not [r for r in rows if "eval_top1_error" in r]
  assert saved_steps(workdir) == [3]

  outs = finish(start_two(workdir, *args))
  assert "resuming from the checkpoint at step 3" in outs[0][0], outs[0][1]
  rows = [json.loads(l) for l in pathlib.Path(
      workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows if "eval_top1_error" in r] == [3]
