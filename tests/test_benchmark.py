"""The benchmark program runs in a tiny mode; nothing here asserts a time."""

import importlib.util
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from jax import lax

from alexnet_jax import benchmark
from alexnet_jax import flops as flops_lib
from alexnet_jax import model as model_lib
from alexnet_jax import ops
from experiments import torch_peer
from configs import default, smoke
from tests import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAS_TORCH = importlib.util.find_spec("torch") is not None
TINY = ["--config=configs/smoke.py", "--batch=4", "--windows=1", "--steps=2",
        "--warmup=1", "--peak_size=512"]


def run_benchmark(*args):
  # One CPU device and the project's default flags, not the tests' 8 fakes.
  env = dict(os.environ, XLA_FLAGS=xla_flags.flags(fast_compile=False),
             JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "alexnet_jax.benchmark",
                         *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, check=False)


# torch.compile (inductor compiling C++) alone took 40 of this test's 75
# seconds on 2 cores: the default run times the eager peers, the slow run
# adds it.
@pytest.mark.parametrize("peers", [
    "eager,module,channels_last",
    pytest.param("eager,module,channels_last,compile",
                 marks=pytest.mark.slow)])
def test_tiny_train_benchmark_runs_and_prints_its_table(peers):
  args = TINY + ["--json"] + (["--compare-torch", f"--torch_peers={peers}"]
                              if HAS_TORCH else [])
  proc = run_benchmark("--what=train", *args)
  assert proc.returncode == 0, proc.stderr[-2000:]
  result = json.loads(proc.stdout)
  table = benchmark.format_table(result)  # What the run prints without --json.
  print(table)
  assert result["what"] == "train" and result["batch"] == 4
  assert result["params"] == model_lib.count_params(model_lib.from_config(
      smoke.get_config().model, rngs=nnx.Rngs(0)))
  assert result["flops_per_step"] > 0 and result["compile_s"] > 0
  assert result["rows"]["jax"]["images_per_s"] > 0
  assert len(result["rows"]["jax"]["window_ms"]) == 1
  assert "images/s" in table and "GFLOP/s" in table and "compile" in table
  assert table.splitlines()[4].split()[0] == "jax"
  if HAS_TORCH:  # A row for each peer, in the order asked for.
    names = [benchmark.TORCH_PEERS[p][0] for p in peers.split(",")]
    assert list(result["rows"]) == ["jax"] + names
    assert [line.split()[0] for line in
            table.splitlines()[5:5 + len(names)]] == names
    assert result["torch_params"] == result["params"]
    assert all(result["rows"][n]["images_per_s"] > 0 for n in names)
    if "torch_compile" in names:
      assert result["rows"]["torch_compile"]["compile_s"] >= 0
      assert "torch.compile" in table
    assert "compile_s" not in result["rows"]["torch"]
    rates = {n: result["rows"][n]["images_per_s"] for n in names}
    assert result["fastest_peer"] == max(rates, key=rates.get)
    assert result["ratio_jax_over_fastest_peer"] == pytest.approx(
        result["rows"]["jax"]["images_per_s"] / max(rates.values()))
    assert "LocalResponseNorm" in table
    assert "JAX / fastest PyTorch" in table


def test_an_unknown_torch_peer_is_one_error_line():
  proc = run_benchmark(*TINY, "--compare-torch", "--torch_peers=eager,jit")
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      "error: --torch_peers takes names of ['channels_last', 'compile', "
      "'eager', 'module'], got ['eager', 'jit']"]


def test_an_unknown_half_precision_dtype_is_one_error_line():
  proc = run_benchmark(*TINY, "--config.half_precision=True",
                       "--config.half_precision_dtype=fp8")
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      "error: half_precision_dtype must be one of ('auto', 'bfloat16', "
      "'float16'), got 'fp8'"]


def test_flop_count_of_one_grouped_conv_and_one_dot():
  x = jnp.zeros((2, 9, 9, 8))
  k = jnp.zeros((3, 3, 4, 6))  # Two groups of 4 -> 3 channels.
  w = jnp.zeros((8, 5))

  def f(x, k, w):
    y = lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                 feature_group_count=2)
    return y, x[:, 0, 0, :] @ w

  flops = flops_lib.count_flops(jax.make_jaxpr(f)(x, k, w).jaxpr)
  assert flops == 2 * (2 * 9 * 9 * 6) * (3 * 3 * 4) + 2 * (2 * 5) * 8


def test_paper_forward_flops_are_the_known_count():
  # conv 1-5 and fc 6-8 multiply-adds of the two-tower paper net at 227.
  # Abstract parameters: tracing needs shapes only.
  model = nnx.eval_shape(lambda: model_lib.AlexNet(rngs=nnx.Rngs(0)))
  model.eval()
  graph, state = nnx.split(model)
  x = jax.ShapeDtypeStruct((1, 227, 227, 3), jnp.float32)
  forward = lambda state, x: nnx.merge(graph, state)(x)
  flops = flops_lib.count_flops(jax.make_jaxpr(forward)(state, x).jaxpr)
  macs = (55 * 55 * 96 * 11 * 11 * 3 + 27 * 27 * 256 * 5 * 5 * 48
          + 13 * 13 * 384 * 3 * 3 * 256 + 13 * 13 * 384 * 3 * 3 * 192
          + 13 * 13 * 256 * 3 * 3 * 192 + 9216 * 4096 + 4096 * 4096
          + 4096 * 1000)
  assert flops == 2 * macs


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
@pytest.mark.parametrize("override", [{}, {"preset": "cifar", "width": 0.5,
                                           "num_classes": 10}])
def test_torch_peer_has_the_same_parameters_and_output_shape(override):
  import torch
  config = default.get_config()
  config.model.update(override)
  net = torch_peer.torch_alexnet(config)
  abstract = nnx.eval_shape(
      lambda: model_lib.from_config(config.model, rngs=nnx.Rngs(0)))
  jax_params = sum(math.prod(p.shape) for p in jax.tree.leaves(
      nnx.state(abstract, nnx.Param)))
  assert sum(p.numel() for p in net.parameters()) == jax_params
  size = model_lib.input_size(config.model)
  net.eval()
  with torch.inference_mode():
    out = net(torch.zeros(1, 3, size, size))
  assert tuple(out.shape) == (1, config.model.num_classes)


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
@pytest.mark.parametrize("lrn", ["slices", "module"])
def test_torch_peer_lrn_matches_the_model_lrn(lrn):
  import numpy as np
  import torch
  net = torch_peer.torch_alexnet(default.get_config(), lrn)
  norms = [m for m in net if type(m).__name__ in ("SliceLRN", "TowerLRN")]
  assert len(norms) == 2  # After conv1 and conv2.
  x = 20 * np.random.default_rng(0).standard_normal((2, 9, 9, 96))
  ours = ops.local_response_norm(jnp.asarray(x, jnp.float32), groups=2)
  with torch.inference_mode():
    theirs = norms[0](torch.from_numpy(x.transpose(0, 3, 1, 2)).float())
  np.testing.assert_allclose(theirs.numpy().transpose(0, 2, 3, 1), ours,
                             rtol=2e-5, atol=1e-6)


# Slow (~13 s): the same variants' equivalence is tested in test_fast_paths.py;
# this runs the experiment program over them.
@pytest.mark.slow
def test_fast_paths_experiment_runs_every_variant():
  env = dict(os.environ, XLA_FLAGS=xla_flags.flags(fast_compile=False),
             JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [sys.executable, "experiments/fast_paths.py", "--config=configs/smoke.py",
       "--batch=4", "--windows=1"], cwd=ROOT, env=env, capture_output=True,
      text=True, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  print(proc.stdout)
  names = [line.split("  ")[0] for line in proc.stdout.splitlines()[2:]]
  assert names == ["plain", "+ towers as convs", "+ LRN", "+ max-pool",
                   "+ bias sums (all)"]


def test_committed_benchmark_results_render_as_a_table():
  out = os.path.join(ROOT, "experiments", "results", "cpu.jsonl")
  proc = subprocess.run(
      [sys.executable, "experiments/benchmark_table.py", "--table_only",
       f"--out={out}"], cwd=ROOT, capture_output=True, text=True, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  rows = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
  assert len(rows) == 1 + 18  # Header, 3 models x 2 steps x 3 batches.
  assert all("x** |" in row for row in rows[1:])


def test_gpu_table_lists_every_step_and_names_the_limit(tmp_path):
  from experiments import gpu_table
  steps = [{"name": "smoke", "exit": 0, "seconds": 20},
           {"name": "bench_train_128_halfTrue", "exit": 0, "seconds": 40},
           {"name": "bench_eval_128_halfFalse", "exit": 1, "seconds": 3},
           {"name": "input_jpeg", "exit": 0, "seconds": 30},
           {"name": "input_prepared", "exit": 0, "seconds": 20}]
  (tmp_path / "steps.jsonl").write_text(
      "\n".join(json.dumps(s) for s in steps))
  (tmp_path / "devices.txt").write_text("gpu 1 NVIDIA H200")
  (tmp_path / "bench_train_128_halfTrue.txt").write_text(json.dumps({
      "what": "train", "batch": 128, "half_precision": True,
      "matmul_peak_gflops": 500e3, "rows": {"jax": {
          "images_per_s": 4000.0, "ms_per_step": 32.0, "gflops": 100e3,
          "pct_peak": 20.0}}}))
  (tmp_path / "bench_eval_128_halfFalse.err").write_text(
      "Traceback\nRuntimeError: out of memory\n")
  (tmp_path / "input_jpeg.txt").write_text(json.dumps([{
      "data": "configured (folder)", "batch_size": 128,
      "pipeline_images_per_sec": 1500.0}]))
  (tmp_path / "input_prepared.txt").write_text(json.dumps([{
      "data": "configured (prepared)", "batch_size": 128,
      "pipeline_images_per_sec": 5000.0}]))
  text = gpu_table.table(tmp_path)
  assert "| bench_eval_128_halfFalse | 1 | 3 | RuntimeError: out of memory |" \
      in text
  assert "| train | 128 | bfloat16 | 1 device | 4000 | 32.00 | 100.00 | 20% " \
      "| 500.0 |" in text
  assert ("| input_jpeg: configured (folder) | 128 | 1500 | 4000 | input "
          "pipeline |") in text
  assert ("| input_prepared: configured (prepared) | 128 | 5000 | 4000 | "
          "train step |") in text
