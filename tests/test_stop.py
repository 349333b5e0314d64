"""A stop signal near the end of a run: acted on at the next step boundary,
the final evaluations skipped and saved as pending, run by the resumed run;
the points at which several processes agree to stop. One process,
in-process; two real processes in test_failures.py."""

import json
import os
import signal

import jax

from alexnet_jax import checkpoint as checkpoint_lib
from alexnet_jax import input_pipeline
from alexnet_jax import progress
from alexnet_jax import steps
from alexnet_jax import train
from configs import smoke
from tests.test_checkpoint import SignalOnFirstBatch


class Pending:
  """A step's metrics not yet computed: records when it is waited for."""

  def __init__(self, step, waited):
    self.step, self.waited = step, waited

  def block_until_ready(self):
    self.waited.append(self.step)
    return self


def test_at_most_two_steps_are_in_flight():
  waited = []
  window = progress.Window(0, 10, 8)
  for step in range(1, 5):
    window.add({"loss": Pending(step, waited)})
    # Step k dispatched: step k - 1 is done before the loop goes on.
    assert waited == list(range(1, step))


class Manager:
  """orbax's reached_preemption: the sync point is `at`."""

  def __init__(self, at):
    self.at, self.asked = at, []

  def reached_preemption(self, point):
    self.asked.append(point)
    return point == self.at


def test_several_processes_stop_at_steps_and_final_evaluation_batches(
    monkeypatch):
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  manager = Manager(at=None)
  stop = progress.StopRequest(manager, step=3, last_step=6)
  assert not any(stop.requested(s) for s in (4, 5))
  # A mid-run evaluation (at step 5) is not a point: it runs to its end.
  assert not stop.requested() and manager.asked == [4, 5]
  assert not stop.requested(6)
  # After the last step, each evaluation batch is the next point.
  manager.at = 8
  assert not stop.requested() and stop.requested()
  assert manager.asked == [4, 5, 6, 7, 8] and stop.signal == "preemption"
  assert stop.requested() and manager.asked[-1] == 8  # Asked no more.


def config():
  c = smoke.get_config()
  c.num_train_steps, c.eval_every_steps, c.log_every_steps = 4, 2, 1
  c.data.num_eval_examples = 64
  c.data.test_split = "test"
  return c


def rows(workdir, key):
  return [json.loads(l)["step"] for l in (workdir / "metrics.jsonl")
          .read_text().splitlines() if key in l]


def test_a_signal_in_the_last_step_skips_the_final_evaluations(
    tmp_path, monkeypatch, capsys):
  real = steps.make_steps

  def signalling(*args, **kwargs):
    train_step, eval_step = real(*args, **kwargs)
    calls = []

    def step(*a):
      calls.append(1)
      if len(calls) == 4:  # While the last step runs.
        os.kill(os.getpid(), signal.SIGTERM)
      return train_step(*a)
    return step, eval_step

  monkeypatch.setattr(steps, "make_steps", signalling)
  out = train.train_and_evaluate(config(), str(tmp_path))
  assert out["stopped_at"] == 4
  assert "stopped by SIGTERM at step 4; checkpoint saved (the evaluation " \
         "at this step runs first on resume)" in capsys.readouterr().out
  assert rows(tmp_path, "eval_top1_error") == [2]
  assert rows(tmp_path, "test_top1_error") == []
  ckpts = checkpoint_lib.Checkpoints(str(tmp_path), max_to_keep=3)
  assert ckpts.latest_step() == 4 and ckpts.read_meta(4)["eval_pending"]
  ckpts.close()

  monkeypatch.undo()
  out = train.train_and_evaluate(config(), str(tmp_path))
  assert "stopped_at" not in out and "test_top1_error" in out
  assert rows(tmp_path, "eval_top1_error") == [2, 4]
  assert rows(tmp_path, "test_top1_error") == [4]


def test_a_signal_during_the_test_evaluation_leaves_it_to_the_resume(
    tmp_path, monkeypatch, capsys):
  real = input_pipeline.eval_iterator

  def signalling(*args, split=None, **kwargs):
    info, batches = real(*args, split=split, **kwargs)
    return info, SignalOnFirstBatch(batches) if split == "test" else batches

  monkeypatch.setattr(input_pipeline, "eval_iterator", signalling)
  out = train.train_and_evaluate(config(), str(tmp_path))
  assert out["stopped_at"] == 4 and "test_top1_error" not in out
  assert "stopped by SIGTERM at step 4; checkpoint saved (the test split's " \
         "evaluation runs on resume)" in capsys.readouterr().out
  assert rows(tmp_path, "eval_top1_error") == [2, 4]
  assert rows(tmp_path, "test_top1_error") == []

  monkeypatch.undo()
  out = train.train_and_evaluate(config(), str(tmp_path))
  assert rows(tmp_path, "test_top1_error") == [4]
  assert "test_top1_error" in out and "stopped_at" not in out
  train.train_and_evaluate(config(), str(tmp_path))  # Done: not again.
  assert rows(tmp_path, "test_top1_error") == [4]
  assert rows(tmp_path, "eval_top1_error") == [2, 4]
