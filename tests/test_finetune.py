"""Fine-tuning (alexnet_jax/finetune.py): the kept layers are the
checkpoint's, fc8 is new, frozen layers never change and cost no backward
pass, per-layer rates scale each layer's step, a fine-tuned run resumes
exactly, and a source that does not fit is one line."""

import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from alexnet_jax import finetune
from alexnet_jax import train
from configs import smoke
from tests.test_checkpoint import assert_trees_equal, environment, saved_state

ROOT = pathlib.Path(__file__).resolve().parent.parent
KEPT = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")


def config(**top):
  c = smoke.get_config()
  c.log_every_steps = 1
  c.eval_every_steps = 1000
  c.checkpoint_every_steps = 1000
  c.data.num_train_examples = 256
  c.data.num_eval_examples = 40
  for k, v in top.items():
    c[k] = v
  return c


def target(source, **top):
  """A 5-class run that starts from `source`'s 10-class checkpoint."""
  c = config(**top)
  c.model.num_classes = 5
  c.seed = 1  # Another init than the source's: loading must show.
  c.finetune.init_from = str(source)
  return c


@pytest.fixture(scope="module")
def source(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("source")
  train.train_and_evaluate(config(num_train_steps=8), str(workdir))
  return workdir


def velocity(opt: dict) -> dict:
  """The momentum trace of an optimizer state (pure dict), by layer."""
  states = opt["opt_state"]
  return next(v["trace"] for v in states.values()
              if isinstance(v, dict) and "trace" in v)


def model_dict(run):
  return jax.device_get(nnx.to_pure_dict(run.model_state))


def test_kept_layers_are_the_checkpoints_and_fc8_is_new(source):
  c = target(source)
  fresh = model_dict(train.setup(c))
  run = train.setup(c)
  info = finetune.initialize(run, c)
  assert info["step"] == 8 and info["layers"] == list(KEPT)
  loaded, saved = model_dict(run), saved_state(source, 8)["model"]
  for name in KEPT:
    assert_trees_equal(loaded[name], saved[name])
    assert not np.array_equal(loaded[name]["kernel"], fresh[name]["kernel"])
  # fc8: the new run's own init, for its 5 classes.
  assert saved["fc8"]["kernel"].shape[-1] == 10
  assert loaded["fc8"]["kernel"].shape[-1] == 5
  assert_trees_equal(loaded["fc8"], fresh["fc8"])


def test_keep_picks_the_layers(source):
  c = target(source)
  c.finetune.keep = ("conv1",)
  fresh = model_dict(train.setup(c))
  run = train.setup(c)
  finetune.initialize(run, c)
  loaded, saved = model_dict(run), saved_state(source, 8)["model"]
  assert_trees_equal(loaded["conv1"], saved["conv1"])
  assert_trees_equal(loaded["conv2"], fresh["conv2"])


def test_frozen_layers_never_change_and_hold_no_optimizer_state(
    source, tmp_path):
  c = target(source, num_train_steps=4)
  c.finetune.freeze = ("conv1", "fc6")
  train.train_and_evaluate(c, str(tmp_path))
  before, after = saved_state(source, 8)["model"], saved_state(tmp_path, 4)
  for name in ("conv1", "fc6"):
    assert_trees_equal(after["model"][name], before[name])
  for name in ("conv2", "fc7"):
    assert not np.array_equal(after["model"][name]["kernel"],
                              before[name]["kernel"])
  # Momentum for the trained layers only.
  assert set(velocity(after["opt"])) == {
      "conv2", "conv3", "conv4", "conv5", "fc7", "fc8"}


def conv_count(lowered) -> int:
  return lowered.as_text().count("stablehlo.convolution")


def test_freezing_the_convolutions_skips_their_backward_pass():
  """With conv1-conv5 frozen the train step holds no convolution beyond
  the forward pass: neither their weight gradients nor the gradients of
  their inputs are computed."""
  batch = {"image": jnp.zeros((8, 32, 32, 3)), "label": jnp.zeros(8, int),
           "mask": jnp.ones(8, bool)}
  counts = {}
  for frozen in ((), KEPT[:5]):
    c = config()
    c.finetune.freeze = frozen
    run = train.setup(c)
    counts[frozen] = conv_count(run.train_step.lower(
        run.model_state, run.opt_state, batch, jnp.float32(0.01)))
    forward = conv_count(run.eval_step.lower(run.model_state, batch))
  assert counts[KEPT[:5]] == forward
  assert counts[()] > 2 * forward  # Unfrozen: weight and input gradients.


def one_step(c):
  run = train.setup(c)
  batch = {"image": jax.random.normal(jax.random.key(0), (8, 32, 32, 3)),
           "label": jnp.arange(8) % 10, "mask": jnp.ones(8, bool)}
  before = model_dict(run)
  _, opt_state, _ = run.train_step(run.model_state, run.opt_state, batch,
                                   jnp.float32(0.01))
  return before, jax.device_get(nnx.to_pure_dict(opt_state))


def test_lr_scale_multiplies_the_layers_rate_as_the_rate_does():
  """The velocity after one step is -rate * scale * (g + decay w): scale
  0.5 halves fc7's exactly and leaves every other layer's as it was."""
  _, plain = one_step(config())
  c = config()
  c.finetune.lr_scale.fc7 = 0.5
  _, scaled = one_step(c)
  assert set(velocity(plain)) == set(KEPT + ("fc8",))
  for name, parts in velocity(plain).items():
    for part, v in parts.items():
      want = v * (0.5 if name == "fc7" else 1.0)
      np.testing.assert_array_equal(velocity(scaled)[name][part], want)


@pytest.mark.parametrize("mode", ["coupled", "decoupled"])
def test_lr_scale_zero_leaves_the_layer_and_its_decay_alone(mode):
  c = config()
  c.optim.weight_decay_mode = mode
  c.optim.weight_decay = 0.05
  c.finetune.lr_scale.fc7 = 0.0
  run = train.setup(c)
  before = model_dict(run)
  batch = {"image": jax.random.normal(jax.random.key(0), (8, 32, 32, 3)),
           "label": jnp.arange(8) % 10, "mask": jnp.ones(8, bool)}
  state, opt = run.model_state, run.opt_state
  for _ in range(2):
    state, opt, _ = run.train_step(state, opt, batch, jnp.float32(0.01))
  after = jax.device_get(nnx.to_pure_dict(state))
  assert_trees_equal(after["fc7"], before["fc7"])
  assert not np.array_equal(after["fc6"]["kernel"], before["fc6"]["kernel"])


def test_a_finetuned_run_resumes_exactly_without_its_source(source, tmp_path):
  """6 steps straight vs 3, then 3 more after the source is gone: the
  run's own checkpoints hold everything it needs."""
  copy = tmp_path / "source"
  shutil.copytree(source, copy)
  straight = target(copy, num_train_steps=6)
  straight.finetune.freeze = ("conv1",)
  train.train_and_evaluate(straight, str(tmp_path / "straight"))
  part = target(copy, num_train_steps=3)
  part.finetune.freeze = ("conv1",)
  train.train_and_evaluate(part, str(tmp_path / "resumed"))
  shutil.rmtree(copy)
  part.num_train_steps = 6
  train.train_and_evaluate(part, str(tmp_path / "resumed"))
  assert_trees_equal(saved_state(tmp_path / "straight", 6),
                     saved_state(tmp_path / "resumed", 6))


def test_resuming_with_other_frozen_layers_is_refused(source, tmp_path):
  c = target(source, num_train_steps=2)
  train.train_and_evaluate(c, str(tmp_path))
  c.num_train_steps = 3
  c.finetune.freeze = ("conv1",)
  with pytest.raises(train.ConfigError, match=r"finetune\.freeze=\('conv1',\)"
                     r" \(now \(\)\)|finetune\.freeze=\(\) \(now \('conv1',\)"):
    train.train_and_evaluate(c, str(tmp_path))


def cli(workdir, *extra):
  return subprocess.run(
      [sys.executable, "-m", "alexnet_jax.main", "--config=configs/smoke.py",
       f"--workdir={workdir}", "--config.num_train_steps=2", *extra],
      cwd=ROOT, env=environment(), capture_output=True, text=True)


@pytest.mark.parametrize("extra,message", [
    (("--config.model.width=0.25",),
     "finetune.keep: conv1.bias has shape (12,) in the checkpoint"),
    (("--config.finetune.best=True", "--config.finetune.init_from={tmp}"),
     "holds no best checkpoints"),
    (("--config.finetune.keep=('conv1','conv9')",),
     "finetune.keep must be a tuple of layer names"),
])
def test_a_source_that_does_not_fit_is_one_line(source, tmp_path, extra,
                                                message):
  work = tmp_path / "work"
  args = [f"--config.finetune.init_from={source}"] + [
      a.format(tmp=tmp_path) for a in extra]
  proc = cli(work, *args)
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert lines[-1].startswith("error: ") and message in lines[-1], lines
  assert "Traceback" not in proc.stderr, proc.stderr[-6000:]
  assert not work.exists()  # Nothing written.
