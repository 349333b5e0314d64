"""The input benchmark runs in a tiny mode and prints its table."""

import numpy as np
import tensorflow as tf

from alexnet_jax import input_benchmark
from configs import smoke


def test_tiny_benchmark_prints_a_table(capsys, tmp_path):
  rng = np.random.default_rng(0)
  for name, shape in (("a.jpg", (375, 500, 3)), ("b.jpg", (500, 333, 3))):
    image = rng.integers(0, 255, shape, dtype=np.uint8)
    (tmp_path / name).write_bytes(tf.io.encode_jpeg(image).numpy())
  rows = input_benchmark.run(smoke.get_config(), batch_size=4, num_batches=1,
                             num_images=4, rounds=1, photos=str(tmp_path))
  out = capsys.readouterr().out
  assert [r["data"].split()[0] for r in rows] == ["photos"] * 4 + [
      "imagenet-like"] * 2 + ["cifar10"]
  assert "pipeline img/s" in out and "bare decode img/s" in out
  assert f"2 from {tmp_path} (a.jpg, b.jpg)" in out
  assert "prepared / full-size photos: pipeline" in out
  assert "prepared / full-size photos, normalize_on_device: pipeline" in out
  assert "load average" in out
  for r in rows:
    assert r["pipeline_images_per_sec"] > 0 and r["ratio"] > 0
    assert r["pipeline_images_per_sec_per_core"] > 0
    assert r["data"] in out
  # The prepared files are the 256x256 re-encodings: smaller than the
  # full-size photos.
  assert rows[1]["kb_per_file"] < rows[0]["kb_per_file"]
