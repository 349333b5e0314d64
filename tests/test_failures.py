"""Fail fast and recover: each case a real `python -m alexnet_jax.main`
subprocess on real files (image folders, checkpoints), asserting the exit
code, the one-line message and what happened to the workdir.

docs/training.md "Failures" lists the same cases.
"""

import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from alexnet_jax import input_pipeline
from alexnet_jax import preflight
from configs import smoke
from tests.test_checkpoint import ROOT, command, environment, run, saved_steps
from tests.test_checkpoint import straight_run  # noqa: F401  (a fixture)
from tests.test_input_pipeline import write_image

# Uniform random pixels: mean 127.5, std 74 (the smoke model's He init
# wants unit-scale inputs).
FOLDER = ["--config.data.source=folder", "--config.model.num_classes=3",
          "--config.data.resize_size=0", "--config.data.pca_lighting=False",
          "--config.data.mean=(127.5,127.5,127.5)",
          "--config.data.std=(74.0,74.0,74.0)"]


def image_folder(root, splits=("train", "val"), classes=3, per_class=4,
                 empty=()):
  """root/<split>/c<k>/<i>.jpg: small real JPEGs; `empty` class folders."""
  rng = np.random.default_rng(0)
  for split in splits:
    for k in range(classes):
      folder = root / split / f"c{k}"
      folder.mkdir(parents=True)
      if f"c{k}" in empty:
        continue
      for i in range(per_class):
        write_image(folder / f"{i}.jpg",
                    rng.integers(0, 255, (32, 32, 3), np.uint8), "jpeg")
  return root


def error_lines(proc):
  return [l for l in proc.stderr.splitlines() if l.startswith("error:")]


def assert_one_error(proc, code, *needles):
  assert proc.returncode == code, proc.stderr[-3000:]
  errors = error_lines(proc)
  assert len(errors) == 1, proc.stderr[-3000:]
  for needle in needles:
    assert needle in errors[0], errors[0]
  assert "Traceback" not in proc.stderr, proc.stderr[-6000:]


def snapshot(path):
  """Every file and directory under path with its size and mtime."""
  path = pathlib.Path(path)
  return {str(p.relative_to(path)): (p.is_dir(), p.stat().st_size,
                                     p.stat().st_mtime_ns)
          for p in path.rglob("*")}


# ---------------------------------------------------------------- data


def test_validation_split_finds_val_and_is_read(tmp_path):
  data = image_folder(tmp_path / "data")
  proc = run(tmp_path / "w", *FOLDER, f"--config.data.path={data}",
             "--config.num_train_steps=2", "--config.batch_size=4")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "eval_examples=12" in proc.stdout  # All of val/, 3 x 4 images.


# Slow (a training subprocess): the mirror of
# test_validation_split_finds_val_and_is_read, which stays in the default run.
@pytest.mark.slow
def test_val_split_finds_validation(tmp_path):
  data = image_folder(tmp_path / "data", splits=("train", "validation"),
                      per_class=2)
  proc = run(tmp_path / "w", *FOLDER, f"--config.data.path={data}",
             "--config.data.eval_split=val", "--config.num_train_steps=2",
             "--config.batch_size=4")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "eval_examples=6" in proc.stdout  # All of validation/, 3 x 2.


def test_missing_eval_split_stops_before_the_first_step(tmp_path):
  data = image_folder(tmp_path / "data", splits=("train",))
  workdir = tmp_path / "w"
  proc = run(workdir, *FOLDER, f"--config.data.path={data}",
             "--config.num_train_steps=2", "--config.batch_size=4")
  assert_one_error(proc, 2, "validation or", "/val", "holds train")
  assert "step " not in proc.stdout
  assert not workdir.exists()


def test_class_count_must_match_the_model(tmp_path):
  data = image_folder(tmp_path / "data")
  workdir = tmp_path / "w"
  proc = run(workdir, *FOLDER, f"--config.data.path={data}",
             "--config.model.num_classes=2")
  assert_one_error(proc, 2, "the data has 3 classes", "the model 2",
                   "--config.model.num_classes=3")
  assert not workdir.exists()


def test_tfds_class_count_must_match_the_model():
  config = smoke.get_config()
  d = config.data
  d.source, d.name, d.eval_split = "tfds", "cifar10", "test"
  d.download = True  # mock_data replaces download_and_prepare by a no-op.
  config.model.num_classes = 7
  with tfds.testing.mock_data(num_examples=4):
    with pytest.raises(input_pipeline.DataError,
                       match="the data has 10 classes.*the model 7"):
      preflight.check_data(config, train=True)
    config.model.num_classes = 10
    splits = preflight.check_data(config, train=True)
  assert {k: v.num_classes for k, v in splits.items()} == {"train": 10,
                                                           "test": 10}


def test_empty_class_folder_warns_and_an_empty_split_stops(tmp_path):
  data = image_folder(tmp_path / "data", empty=("c1",))
  proc = run(tmp_path / "w", *FOLDER, f"--config.data.path={data}",
             "--config.num_train_steps=1", "--config.batch_size=4")
  assert proc.returncode == 0, proc.stderr[-3000:]
  warnings = [l for l in proc.stderr.splitlines() if "hold no images" in l]
  assert len(warnings) == 2, proc.stderr[-3000:]  # train/ and val/, once.
  assert all(l.endswith(": c1") for l in warnings)

  bare = image_folder(tmp_path / "bare", empty=("c0", "c1", "c2"))
  workdir = tmp_path / "w2"
  proc = run(workdir, *FOLDER, f"--config.data.path={bare}")
  assert_one_error(proc, 2, "no images in", "bare/train")
  assert not workdir.exists()


# ---------------------------------------------------------------- config


def test_workdir_that_is_a_file(tmp_path):
  path = tmp_path / "notes.txt"
  path.write_text("keep me")
  proc = run(path)
  assert_one_error(proc, 2, "is a file, not a directory")
  assert path.read_text() == "keep me"


def test_workdir_that_cannot_be_created(tmp_path):
  path = tmp_path / "notes.txt"
  path.write_text("keep me")
  proc = run(path / "run")
  assert_one_error(proc, 2, "cannot be created", "not a writable directory")
  assert path.read_text() == "keep me"


@pytest.mark.parametrize("flag,message", [
    ("--config.optim.learning_rate=-1", "optim.learning_rate must be a "
     "positive number, got -1"),
    ("--config.optim.learning_rate=nan", "optim.learning_rate"),
    ("--config.optim.momentum=1.5", "optim.momentum must be in [0, 1)"),
    ("--config.optim.warmup_epochs=-1", "optim.warmup_epochs"),
    ("--config.optim.weight_decay=-1", "optim.weight_decay must be >= 0"),
    ("--config.log_every_steps=0", "log_every_steps must be >= 1"),
])
def test_values_that_cannot_work_stop_before_anything(tmp_path, flag,
                                                      message):
  workdir = tmp_path / "w"
  proc = run(workdir, flag)
  assert_one_error(proc, 2, message)
  assert not workdir.exists()


def test_zero_epochs_without_steps(tmp_path):
  workdir = tmp_path / "w"
  proc = run(workdir, "--config.num_epochs=0", "--config.num_train_steps=-1")
  assert_one_error(proc, 2, "num_epochs must be > 0")
  assert not workdir.exists()


# ---------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def two_checkpoints(straight_run):
  """A real run with checkpoints at steps 10 and 20 (copied, not changed)."""
  assert saved_steps(straight_run) == [10, 20]
  return straight_run


def copy_of(src, dest):
  subprocess.run(["cp", "-a", str(src), str(dest)], check=True)
  return dest


def data_files(step_dir):
  """The array data files of a checkpoint step, largest first."""
  files = [p for p in (step_dir / "state").rglob("*")
           if p.is_file() and p.parent.name == "d"]
  return sorted(files, key=lambda p: -p.stat().st_size)


def truncate(path):
  with open(path, "r+b") as f:
    f.truncate(path.stat().st_size // 3)


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_a_damaged_latest_checkpoint_resumes_from_the_one_before(
    two_checkpoints, tmp_path, damage):
  workdir = copy_of(two_checkpoints, tmp_path / "w")
  victim = data_files(workdir / "checkpoints" / "20")[0]
  truncate(victim) if damage == "truncate" else victim.unlink()
  damaged = snapshot(workdir / "checkpoints" / "20")

  proc = run(workdir, "--config.num_train_steps=25",
             "--config.checkpoint_every_steps=10")
  assert proc.returncode == 0, proc.stderr[-3000:]
  warnings = [l for l in proc.stderr.splitlines()
              if l.startswith("warning: checkpoint step 20")]
  assert len(warnings) == 1 and "resuming from step 10" in warnings[0]
  assert "resuming from the checkpoint at step 10" in proc.stdout
  # Kept, as it was, outside the manager's directory; the run saved 20 anew.
  kept = workdir / "checkpoints_corrupt" / "20"
  assert snapshot(kept) == damaged
  assert saved_steps(workdir) == [10, 20, 25]


def test_eval_uses_the_newest_checkpoint_that_restores(two_checkpoints,
                                                       tmp_path):
  workdir = copy_of(two_checkpoints, tmp_path / "w")
  truncate(data_files(workdir / "checkpoints" / "20")[0])
  before = snapshot(workdir)
  proc = run(workdir, "--mode=eval")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "checkpoint step 10: " in proc.stdout
  assert any(l.startswith("warning: checkpoint step 20 does not restore")
             for l in proc.stderr.splitlines())
  assert snapshot(workdir) == before  # Nothing moved or written.


def test_no_checkpoint_restores(two_checkpoints, tmp_path):
  workdir = copy_of(two_checkpoints, tmp_path / "w")
  for step in (10, 20):
    truncate(data_files(workdir / "checkpoints" / str(step))[0])
  before = snapshot(workdir)
  for mode in ("train", "eval"):
    proc = run(workdir, f"--mode={mode}", "--config.num_train_steps=30")
    assert_one_error(proc, 2, "no checkpoint in", "restores",
                     "step directories (20, 10)", "new --workdir")
    assert snapshot(workdir) == before


# ---------------------------------------------------------------- exit


def wait_for_line(proc, is_it, timeout=600):
  """Reads proc's stdout until is_it(line); returns the time it came."""
  deadline = time.time() + timeout
  for line in proc.stdout:
    if is_it(line):
      return time.time()
    assert time.time() < deadline, f"no such line within {timeout} s"
  raise AssertionError("the process ended before the line came")


def run_until_stopped(tmp_path, after, *extra, sig=signal.SIGTERM):
  """Trains on a folder until after(line), sends sig; returns the process
  and the seconds from its stop message to its exit."""
  data = image_folder(tmp_path / "data", per_class=20)
  proc = subprocess.Popen(
      [*command(tmp_path / "w"), *FOLDER, f"--config.data.path={data}",
       "--config.batch_size=8", "--config.num_train_steps=100000",
       *extra], cwd=ROOT, env=environment(), stdout=subprocess.PIPE,
      stderr=subprocess.DEVNULL, text=True)
  wait_for_line(proc, after)
  proc.send_signal(sig)
  stopped = wait_for_line(proc, lambda l: f"stopped by {sig.name}" in l)
  proc.stdout.read()
  proc.wait(timeout=120)
  return proc, time.time() - stopped


def at_step(n):
  return lambda l: l.startswith("step") and "train_loss" in l and int(
      l.split()[1]) >= n


def test_input_pipelines_run_without_the_autotuner():
  """Its model thread is what held a stopped run for up to 60 s."""
  config = smoke.get_config()
  ds = input_pipeline.tf_options(tf.data.Dataset.range(3), config.data)
  assert ds.options().autotune.enabled is False
  assert ds.options().deterministic is True


def test_sigterm_exits_promptly_after_the_save(tmp_path):
  # After an evaluation (the 60 steps of an epoch), as in the reported run.
  proc, seconds = run_until_stopped(
      tmp_path, lambda l: "eval_top1_error" in l,
      "--config.eval_every_steps=-1")
  assert proc.returncode == 0
  # A functional limit, not a speed test: cloud preemption gives ~30 s.
  assert seconds < 10, f"exited {seconds:.1f} s after the stop message"


SECOND_SIGNAL = """
import sys
from absl import app
from alexnet_jax import main, train
def interrupted(*args, **kwargs):
  raise KeyboardInterrupt  # What StopRequest raises on a second signal.
train.train_and_evaluate = interrupted
sys.argv = ["main", "--config=configs/smoke.py", "--workdir=" + sys.argv[1]]
app.run(main.main, flags_parser=main.parse_flags)
"""


def test_a_second_signal_stops_at_once_in_one_line(tmp_path):
  proc = subprocess.run([sys.executable, "-c", SECOND_SIGNAL,
                         str(tmp_path / "w")], cwd=ROOT, env=environment(),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 130, proc.stderr[-3000:]
  assert "stopped at once by a second signal" in proc.stderr
  assert "Traceback" not in proc.stderr, proc.stderr[-6000:]


def test_ctrl_c_saves_and_exits_promptly(tmp_path):
  proc, seconds = run_until_stopped(tmp_path, at_step(20), sig=signal.SIGINT)
  assert proc.returncode == 0
  assert seconds < 10, f"exited {seconds:.1f} s after the stop message"
  assert saved_steps(tmp_path / "w"), "no checkpoint saved on Ctrl-C"


@pytest.mark.slow
def test_sigterm_exits_promptly_after_minutes_of_training(tmp_path):
  """The reported case: the autotuner's sleep had grown to a minute."""
  proc, seconds = run_until_stopped(tmp_path, at_step(2000),
                                    "--config.eval_every_steps=500")
  assert proc.returncode == 0
  assert seconds < 10, f"exited {seconds:.1f} s after the stop message"
