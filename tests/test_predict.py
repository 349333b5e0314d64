"""Using a trained AlexNet: --mode=predict and the paper's Figures 3 and 4
(experiments/figures.py), on a checkpoint trained on a tiny learnable image
folder (three colours)."""

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
from experiments import figures

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


def test_ten_crops_average_the_softmax_of_each_crop(trained):
  import jax
  from flax import nnx
  root, config = trained
  paths = [str(root / "query" / f"{n}.png") for n in COLOURS]
  ten = config.copy_and_resolve_references()
  ten.data.eval_crops, ten.data.resize_size = 10, 40
  results = predict.predict(ten, str(root / "work"), paths, best=True)
  assert [r["top5"][0]["label"] for r in results] == list(COLOURS)
  crops = predict.load_images(ten, paths, 32)
  assert crops.shape == (3, 10, 32, 32, 3)
  run, _ = figures.restore(ten, str(root / "work"), best=True)
  model = nnx.merge(run.eval_graph, run.model_state)
  for r, image in zip(results, crops):  # Each crop on its own, then the mean.
    want = np.mean([np.asarray(jax.nn.softmax(model(c[None])))[0]
                    for c in image], axis=0)
    for t in r["top5"]:
      assert t["prob"] == pytest.approx(want[t["index"]], abs=1e-5)


def test_uint8_crops_are_finished_as_in_training(trained):
  root, config = trained
  paths = [str(root / "query" / f"{n}.png") for n in COLOURS]
  want = predict.load_images(config, paths, 32)
  uint8 = config.copy_and_resolve_references()
  uint8.data.normalize_on_device = True
  got = predict.load_images(uint8, paths, 32)
  assert got.dtype == np.float32
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_a_damaged_image_is_named(trained, tmp_path):
  _, config = trained
  bad = tmp_path / "cut.png"
  bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"junk" * 10)
  with pytest.raises(predict.ConfigError, match="cut.png is not an image"):
    predict.load_images(config, [str(bad)], 32)


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


def test_a_missing_image_ends_the_command_with_one_error_line(trained):
  root, _ = trained
  proc = run_predict(root, f"--images={root / 'nope.jpg'}")
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert lines == [f"error: --images: no such file: {root / 'nope.jpg'}"]
  assert proc.stdout == ""


@pytest.mark.parametrize("case", ["not_an_image", "empty"])
def test_bad_images_are_named(trained, tmp_path, case):
  _, config = trained
  (tmp_path / "notes.txt").write_text("not an image")
  paths = {"not_an_image": [str(tmp_path / "notes.txt")], "empty": []}[case]
  with pytest.raises(predict.ConfigError, match="^--images") as e:
    predict.load_images(config, paths, 32)
  assert "\n" not in str(e.value)


def test_predict_without_a_checkpoint_is_a_config_error(tmp_path):
  with pytest.raises(predict.ConfigError, match="no checkpoints"):
    predict.predict(smoke.get_config(), str(tmp_path), ["x.png"])


# ---------------------------------------------------------------- figures


def decode_png(path):
  return tf.io.decode_png(path.read_bytes()).numpy()


def test_filters_png_holds_each_tower_block_and_kernel(trained, tmp_path):
  root, config = trained
  out = tmp_path / "filters.png"
  figures.filters(config, str(root / "work"), str(out))
  image = decode_png(out)
  # smoke: 5x5 conv1, 12 kernels, two towers of 6 -> one row of 6 per block.
  k, per, s, pad = 5, 6, figures.filter_scale(5), figures.PAD
  cell = k * s + pad
  block = per * cell + pad
  assert image.shape == (cell + pad, 2 * block + 4 * pad, 3)
  run, _ = figures.restore(config, str(root / "work"))
  kernel = np.asarray(
      figures.nnx.to_pure_dict(run.model_state)["conv1"]["kernel"])
  for ch, x0 in ((0, pad), (per, block + 4 * pad + pad)):  # Each tower's first.
    w = kernel[..., ch]
    want = np.round(255 * (w - w.min()) / (w.max() - w.min()))
    got = image[pad:pad + k * s:s, x0:x0 + k * s:s]
    np.testing.assert_array_equal(got, want.astype(np.uint8))


def test_filters_grid_wraps_rows_within_each_tower():
  kernel = np.random.default_rng(0).normal(size=(3, 3, 3, 20))
  grid = figures.filters_grid(kernel, towers=2, cols=4)  # 10 a tower: 3 rows.
  s, pad = figures.filter_scale(3), figures.PAD
  cell = 3 * s + pad
  block = 4 * cell + pad
  assert grid.shape == (3 * cell + pad, 2 * block + 4 * pad, 3)
  # Kernel 9 (tower 1, row 2, column 1) and kernel 10 (tower 2's first).
  for ch, (y, x) in ((9, (pad + 2 * cell, pad + cell)),
                     (10, (pad, block + 4 * pad + pad))):
    w = kernel[..., ch]
    want = np.round(255 * (w - w.min()) / (w.max() - w.min()))
    np.testing.assert_array_equal(grid[y:y + 3 * s:s, x:x + 3 * s:s], want)
  assert (grid[pad + 2 * cell:, pad + 2 * cell:block] == 255).all()  # Empty.


def test_nearest_equals_a_brute_force_search():
  rng = np.random.default_rng(0)
  train_f, query_f = rng.normal(size=(50, 16)), rng.normal(size=(4, 16))
  dist, idx = figures.nearest(train_f, query_f, 5, chunk=7)  # 8 chunks.
  full = np.linalg.norm(query_f[:, None] - train_f[None], axis=2)
  np.testing.assert_array_equal(idx, np.argsort(full, axis=1)[:, :5])
  np.testing.assert_allclose(dist, np.sort(full, axis=1)[:, :5], rtol=1e-4)
  # Features far from the origin and close to each other (as fc7's ReLU
  # outputs are): the expansion |q|^2 - 2 q.t + |t|^2 alone would order
  # them by rounding noise.
  train_f, query_f = 300 + 0.01 * train_f, 300 + 0.01 * query_f
  dist, idx = figures.nearest(train_f, query_f, 5, chunk=7)
  full = np.linalg.norm(query_f[:, None] - train_f[None], axis=2)
  np.testing.assert_array_equal(idx, np.argsort(full, axis=1)[:, :5])
  np.testing.assert_allclose(dist, np.sort(full, axis=1)[:, :5], rtol=1e-3)


def test_neighbours_png_and_json_from_fc7_features(trained, tmp_path):
  root, config = trained
  out = tmp_path / "neighbours.png"
  result = figures.neighbours(config, str(root / "work"), str(out),
                              split="val", queries=3, k=4)
  run, _ = figures.restore(config, str(root / "work"))
  train_f, train_y, none = figures.split_features(run, "train", 0, set())
  val_f, val_y, shown = figures.split_features(run, "val")
  assert none == {} and sorted(shown) == list(range(len(val_y)))
  # One query of each class: the first of each in the split's order.
  first = [int(np.flatnonzero(val_y == c)[0]) for c in range(3)]
  assert [q["index"] for q in result["queries"]] == sorted(first)
  assert len({q["label"] for q in result["queries"]}) == 3
  query_f = val_f[sorted(first)]
  assert train_f.shape == (72, 512) and query_f.shape == (3, 512)  # fc7.
  full = np.linalg.norm(query_f[:, None] - train_f[None], axis=2)
  for q, entry in enumerate(result["queries"]):
    got = [n["index"] for n in entry["neighbours"]]
    # The k nearest (images of one colour nearly tie: compare distances).
    np.testing.assert_allclose(full[q][got], np.sort(full[q])[:4], rtol=1e-5)
    np.testing.assert_allclose([n["distance"] for n in entry["neighbours"]],
                               full[q][got], rtol=1e-5)
    # Learnt colours: the nearest training images share the query's class.
    assert {n["label"] for n in entry["neighbours"]} == {entry["label"]}
  assert json.loads(out.with_suffix(".json").read_text()) == result
  scale, pad = 3, figures.PAD  # 32-pixel images shown 96 wide.
  cell = 32 * scale + pad
  assert decode_png(out).shape == (3 * cell + pad, 5 * cell + 4 * pad, 3)


def test_figures_command_reads_the_workdir_config(trained, tmp_path):
  root, config = trained
  out, same = tmp_path / "f.png", tmp_path / "same.png"
  figures.filters(config, str(root / "work"), str(same))
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.figures", "filters",
       f"--workdir={root / 'work'}", f"--out={out}"], cwd=ROOT,
      env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True,
      text=True, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip() == f"wrote {out}"
  np.testing.assert_array_equal(decode_png(out), decode_png(same))
