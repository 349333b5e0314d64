"""data.normalize_on_device: uint8 crops from the host, the float work on
the accelerator, against the host's float path for the same draws."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import input_pipeline as ip
from alexnet_jax import preprocess
from alexnet_jax import steps
from alexnet_jax import train
from tests.test_input_pipeline import config_for, smooth_image, write_image

MEAN, STD = (120.0, 110.0, 100.0), (60.0, 50.0, 40.0)


def photo_folder(root, n=10, h=12, w=15):
  rng = np.random.default_rng(0)
  for i in range(n):
    for split in ("train", "val"):
      write_image(root / split / f"c{i % 2}" / f"{i}.jpg",
                  smooth_image(rng, h, w), "jpeg")
  # Unreadable: its row is masked and filled, in the uint8 path too.
  (root / "train" / "c0" / "bad.jpg").write_bytes(b"not an image")


def both(config, make):
  """make(config) with the option off and on."""
  config.data.normalize_on_device = False
  host = make(config)
  config.data.normalize_on_device = True
  return host, make(config)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("resize_size", [12, 14])  # 12: the square as is.
def test_device_finish_gives_the_host_pixels(tmp_path, resize_size, fused):
  photo_folder(tmp_path)
  config = config_for(tmp_path, batch_size=11, flip=True, random_crop=True,
                      pca_lighting=True, resize_size=resize_size, mean=MEAN,
                      std=STD, fused_crop=fused, eval_crops=10)
  finish = preprocess.device_finish(config.data)
  (_, host), (_, dev) = both(
      config, lambda c: ip.train_iterator(c, image_size=10))
  # A resize is rounded to uint8 before the float work: half a level.
  atol = 1e-4 if resize_size == 12 else 0.5 / min(STD) + 1e-4
  for _ in range(2):
    want, got = next(host), next(dev)
    assert got["image"].dtype == np.uint8 and got["shift"].shape == (11, 3)
    np.testing.assert_array_equal(got["mask"], want["mask"])
    assert not got["mask"].all()  # The unreadable file is in this batch.
    np.testing.assert_array_equal(got["label"], want["label"])
    np.testing.assert_allclose(finish(got["image"], got["shift"]),
                               want["image"], atol=atol)
  (_, host), (_, dev) = both(
      config, lambda c: ip.eval_iterator(c, image_size=10))
  for want, got in zip(host, dev, strict=True):  # Padded last batch too.
    assert got["image"].dtype == np.uint8 and "shift" not in got
    real = want["mask"]  # Padding rows (masked) are zeros before finishing.
    np.testing.assert_array_equal(got["mask"], real)
    np.testing.assert_allclose(np.asarray(finish(got["image"]))[real],
                               want["image"][real], atol=atol)


def test_device_finish_leaves_float_images_alone_and_refuses_padding(
    tmp_path):
  config = config_for(tmp_path, mean=MEAN)
  x = jnp.ones((2, 4, 4, 3))
  assert preprocess.device_finish(config.data)(x) is x
  config.data.normalize_on_device, config.data.crop_padding = True, 4
  preprocess.check_options(config, 8)  # Center crops are never padded.
  config.data.random_crop = True
  with pytest.raises(ip.DataError, match="crop_padding=0"):
    preprocess.check_options(config, 8)


@pytest.mark.slow
def test_train_step_finishes_uint8_batches_on_the_device(tmp_path):
  from flax import nnx
  from configs import smoke
  config = smoke.get_config()
  config.data.mean, config.data.std = MEAN, STD
  model, optimizer, eval_graph = train.create_train_state(config)
  model_graph, model_state = nnx.split(model)
  opt_graph, opt_state = nnx.split(optimizer)
  finish = preprocess.device_finish(config.data)
  plain = steps.make_steps(model_graph, opt_graph, eval_graph)
  on_device = steps.make_steps(model_graph, opt_graph, eval_graph,
                               finish=finish)
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (32, 32, 32, 3)).astype(np.uint8)
  shift = rng.normal(0, 5, (32, 3)).astype(np.float32)
  label, mask = rng.integers(0, 10, 32), np.ones(32, bool)
  floats = {"image": finish(image, shift), "label": label, "mask": mask}
  uint8 = {"image": image, "shift": shift, "label": label, "mask": mask}
  copy = lambda s: jax.tree.map(jnp.copy, s)  # The steps donate states.
  _, _, want = plain[0](copy(model_state), copy(opt_state), floats, 0.01)
  _, _, got = on_device[0](copy(model_state), copy(opt_state), uint8, 0.01)
  np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-5)
  eval_want = plain[1](model_state, {**floats, "image": finish(image)})
  eval_got = on_device[1](model_state, {**uint8, "shift": None})
  np.testing.assert_allclose(eval_got["loss"], eval_want["loss"], rtol=1e-5)


@pytest.mark.slow
def test_a_folder_run_with_normalize_on_device_trains(tmp_path):
  photo_folder(tmp_path / "data", n=16, h=34, w=40)
  config = config_for(tmp_path / "data", batch_size=8, flip=True,
                      random_crop=True, pca_lighting=True, resize_size=34,
                      mean=MEAN, std=STD, normalize_on_device=True)
  m = config.model
  m.preset, m.num_classes, m.width, m.init = "cifar", 2, 0.125, "he"
  config.num_train_steps, config.log_every_steps = 4, 1
  config.eval_every_steps = 4
  last = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert last["eval_examples"] == 16
  rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").open()]
  assert all(np.isfinite(r["train_loss"]) for r in rows if "train_loss" in r)
