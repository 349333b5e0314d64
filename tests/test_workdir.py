"""The workdir's lock and failed writes (workdir.py), in-process: the lock's
states, the one line a failed write becomes, and a full disk injected into
each writer of a real training run. The same cases as real processes on
real files are in test_failures.py."""

import errno
import json
import os
import socket

import pytest

from alexnet_jax import checkpoint as checkpoint_lib
from alexnet_jax import progress
from alexnet_jax import train
from alexnet_jax import workdir
from configs import smoke

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
# What orbax raises when TensorStore cannot write a checkpoint's file.
TENSORSTORE = ('RESOURCE_EXHAUSTED: Error writing "model.fc6.bias/0" in OCDBT '
               'database at local file "{d}/checkpoints/20.orbax-checkpoint-'
               'tmp/state/": Failed writing: "{d}/checkpoints/20.orbax-'
               'checkpoint-tmp/state/d/ea": Failed to write 1331001 bytes to '
               'file 17: No space left on device [os_error_code=\'28\']')


def test_a_second_lock_is_refused_and_changes_nothing(tmp_path):
  (tmp_path / "w").mkdir()
  lock = workdir.acquire(str(tmp_path / "w"))
  path = tmp_path / "w" / workdir.LOCK_NAME
  owner = json.loads(path.read_text())
  assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
  before = path.stat().st_mtime_ns, path.read_text()
  with pytest.raises(workdir.WorkdirError) as e:
    workdir.acquire(str(tmp_path / "w"))  # Another open file: refused.
  assert f"pid {os.getpid()} on host {socket.gethostname()}" in str(e.value)
  assert f"running since {owner['since']}" in str(e.value)
  assert f"--workdir {tmp_path / 'w'}" in str(e.value)
  assert (path.stat().st_mtime_ns, path.read_text()) == before
  lock.release()
  assert path.read_text() == ""  # Released cleanly: not stale.
  os.utime(path, ns=(10**18, 10**18))
  workdir.acquire(str(tmp_path / "w")).release()
  assert path.stat().st_mtime_ns == 10**18  # As it found it.
  # A workdir the lock created and nothing else wrote is removed.
  workdir.acquire(str(tmp_path / "new")).release()
  assert not (tmp_path / "new").exists()


def test_a_lock_whose_owner_died_is_taken_over_with_a_warning(tmp_path,
                                                              capsys):
  # What a SIGKILLed run leaves: its owner line, and no flock (the kernel
  # dropped it with the process).
  (tmp_path / workdir.LOCK_NAME).write_text(json.dumps(
      {"pid": 4242, "host": "gone", "since": "2001-01-01 00:00:00 UTC"}))
  lock = workdir.acquire(str(tmp_path))
  err = capsys.readouterr().err
  assert err.startswith("warning: taking over the lock") and err.count(
      "\n") == 1
  assert "pid 4242 on host gone, running since 2001-01-01" in err
  assert json.loads((tmp_path / workdir.LOCK_NAME).read_text())[
      "pid"] == os.getpid()
  lock.release()


def test_failed_writes_become_one_line(tmp_path):
  d = str(tmp_path)
  (tmp_path / "checkpoints" / "15").mkdir(parents=True)
  found = workdir.failed_write(ValueError(TENSORSTORE.format(d=d)), d)
  assert found == (errno.ENOSPC, f"{d}/checkpoints/20.orbax-checkpoint-tmp/"
                   f"state/d/ea")
  text = str(workdir.write_error(*found, d))
  assert text.startswith("the disk is full: writing the checkpoint of step "
                         f"20 ({d}/checkpoints/20) failed (No space left")
  assert f"free on {d}'s file system" in text and "\n" not in text
  assert "the newest complete checkpoint (step 15) is intact" in text
  # A cause of a cause; Python's OSError without a file name.
  try:
    try:
      raise ENOSPC
    except OSError as e:
      raise RuntimeError("while saving") from e
  except RuntimeError as e:
    assert workdir.failed_write(e, d) == (errno.ENOSPC, d)
  # A refused write counts in the workdir only; other errors never.
  denied = PermissionError(errno.EACCES, "Permission denied")
  denied.filename = f"{d}/metrics.jsonl"
  assert workdir.failed_write(denied, d)[0] == errno.EACCES
  denied.filename = "/etc/elsewhere"
  assert workdir.failed_write(denied, d) is None
  assert workdir.failed_write(ValueError("bad value"), d) is None


def test_abandoned_write_tasks_of_a_full_disk_are_not_logged(monkeypatch):
  """asyncio logs 'Task exception was never retrieved' for orbax's write
  tasks when they are collected, possibly after the one error line; those
  records are dropped, asyncio's other errors are not."""
  import logging  # pylint: disable=g-import-not-at-top
  import threading  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(threading, "excepthook", threading.__excepthook__)
  monkeypatch.setattr(logging.getLogger("absl"), "filters", [])
  monkeypatch.setattr(logging.getLogger("asyncio"), "filters", [])
  workdir.quiet_failed_writes()
  log = logging.getLogger("asyncio")

  def kept(message):
    return bool(log.filter(log.makeRecord(
        "asyncio", logging.ERROR, "base_events.py", 1771, message, (), None)))

  assert not kept("Task exception was never retrieved\nfuture: <Task "
                  "coro=<async_serialize_from_host()> exception=ValueError("
                  "'RESOURCE_EXHAUSTED: Failed to write 252491 bytes to file "
                  "6: No space left on device [os_error_code=\\'28\\']')>")
  assert kept("Task exception was never retrieved\nfuture: <Task "
              "exception=ValueError('a real bug')>")


def config(steps=4):
  c = smoke.get_config()
  c.num_train_steps, c.log_every_steps, c.checkpoint_every_steps = steps, 2, 2
  c.eval_every_steps = 1000
  c.data.num_eval_examples = 32
  return c


def full_metrics(monkeypatch, log):
  real = open

  def opener(path, *args, **kwargs):
    if str(path).endswith("metrics.jsonl") and "a" in args[:1]:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return real(path, *args, **kwargs)
  monkeypatch.setattr(progress, "open", opener, raising=False)


def full_tensorboard(monkeypatch, log):
  def scalars(self, step, values):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
  monkeypatch.setattr(progress.EventWriter, "scalars", scalars)


def full_checkpoint(monkeypatch, log):
  real = checkpoint_lib.Checkpoints.save

  def save(self, step, *args, **kwargs):
    if step == 4:
      os.makedirs(os.path.join(log, "checkpoints", "4.orbax-checkpoint-tmp"))
      raise ValueError(TENSORSTORE.format(d=log).replace("/20.", "/4."))
    return real(self, step, *args, **kwargs)
  monkeypatch.setattr(checkpoint_lib.Checkpoints, "save", save)


@pytest.mark.parametrize("inject", [full_metrics, full_tensorboard,
                                    full_checkpoint])
def test_a_full_disk_in_any_writer_is_one_error(tmp_path, monkeypatch,
                                                inject):
  d = str(tmp_path)
  if inject is not full_metrics:  # metrics.jsonl fails at the first row.
    train.train_and_evaluate(config(steps=2), d)
  inject(monkeypatch, d)
  with pytest.raises(workdir.WorkdirError, match="the disk is full") as e:
    train.train_and_evaluate(config(), d)
  assert e.value.__cause__ is None and e.value.__suppress_context__
  assert (tmp_path / workdir.LOCK_NAME).read_text() == ""  # Released.
  assert not list(tmp_path.glob(f"checkpoints*/*{workdir.PARTIAL}*"))
  monkeypatch.undo()  # Space again: the same call resumes and finishes.
  out = train.train_and_evaluate(config(), d)
  assert "stopped_at" not in out
  ckpts = checkpoint_lib.Checkpoints(d, max_to_keep=3)
  assert ckpts.latest_step() == 4
  ckpts.close()
