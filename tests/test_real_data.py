"""Training on real CIFAR-10 images (tests/cifar_data.py finds the archive).

The JAX train step against an independent PyTorch twin on real batches, and
the shipped CIFAR-10 recipe learning. Skipped when the archive is absent.
"""

import importlib.util
import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import cifar10
from alexnet_jax import input_pipeline
from alexnet_jax import steps
from alexnet_jax import train
from tests import cifar_data
from tests.test_train import run_main

HAS_TORCH = importlib.util.find_spec("torch") is not None
pytestmark = cifar_data.skip_unless_available


@pytest.fixture(scope="module")
def two_classes(tmp_path_factory):
  """500 training and 100 test images each of airplane and automobile."""
  return cifar_data.subset(tmp_path_factory.mktemp("cifar2") / "cifar10",
                           classes=("airplane", "automobile"),
                           train_per_class=500, test_per_class=100)


def small_config(path, **model):
  config = cifar10.get_config()
  config.data.path = str(path)
  config.data.holdout = 0  # 1,000 training images: none to hold out.
  config.data.eval_split, config.data.test_split = "test", ""
  config.model.num_classes = 2
  config.model.width = 0.25
  config.batch_size = 16
  for k, v in model.items():
    config.model[k] = v
  return config


def single_device_steps(config):
  """The project's jitted steps and states, without a mesh (one device)."""
  model, optimizer, eval_graph = train.create_train_state(config)
  model_graph, model_state = nnx.split(model)
  opt_graph, opt_state = nnx.split(optimizer)
  train_step, _ = steps.make_steps(model_graph, opt_graph, eval_graph)
  return model_state, opt_state, train_step


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
@pytest.mark.parametrize("recipe", ["shipped", "paper_scale_paper_init"])
def test_train_steps_match_the_torch_twin_on_real_batches(two_classes,
                                                          recipe):
  """Same parameters, batches and update in torch.nn: the same losses.

  Dropout is off so that both sides compute the same function. The paper
  variant feeds 0-255 pixels into the paper's init (LRN, bias 1, decay on
  biases), which is where a bug would have hidden the stall.
  """
  from experiments import torch_peer  # pylint: disable=g-import-not-at-top
  overrides = dict(dropout_rate=0.0)
  if recipe != "shipped":
    overrides["init"] = "paper"
  config = small_config(two_classes, **overrides)
  if recipe != "shipped":
    config.data.std = ()
  # 100x the paper's decay, so that a wrong decay (on biases, say) moves the
  # parameters past the tolerance within six steps.
  config.optim.weight_decay = 0.05
  model_state, opt_state, train_step = single_device_steps(config)
  twin = torch_peer.TorchTwin(config, model_state)
  _, batches = input_pipeline.train_iterator(config, image_size=32)
  # A small rate keeps early steps from amplifying float32 rounding (the
  # fake devices' thread pools sum in another order than torch) beyond
  # the tolerance: at 0.01 the 2-class loss jumps 0.66 -> 4.97 at step 2.
  lr = 0.002
  # The shipped recipe's losses agree to 5e-7 for three steps, then (on an
  # AMD EPYC, AVX2) jump to 2e-4 at step 4 and 6e-4 at step 6: a sudden
  # step, not a drift, as when one nearly tied comparison (a max-pool
  # window, a ReLU at 0) goes the other way in float32 on the two sides.
  # A wrong bias decay moves that recipe (zero-initialized biases) by only
  # 1e-6, so the paper variant, where it moves the loss by 8e-4 in six
  # steps (2e-4 at step 3), is the one held to 2e-4.
  # The flip also moves 2% of conv3's weights by up to 3x the paper
  # variant's tolerance after six steps, hence `scale` below.
  rtol = 2e-4 if recipe != "shipped" else 1e-3
  scale = 1e-4 if recipe != "shipped" else 5e-4
  for step in range(6):
    batch = next(batches)
    model_state, opt_state, m = train_step(model_state, opt_state, batch,
                                           jnp.float32(lr))
    torch_loss, _ = twin.step(batch["image"], batch["label"], lr)
    np.testing.assert_allclose(float(m["loss"]), torch_loss, rtol=rtol,
                               err_msg=f"step {step + 1}")
  # The parameters after six updates, layer by layer.
  ours = torch_peer.jax_params(model_state)
  theirs = torch_peer.torch_layers(twin.net)
  for name in ("conv1", "conv3", "fc8"):
    kernel = ours[name][0]
    want = theirs[name].weight.detach().numpy()
    want = want.transpose(2, 3, 1, 0) if kernel.ndim == 4 else want.T
    np.testing.assert_allclose(kernel, want, rtol=0,
                               atol=scale * np.abs(want).max(), err_msg=name)
    np.testing.assert_allclose(ours[name][1],
                               theirs[name].bias.detach().numpy(), rtol=0,
                               atol=scale * np.abs(want).max() + 1e-7,
                               err_msg=name)


def metrics(workdir):
  return [json.loads(l) for l in (workdir / "metrics.jsonl").open()]


def test_cifar10_recipe_learns_two_real_classes(two_classes, tmp_path):
  """The shipped recipe at width 0.25: well above chance in 150 steps."""
  proc = run_main("--config=configs/cifar10.py", f"--workdir={tmp_path}",
                  f"--config.data.path={two_classes}",
                  "--config.model.num_classes=2", "--config.model.width=0.25",
                  "--config.batch_size=32", "--config.num_train_steps=150",
                  "--config.log_every_steps=25",
                  # The recipe with 200 of the 1,000 images held out.
                  "--config.data.holdout=200", fast_compile=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  rows = metrics(tmp_path)
  train_rows = [r for r in rows if "train_loss" in r]
  # Chance: accuracy 0.5, loss ln 2 = 0.69.
  assert train_rows[-1]["train_accuracy"] > 0.75, train_rows
  assert train_rows[-1]["train_loss"] < 0.55, train_rows
  final = [r for r in rows if "eval_top1_error" in r][-1]
  assert final["eval_examples"] == 200  # The holdout.
  assert final["eval_top1_error"] < 0.25, final
  test = [r for r in rows if "test_top1_error" in r]
  assert len(test) == 1 and test[0]["test_examples"] == 200, test
  assert test[0]["test_top1_error"] < 0.3, test


@pytest.mark.slow
def test_cifar10_recipe_first_epoch_reaches_half_accuracy(tmp_path):
  """The acceptance target: one epoch of the shipped config, <= 50% error."""
  data = cifar_data.subset(tmp_path / "cifar10")
  config = cifar10.get_config()
  steps = 50_000 // config.batch_size
  workdir = tmp_path / "run"
  # As the target was set: one epoch of all 50,000 training images (no
  # holdout), then the test split.
  proc = run_main("--config=configs/cifar10.py", f"--workdir={workdir}",
                  f"--config.data.path={data}", "--config.data.holdout=0",
                  "--config.data.eval_split=test", "--config.data.test_split=",
                  f"--config.num_train_steps={steps}", timeout=3600,
                  fast_compile=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  final = [r for r in metrics(workdir) if "eval_top1_error" in r][-1]
  assert final["eval_examples"] == 10_000
  assert final["eval_top1_error"] <= 0.50, final
