"""torchvision weight import against torch itself: a torchvision-layout
network in plain torch.nn with random weights, converted, predicts what
torch computes on the same images."""

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from alexnet_jax import convert
from alexnet_jax import predict
from configs import torchvision as torchvision_config

HAS_TORCH = importlib.util.find_spec("torch") is not None
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES = 10
pytestmark = pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")


def torchvision_alexnet(num_classes):
  """torchvision.models.alexnet's modules, names and order, in torch.nn."""
  from torch import nn

  class AlexNet(nn.Module):

    def __init__(self):
      super().__init__()
      self.features = nn.Sequential(
          nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(inplace=True),
          nn.MaxPool2d(3, 2),
          nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True),
          nn.MaxPool2d(3, 2),
          nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
          nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
          nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True),
          nn.MaxPool2d(3, 2))
      self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
      self.classifier = nn.Sequential(
          nn.Dropout(0.5), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),
          nn.Dropout(0.5), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
          nn.Linear(4096, num_classes))

    def forward(self, x):
      x = self.avgpool(self.features(x))
      return self.classifier(x.flatten(1))

  return AlexNet()


def config():
  c = torchvision_config.get_config()
  c.model.num_classes = NUM_CLASSES
  c.batch_size = 8
  return c


def photo(path, h, w, seed):
  rng = np.random.default_rng(seed)
  small = rng.integers(0, 256, (h // 16, w // 16, 3)).astype(np.float32)
  image = tf.image.resize(small[None], (h, w), method="bicubic")[0]
  path.write_bytes(tf.io.encode_png(
      tf.cast(tf.clip_by_value(image, 0, 255), tf.uint8)).numpy())


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  import torch
  root = tmp_path_factory.mktemp("tv")
  torch.manual_seed(0)
  net = torchvision_alexnet(NUM_CLASSES).eval()
  with torch.no_grad():  # He init and random biases: logits that differ.
    for m in net.modules():
      if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
        m.weight.normal_(0.0, (2.0 / m.weight[0].numel()) ** 0.5)
        m.bias.normal_(0.0, 0.1)
    net.classifier[6].weight.mul_(3.0)
  torch.save(net.state_dict(), root / "alexnet.pth")
  convert.convert(config(), convert.load_state_dict(
      str(root / "alexnet.pth")), str(root / "work"))
  return root, net


# Slow: the converted full-size torchvision AlexNet (61M parameters) costs
# ~30 s to build and save; its tests run in CI's slow pass.
@pytest.mark.slow
def test_imported_weights_predict_what_torch_computes(converted):
  import torch
  root, net = converted
  paths = []
  for i, (h, w) in enumerate([(300, 260), (240, 400), (256, 256)]):
    paths.append(str(root / f"photo{i}.png"))
    photo(root / f"photo{i}.png", h, w, i)
  results = predict.predict(config(), str(root / "work"), paths)
  images = predict.load_images(config(), paths, 224)  # What predict fed in.
  with torch.no_grad():
    want = torch.softmax(net(torch.from_numpy(
        images.transpose(0, 3, 1, 2).copy())), dim=1).numpy()
  for r, p in zip(results, want):
    top = np.argsort(-p)[:5]
    assert [t["index"] for t in r["top5"]] == list(top)
    np.testing.assert_allclose([t["prob"] for t in r["top5"]], p[top],
                               atol=1e-4)
  assert max(want.max(axis=1)) > 0.5  # Probabilities that tell classes apart.


# Slow: it reads the converted full-size model's checkpoint (the fixture
# above, ~30-45 s); the class names it writes are tested just below.
@pytest.mark.slow
def test_the_checkpoint_carries_imagenet_names_and_the_config(converted):
  from alexnet_jax import checkpoint
  root, _ = converted
  assert (root / "work" / "config.json").is_file()
  ckpts = checkpoint.Checkpoints(str(root / "work"), max_to_keep=1)
  try:
    assert ckpts.steps() == [0]
    meta = ckpts.read_meta(0)
  finally:
    ckpts.close()
  assert meta["imported_from"] == "torchvision"
  assert meta["model_config"]["preset"] == "torchvision"
  assert meta["class_names"] == [f"class {i}" for i in range(NUM_CLASSES)]


def test_imagenet_class_names_in_torchvisions_order():
  names = convert.imagenet_names(1000)
  assert len(names) == 1000 and len(set(names)) == 1000
  assert names[0] == "tench (n01440764)"
  assert names[-1] == "toilet tissue (n15075141)"
  assert convert.imagenet_names(NUM_CLASSES)[3] == "class 3"


def test_a_state_dict_of_another_network_is_named():
  sd = {"features.0.weight": np.zeros((64, 3, 11, 11))}
  with pytest.raises(convert.ConfigError, match="no features.0.bias"):
    convert.from_torchvision(sd, None)


@pytest.mark.parametrize("field,value", [("norm", "lrn"), ("towers", 2),
                                         ("activation", "tanh")])
def test_a_model_other_than_torchvisions_is_refused(tmp_path, field, value):
  c = config()
  c.model[field] = value
  with pytest.raises(convert.ConfigError, match="torchvision's network"):
    convert.convert(c, {}, str(tmp_path))


def test_a_workdir_with_checkpoints_is_left_alone(tmp_path):
  (tmp_path / "checkpoints").mkdir()
  with pytest.raises(convert.ConfigError, match="already holds checkpoints"):
    convert.convert(config(), {}, str(tmp_path))


def test_convert_errors_are_one_line(tmp_path):
  (tmp_path / "junk.pth").write_text("not a torch file")
  proc = subprocess.run(
      [sys.executable, "-m", "alexnet_jax.convert",
       f"--torchvision={tmp_path / 'junk.pth'}", f"--workdir={tmp_path / 'w'}"],
      cwd=ROOT, capture_output=True, text=True, check=False,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(
      "error: --torchvision: ") and "not a torch state_dict" in lines[0], lines
  assert not (tmp_path / "w").exists()
  with pytest.raises(convert.ConfigError, match="no such file"):
    convert.load_state_dict(str(tmp_path / "missing.pth"))


# Slow (~20 s): fine-tuning itself is tested by test_finetune.py; this is the
# converted checkpoint as its source.
@pytest.mark.slow
def test_imported_weights_fine_tune_to_new_classes(converted, tmp_path):
  """configs/finetune_cifar10.py:torchvision on a 3-class folder: conv1-fc7
  start as torch's, fc8 is new (3 outputs), the frozen layers stay torch's
  and fc7 trains."""
  from alexnet_jax import train
  from configs import finetune_cifar10
  from tests.test_checkpoint import saved_state
  root, net = converted
  for split, n in (("train", 6), ("test", 3)):
    for i in range(n):
      (tmp_path / "data" / split / f"k{i % 3}").mkdir(parents=True,
                                                      exist_ok=True)
      photo(tmp_path / "data" / split / f"k{i % 3}" / f"{i}.png", 48, 40, i)
  c = finetune_cifar10.get_config("torchvision")
  c.data.path = str(tmp_path / "data")
  c.model.num_classes = 3
  c.batch_size, c.num_train_steps = 8, 2  # 8 fake devices.
  c.finetune.init_from = str(root / "work")
  c.finetune.freeze = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6")
  train.train_and_evaluate(c, str(tmp_path / "ft"))
  model = saved_state(tmp_path / "ft", 2)["model"]
  sd = net.state_dict()
  np.testing.assert_array_equal(model["conv1"]["kernel"],
                                sd["features.0.weight"].numpy().transpose(
                                    2, 3, 1, 0))
  np.testing.assert_array_equal(model["fc6"]["bias"],
                                sd["classifier.1.bias"].numpy())
  assert not np.array_equal(model["fc7"]["kernel"],
                            sd["classifier.4.weight"].numpy().T)
  assert model["fc8"]["kernel"].shape == (4096, 3)


# Slow: the converted full-size torchvision AlexNet (61M parameters) costs
# ~30 s to build and save; its tests run in CI's slow pass.
@pytest.mark.slow
def test_export_gives_back_the_state_dict_torch_loads(converted, tmp_path):
  """Import then export: torchvision's own state_dict, bit for bit, and a
  torchvision-layout network loads it strictly."""
  import torch
  root, net = converted
  out = tmp_path / "back.pth"
  assert convert.export(config(), str(root / "work"), str(out)) == 0
  back = torch.load(out, weights_only=True)
  want = net.state_dict()
  assert sorted(back) == sorted(want)
  for key, value in want.items():
    assert back[key].dtype == torch.float32
    assert torch.equal(back[key], value), key
  torchvision_alexnet(NUM_CLASSES).load_state_dict(back, strict=True)
  with pytest.raises(convert.ConfigError, match="exists"):
    convert.export(config(), str(root / "work"), str(out))


def test_export_needs_one_direction(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "alexnet_jax.convert", f"--workdir={tmp_path}"],
      cwd=ROOT, capture_output=True, text=True, check=False,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      "error: give one of --torchvision=FILE.pth (import) and "
      "--to_torchvision=FILE.pth (export)"]
