"""A training run's hold on its workdir: one run at a time, and writes that
fail (a full disk) said in one line.

The lock is an `fcntl.flock` on `train.lock` in the workdir, held from the
end of the pre-flight checks until the run ends; the holder's pid, host and
start time are written into the file. The kernel drops a flock when its
process dies, so a run killed by SIGKILL (or a crashed machine, on a file
system whose locks go with the client) blocks nothing: the next run finds the
file naming an owner but the lock free, says so in a warning and takes it
over. A run that ends in any other way empties the file (and a run refused
by a check after taking the lock leaves the workdir as it found it). With
several processes, process 0 takes the lock and tells the others whether it
could (they then stop with the same line). --mode=eval, predict and comm
only read and take no lock.

A write into the workdir that fails (ENOSPC and its like, from orbax's
TensorStore, metrics.jsonl or TensorBoard) becomes one WorkdirError naming
the path and the free space; the checkpoints saved before are complete
(orbax renames a save into place only when it is whole) and the partial one
is removed, so the same command resumes once there is room.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import socket
import sys
import threading
import time

import jax
from jax.experimental import multihost_utils
import numpy as np

from alexnet_jax import checkpoint

LOCK_NAME = "train.lock"
PARTIAL = ".orbax-checkpoint-tmp"  # How orbax names a save not yet whole.
# OS errors that say why a write failed, whatever the file.
WRITE_ERRNOS = {errno.ENOSPC: "the disk is full",
                errno.EDQUOT: "the disk quota is exceeded",
                errno.EROFS: "the file system is read-only"}
# OS errors that are write errors when the path is in the workdir.
PATH_ERRNOS = (errno.EACCES, errno.EPERM, errno.EIO, errno.EFBIG)
_OS_CODE = re.compile(r"os_error_code='?(\d+)")
_TS_PATH = re.compile(r'(?:Failed writing|Error writing local file|'
                      r'local file): "([^"]+)"')


class WorkdirError(RuntimeError):
  """The workdir cannot be used (a user error): another run holds it, or a
  write into it failed."""


# ---------------------------------------------------------------- the lock


class Lock:
  """The flock on workdir/train.lock, held by this process."""

  def __init__(self, path: str, fd: int, times: tuple[int, int],
               created: bool):
    self.path, self._fd, self._times = path, fd, times
    self._created = created

  def release(self):
    """Empties the file (an empty file is a lock released cleanly) and
    gives it back the times it had, then drops the flock. A run that ends
    after taking the lock but before writing (refused by a check) thus
    changes no file's time; a workdir it created holding nothing else is
    removed."""
    if self._fd is None:
      return
    try:
      os.ftruncate(self._fd, 0)
      os.utime(self._fd, ns=self._times)
      workdir = os.path.dirname(self.path)
      if self._created and os.listdir(workdir) == [LOCK_NAME]:
        os.unlink(self.path)  # A run opening it now retries (acquire).
        os.rmdir(workdir)
    except OSError:  # A full disk does not stop these; EIO might.
      pass
    fcntl.flock(self._fd, fcntl.LOCK_UN)
    os.close(self._fd)
    self._fd = None


def _owner(fd: int) -> dict | None:
  """The owner written in the lock file; None when it is empty (released
  cleanly, or its owner is still writing it: read a few times)."""
  for _ in range(20):
    text = os.pread(fd, 4096, 0).decode(errors="replace")
    try:
      return json.loads(text)
    except ValueError:
      time.sleep(0.05)
  return None


def describe(owner: dict | None) -> str:
  if not owner:
    return "a process that has not said which"
  return (f"pid {owner.get('pid')} on host {owner.get('host')}, running "
          f"since {owner.get('since')}")


def acquire(workdir: str) -> Lock:
  """Takes the workdir's lock (creating the workdir), or WorkdirError
  naming the run that holds it. A refused call changes nothing on disk."""
  created = not os.path.isdir(workdir)
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(os.path.abspath(workdir), LOCK_NAME)
  while True:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      owner = _owner(fd)
      os.close(fd)
      raise WorkdirError(
          f"another training run is using --workdir {workdir}: "
          f"{describe(owner)} (lock {path}); let it finish, stop it, or "
          f"give another --workdir") from None
    before = os.fstat(fd)
    try:
      if os.stat(path).st_ino == before.st_ino:
        break
    except FileNotFoundError:
      pass
    os.close(fd)  # Removed by its holder meanwhile (Lock.release): again.
    os.makedirs(workdir, exist_ok=True)
  stale = os.pread(fd, 4096, 0)
  if stale:
    try:
      owner = json.loads(stale)
    except ValueError:
      owner = None
    print(f"warning: taking over the lock of --workdir {workdir} left by "
          f"{describe(owner)}: that run ended without releasing it (killed?) "
          f"and no process holds it now", file=sys.stderr, flush=True)
  owner = {"pid": os.getpid(), "host": socket.gethostname(),
           "since": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
           "argv": sys.argv}
  os.ftruncate(fd, 0)
  os.pwrite(fd, json.dumps(owner).encode(), 0)
  return Lock(path, fd, (before.st_atime_ns, before.st_mtime_ns), created)


def broadcast_text(text: str, size: int = 2048) -> str:
  """Process 0's `text` on every process (a collective: all must call)."""
  data = np.zeros(size, np.uint8)
  raw = text.encode()[:size]
  data[:len(raw)] = np.frombuffer(raw, np.uint8)
  out = np.asarray(multihost_utils.broadcast_one_to_all(data))
  return out.tobytes().rstrip(b"\0").decode(errors="replace")


def take(workdir: str) -> Lock | None:
  """The lock for a training run: taken by process 0, which tells the
  others (one collective) whether it could; every process then raises the
  same WorkdirError when it could not. None on the other processes."""
  lock, error = None, ""
  if jax.process_index() == 0:
    try:
      lock = acquire(workdir)
    except WorkdirError as e:
      error = str(e)
    except OSError as e:  # Checked by the pre-flight; still, say it here.
      error = f"cannot lock --workdir {workdir}: {e}"
  if jax.process_count() > 1:
    error = broadcast_text(error)
    if error and lock is not None:
      lock.release()
  if error:
    raise WorkdirError(error)
  return lock


# ---------------------------------------------------------------- writes


def _chain(error: BaseException):
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    yield error
    error = error.__cause__ or error.__context__


def _os_error(error: BaseException) -> tuple[int, str | None] | None:
  """(errno, path) of an OS error, raised by Python or reported in the text
  of a TensorStore error (orbax's writes)."""
  if isinstance(error, OSError) and error.errno:
    return error.errno, error.filename
  text = str(error)
  code = _OS_CODE.search(text)
  if code:
    path = _TS_PATH.search(text)
    return int(code[1]), path[1] if path else None
  return None


def _inside(path: str | None, workdir: str) -> bool:
  if not path:
    return False
  root = os.path.realpath(workdir)
  return os.path.realpath(path).startswith(root + os.sep)


def _size(n: float) -> str:
  for unit in ("bytes", "KB", "MB", "GB", "TB"):
    if n < 1024 or unit == "TB":
      return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
    n /= 1024
  return ""


def _free(path: str) -> str:
  try:
    return _size(shutil.disk_usage(path).free)
  except OSError:
    return "unknown"


def newest_checkpoint(workdir: str) -> int | None:
  d = os.path.join(workdir, "checkpoints")
  steps = [int(n) for n in os.listdir(d) if n.isdigit()] if os.path.isdir(
      d) else []
  return max(steps, default=None)


def failed_write(error: BaseException,
                 workdir: str) -> tuple[int, str] | None:
  """(errno, path) of a failed write into the workdir in `error` or its
  causes (a full disk anywhere; a refused or failed write to a path in the
  workdir); None when `error` is something else."""
  for e in _chain(error):
    found = _os_error(e)
    if found is None:
      continue
    code, path = found
    if code in WRITE_ERRNOS or (code in PATH_ERRNOS and
                                _inside(path, workdir)):
      return code, path or os.path.abspath(workdir)
  return None


def write_error(code: int, path: str, workdir: str) -> WorkdirError:
  """One line: what failed, the space free now, what is kept, what to do."""
  if PARTIAL in path:  # Inside a save: name the checkpoint.
    path = path[:path.index(PARTIAL)]
    path = f"the checkpoint of step {os.path.basename(path)} ({path})"
  step = newest_checkpoint(workdir)
  kept = (f"the newest complete checkpoint (step {step}) is intact"
          if step is not None else "no checkpoint had been saved")
  fix = ("free space" if code in (errno.ENOSPC, errno.EDQUOT) else
         "fix the file system")
  return WorkdirError(
      f"{WRITE_ERRNOS.get(code, 'a write failed')}: writing {path} failed "
      f"({os.strerror(code)}); {_free(workdir)} free on {workdir}'s file "
      f"system; {kept}: {fix} and run the same command to resume")


def remove_partial_saves(workdir: str):
  """Deletes the save that a write error left half-written (orbax's
  temporary directories): it is not a checkpoint, and it holds space."""
  for sub in ("checkpoints", "checkpoints_best"):
    d = os.path.join(workdir, sub)
    for name in os.listdir(d) if os.path.isdir(d) else []:
      if PARTIAL in name:
        shutil.rmtree(os.path.join(d, name), ignore_errors=True)


def _is_write_error_text(text: str) -> bool:
  return bool(_OS_CODE.search(text)) or any(
      os.strerror(code) in text for code in WRITE_ERRNOS)


def quiet_failed_writes():
  """A failed write is reported once, as one line, by the main thread; the
  threads that met it first stay quiet: orbax's error log records (with
  their tracebacks), asyncio's 'Task exception was never retrieved' records
  for orbax's abandoned write tasks (logged whenever the task is collected)
  and a TensorBoard writer thread that dies of it."""
  if getattr(threading.excepthook, "quiets_writes", False):
    return

  def write_error(record) -> bool:
    exc = record.exc_info[1] if record.exc_info else None
    return _is_write_error_text(f"{record.getMessage()} {exc!r}")

  def orbax_records(record) -> bool:
    if "orbax" not in record.pathname or record.levelno < logging.ERROR:
      return True
    return not write_error(record)

  logging.getLogger("absl").addFilter(orbax_records)
  logging.getLogger("asyncio").addFilter(
      lambda record: record.levelno < logging.ERROR or not write_error(record))
  checkpoint.quiet_abandoned_reads()  # Orbax's reads and callbacks after it.
  previous = threading.excepthook

  def on_thread_error(args):
    code = _os_error(args.exc_value) if args.exc_value else None
    if code is None or code[0] not in WRITE_ERRNOS:
      previous(args)

  on_thread_error.quiets_writes = True
  threading.excepthook = on_thread_error


@contextlib.contextmanager
def held(workdir: str):
  """The lock for the body's life; a failed write in it becomes one
  WorkdirError (after which the half-written save is removed)."""
  lock = take(workdir)
  quiet_failed_writes()
  try:
    yield lock
  except Exception as e:  # pylint: disable=broad-except
    found = failed_write(e, workdir)
    if found is None:
      raise
    if jax.process_count() == 1:  # Only the lock's holder writes then.
      remove_partial_saves(workdir)
    raise write_error(*found, workdir) from None
  finally:
    if lock is not None:
      lock.release()
