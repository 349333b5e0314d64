"""--mode=predict on a checkpoint trained on a tiny learnable image folder."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from alexnet_jax import predict
from alexnet_jax import train
from configs import smoke

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLOURS = {"blue": (20, 40, 220), "green": (30, 200, 40), "red": (210, 30, 30)}


def write_png(path, colour, rng, size=32):
  path.parent.mkdir(parents=True, exist_ok=True)
  noise = rng.integers(-25, 26, (size, size, 3))
  image = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
  path.write_bytes(tf.io.encode_png(image).numpy())


def config_for(data_dir):
  config = smoke.get_config()
  config.batch_size = 16
  config.num_train_steps = 40
  config.eval_every_steps = 40
  config.log_every_steps = 20
  config.model.num_classes = 3
  d = config.data
  d.source, d.path, d.eval_split = "folder", str(data_dir), "val"
  d.resize_size, d.crop_padding, d.pca_lighting = 0, 0, False
  d.mean, d.std = (127.0, 127.0, 127.0), (64.0, 64.0, 64.0)
  return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A workdir trained to tell three colours apart, and fresh test images."""
  root = tmp_path_factory.mktemp("predict")
  rng = np.random.default_rng(0)
  for name, colour in COLOURS.items():
    for i in range(24):
      write_png(root / "data" / "train" / name / f"{i}.png", colour, rng)
    for i in range(4):
      write_png(root / "data" / "val" / name / f"{i}.png", colour, rng)
    write_png(root / "query" / f"{name}.png", colour, rng)
  config = config_for(root / "data")
  metrics = train.train_and_evaluate(config, str(root / "work"))
  assert metrics["eval_top1_error"] == 0.0  # The colours are learnt.
  return root, config


def test_predict_names_the_right_class_of_each_image(trained):
  root, config = trained
  paths = [str(root / "query" / f"{n}.png") for n in ("red", "blue", "green")]
  results = predict.predict(config, str(root / "work"), paths)
  assert [r["image"] for r in results] == paths
  assert [r["top5"][0]["label"] for r in results] == ["red", "blue", "green"]
  for r in results:  # 3 classes: the top 3, probabilities in order, sum 1.
    probs = [t["prob"] for t in r["top5"]]
    assert len(probs) == 3 and probs == sorted(probs, reverse=True)
    assert sum(probs) == pytest.approx(1.0, abs=1e-5)
    assert {t["label"]: t["index"] for t in r["top5"]} == {
        "blue": 0, "green": 1, "red": 2}  # Folder names, sorted.


def test_ten_crops_and_the_best_checkpoint_agree(trained):
  root, config = trained
  paths = [str(root / "query" / f"{n}.png") for n in COLOURS]
  ten = config.copy_and_resolve_references()
  ten.data.eval_crops, ten.data.resize_size = 10, 40
  results = predict.predict(ten, str(root / "work"), paths, best=True)
  assert [r["top5"][0]["label"] for r in results] == list(COLOURS)


def test_json_output_of_the_command(trained):
  root, _ = trained
  query = str(root / "query" / "green.png")
  proc = run_predict(root, f"--images={query}", "--json")
  assert proc.returncode == 0, proc.stderr[-2000:]
  (result,) = json.loads(proc.stdout)
  assert result["image"] == query
  assert result["top5"][0]["label"] == "green"
  assert set(result["top5"][0]) == {"index", "label", "prob"}


def run_predict(root, *args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run(
      [sys.executable, "-m", "alexnet_jax.main", "--mode=predict",
       "--config=configs/smoke.py", f"--workdir={root / 'work'}",
       "--config.model.num_classes=3", "--config.data.resize_size=0",
       "--config.data.mean=(127.0, 127.0, 127.0)",
       "--config.data.std=(64.0, 64.0, 64.0)", *args],
      cwd=ROOT, env=env, capture_output=True, text=True, check=False)


@pytest.mark.parametrize("case", ["missing", "not_an_image", "empty"])
def test_bad_images_end_with_one_error_line(trained, case):
  root, _ = trained
  (root / "notes.txt").write_text("not an image")
  images = {"missing": str(root / "nope.jpg"),
            "not_an_image": str(root / "notes.txt"), "empty": ""}[case]
  proc = run_predict(root, f"--images={images}")
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: --images"), lines
  assert proc.stdout == ""


def test_predict_without_a_checkpoint_is_a_config_error(tmp_path):
  with pytest.raises(predict.ConfigError, match="no checkpoints"):
    predict.predict(smoke.get_config(), str(tmp_path), ["x.png"])
