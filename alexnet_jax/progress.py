"""What a run shows and hears while it trains: console lines, metrics.jsonl
and TensorBoard events, the rate and ETA over the steps not yet fetched,
and the stop signals.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time

import jax
from jax.experimental import multihost_utils
import numpy as np


class Diverged(FloatingPointError):
  """The training loss became NaN or infinite."""


class EventWriter:
  """TensorBoard scalars: one events.out.tfevents file per run start, each
  row written and flushed as it comes (a killed run keeps its rows).

  TensorBoard's own record format and protos, without the writers that
  import TensorFlow (tensorboard's EventFileWriter, ~3 s) or PyTorch
  (tensorboardX, ~1.5 s where torch is installed): every run and every test
  subprocess pays that import."""

  def __init__(self, logdir: str):
    # pylint: disable=g-import-not-at-top
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter
    self._event, self._summary = event_pb2.Event, summary_pb2.Summary
    self.logdir = logdir
    os.makedirs(logdir, exist_ok=True)
    self.path = os.path.join(logdir, "events.out.tfevents.%010d.%s.%d" % (
        time.time(), socket.gethostname(), os.getpid()))
    self._file = open(self.path, "ab")
    self._records = RecordWriter(self._file)
    self._add(self._event(wall_time=time.time(), file_version="brain.Event:2"))

  def _add(self, event):
    self._records.write(event.SerializeToString())
    self._file.flush()

  def scalars(self, step: int, scalars: dict[str, float]):
    value = self._summary.Value
    self._add(self._event(wall_time=time.time(), step=step,
                          summary=self._summary(value=[
                              value(tag=k, simple_value=float(v))
                              for k, v in scalars.items()])))

  def close(self):
    self._file.close()


class MetricsLog:
  """Console lines, metrics.jsonl and TensorBoard events (process 0 only)."""

  def __init__(self, workdir: str):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.tb = None
    if self.enabled:
      self.tb = EventWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, scalars: dict[str, float], suffix: str = "",
            epoch: float | None = None):
    """One row: console, TensorBoard, and metrics.jsonl (which also gets the
    epoch and the wall time, for curves per epoch and against time)."""
    if not self.enabled:
      return
    row = {"step": step, **scalars, "wall_time": round(time.time(), 3)}
    if epoch is not None:
      row["epoch"] = round(epoch, 6)
    with _writing(self.path), open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")
    with _writing(self.tb.logdir):
      self.tb.scalars(step, scalars)
    text = "  ".join(f"{k}={v:.4g}" for k, v in scalars.items())
    print(f"step {step:>7d}  {text}{suffix}", flush=True)

  def info(self, text: str):
    if self.enabled:
      print(text, flush=True)

  def logged(self, step: int, key: str) -> bool:
    """Whether metrics.jsonl holds `key` at `step` (process 0's file, told
    to every process)."""
    found = False
    if self.enabled and os.path.exists(self.path):
      with open(self.path) as f:
        for line in f:
          try:
            row = json.loads(line)
          except ValueError:  # A line cut short by a kill.
            continue
          found = found or (row.get("step") == step and key in row)
    if jax.process_count() > 1:
      found = bool(multihost_utils.broadcast_one_to_all(np.int32(found)))
    return found

  def close(self):
    if self.tb is not None:
      with _writing(self.tb.logdir):
        self.tb.close()


@contextlib.contextmanager
def _writing(path: str):
  """An OS error in the body names `path` (a failed write.write() does not
  say which file it was)."""
  try:
    yield
  except OSError as e:
    if not e.filename:
      e.filename = path
    raise


def eta(seconds: float) -> str:
  m, s = divmod(int(seconds), 60)
  h, m = divmod(m, 60)
  return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class StopRequest:
  """SIGTERM/SIGINT: the loop saves a checkpoint and exits at the next step
  boundary, or evaluation batch.

  `requested` is asked at every step and every evaluation batch, by every
  process alike. One process: a signal handler sets a flag. Several
  processes: every process must stop at the same point, so the decision is
  JAX's preemption sync point (its service catches SIGTERM once
  jax.distributed is initialized), read through orbax's `reached_preemption`
  of `manager` (the CheckpointManager, which asks it with the step too).
  Its points are the steps, and after `last_step` (the final evaluations)
  one more per evaluation batch; an evaluation before the last step runs to
  its end there, and the stop comes at the next step.
  """

  def __init__(self, manager=None, step: int = 0, last_step: int = 0):
    self.signal = None
    self._manager, self._point, self._last = manager, step, last_step
    self._previous = {}

  def __enter__(self):
    if jax.process_count() == 1:
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    if self.signal is not None:  # A second signal: stop without waiting.
      raise KeyboardInterrupt
    self.signal = signal.Signals(signum).name

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def requested(self, step: int | None = None) -> bool:
    """Whether to stop at training step `step`, or (None) at an evaluation
    batch."""
    if jax.process_count() > 1 and self.signal is None:
      if step is None and self._point < self._last:
        return False  # Several processes: a mid-run evaluation runs on.
      self._point = self._point + 1 if step is None else step
      if self._manager.reached_preemption(self._point):
        self.signal = "preemption"
    return self.signal is not None


class Window:
  """The step metrics dispatched since the last log line.

  The train step runs asynchronously; its metrics are fetched together when
  a line is due, so that logging does not wait for every step. `fetch`
  checks every fetched loss and averages the window.
  """

  def __init__(self, start_step: int, num_steps: int, batch_size: int):
    self.start_step, self.num_steps = start_step, num_steps
    self.batch_size = batch_size
    self.pending = []
    self.images_per_sec = 0.0
    self.run_start = self.start = time.perf_counter()

  def add(self, metrics: dict):
    """A dispatched step's metrics. Waits for the step before it: at most
    two steps are in flight (the device never idles while the host is
    quicker than a step), so a stop signal is acted on at the next step
    boundary instead of after a queue of dispatched steps."""
    if self.pending:
      jax.block_until_ready(self.pending[-1])
    self.pending.append(metrics)

  def restart(self, run: bool = False):
    """Starts timing the window anew (after an evaluation, which is not
    training); with run, the rate for the ETA too."""
    self.start = time.perf_counter()
    if run:
      self.run_start = self.start

  def fetch(self, step: int, last_good: int | None) -> dict[str, float] | None:
    """train_<metric> means over the window (train_loss_scale: the last),
    or None when nothing is pending (sets images_per_sec); Diverged names
    the first non-finite loss, or a window of float16 steps all skipped at
    loss scale 1."""
    if not self.pending:
      return None
    fetched = jax.device_get(self.pending)
    for i, m in enumerate(fetched):
      if not np.isfinite(m["loss"]):
        bad = step - len(fetched) + 1 + i
        kept = (f"the last good checkpoint (step {last_good}) is kept"
                if last_good else "no checkpoint had been saved")
        raise Diverged(f"the training loss is {m['loss']} at step {bad}; "
                       f"{kept}; lower optim.learning_rate (or see README, "
                       f"training notes) and rerun")
    if "overflow" in fetched[0] and all(
        m["overflow"] and m["loss_scale"] <= 1 for m in fetched):
      raise Diverged(f"float16 gradients are not finite even at loss scale 1 "
                     f"(steps {step - len(fetched) + 1}-{step} skipped); "
                     f"lower optim.learning_rate or use "
                     f"--config.half_precision_dtype=bfloat16 or "
                     f"--config.half_precision=False")
    # The loss scale (float16, precision.py) as it stands, not a mean.
    scalars = {f"train_{k}": float(fetched[-1][k] if k == "loss_scale" else
                                   np.mean([m[k] for m in fetched]))
               for k in fetched[0]}
    now = time.perf_counter()
    self.images_per_sec = len(fetched) * self.batch_size / (now - self.start)
    self.pending = []
    self.start = now
    return scalars

  def eta(self, step: int) -> str:
    """Time left at the mean rate since the run (or resume) started."""
    rate = (step - self.start_step) / (time.perf_counter() - self.run_start)
    return eta((self.num_steps - step) / max(rate, 1e-9))
