"""The input benchmark runs in a tiny mode and prints its table."""

from alexnet_jax import input_benchmark
from configs import smoke


def test_tiny_benchmark_prints_a_table(capsys):
  rows = input_benchmark.run(smoke.get_config(), batch_size=4, num_batches=1,
                             num_images=4, rounds=1)
  out = capsys.readouterr().out
  assert [r["data"].split()[0] for r in rows] == ["imagenet-like"] * 2 + [
      "cifar10"]
  assert "pipeline img/s" in out and "bare decode img/s" in out
  for r in rows:
    assert r["pipeline_images_per_sec"] > 0 and r["ratio"] > 0
    assert r["data"] in out

