"""cuda-convnet's CIFAR-10 nets: their operations against NumPy loops
written from cuda-convnet's kernels, their sizes against the cfg files, and
one tiny training run through the project's loop and checkpoints."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from alexnet_jax import cc_layers
from alexnet_jax import cc_ops
from alexnet_jax import cuda_convnet
from alexnet_jax import lrn_stats
from alexnet_jax import model as model_lib
from alexnet_jax import preflight
from alexnet_jax import train
from configs import cuda_convnet as cc_config


def rand(*shape, scale=1.0, seed=0):
  return (scale * np.random.default_rng(seed).normal(size=shape)).astype(
      np.float32)


# ---------------------------------------------------------------- ops


def local_oracle(x, kernel, stride, pads):
  """filterActs for unshared filters: a loop over every output."""
  x = np.pad(np.float64(x), ((0, 0), *pads, (0, 0)))
  n, (ho, wo, k, _, c, o) = x.shape[0], kernel.shape
  y = np.zeros((n, ho, wo, o))
  for h in range(ho):
    for w in range(wo):
      patch = x[:, stride * h:stride * h + k, stride * w:stride * w + k]
      y[:, h, w] = patch.reshape(n, -1) @ np.float64(
          kernel[h, w]).reshape(-1, o)
  return y


@pytest.mark.parametrize("size,k,stride,pad", [(6, 3, 1, 1), (6, 3, 2, 1),
                                               (5, 2, 2, 0)])
def test_locally_connected_matches_a_numpy_loop(size, k, stride, pad):
  out, p = cc_layers.window_out(size, k, stride, pad)
  x, kernel = rand(2, size, size, 3), rand(out, out, k, k, 3, 4, seed=1)
  y = cc_ops.locally_connected(jnp.asarray(x), jnp.asarray(kernel),
                               stride=stride, pads=(p, p))
  np.testing.assert_allclose(y, local_oracle(x, kernel, stride, (p, p)),
                             rtol=1e-5, atol=1e-5)


def test_local_with_one_filter_tiled_everywhere_is_the_convolution():
  # cuda-convnet's conv_to_local: a conv's filters copied to every module.
  x, w = rand(2, 6, 6, 4), rand(3, 3, 4, 8, seed=1)
  tiled = np.broadcast_to(w, (6, 6, 3, 3, 4, 8))
  pads = ((1, 1), (1, 1))
  conv = jax.lax.conv_general_dilated(x, w, (1, 1), pads,
                                      dimension_numbers=("NHWC", "HWIO",
                                                         "NHWC"))
  np.testing.assert_allclose(
      cc_ops.locally_connected(x, jnp.asarray(tiled), pads=pads), conv,
      rtol=1e-5, atol=1e-5)


def test_pool_sizes_round_up_as_cuda_convnet():
  # PoolLayerParser: outputsX = int(ceil((imgSize - start - sizeX) /
  # float(stride))) + 1, start 0; floor would give 15, 2 and 3 for 32, 6, 8.
  for size in (32, 24, 16, 12, 8, 7, 6):
    want = int(math.ceil((size - 3) / 2.0)) + 1
    out, (top, bottom) = cc_layers.window_out(size, 3, 2)
    assert out == want and top == 0
    assert (out - 1) * 2 + 3 == size + bottom  # The last window's overhang.
  assert [cc_layers.window_out(s, 3, 2)[0] for s in (32, 6, 8)] == [16, 3, 4]


def pool_oracle(x, window, stride, kind):
  """kLocalPool: the pixels of each window inside the image; avg divides
  by their count (regionSize)."""
  n, h, w, c = x.shape
  out = cc_layers.window_out(h, window, stride)[0]
  y = np.zeros((n, out, out, c))
  for i in range(out):
    for j in range(out):
      region = np.float64(x[:, i * stride:min(i * stride + window, h),
                            j * stride:min(j * stride + window, w)])
      y[:, i, j] = (region.max(axis=(1, 2)) if kind == "max"
                    else region.mean(axis=(1, 2)))
  return y


@pytest.mark.parametrize("size", [8, 7, 6])
@pytest.mark.parametrize("ops", ["fast", "plain"])
def test_max_and_avg_pool_at_the_border_match_a_numpy_loop(size, ops):
  x = rand(2, size, size, 3)
  _, p = cc_layers.window_out(size, 3, 2)
  np.testing.assert_allclose(cc_ops.max_pool(x, 3, 2, (p, p), ops),
                             pool_oracle(x, 3, 2, "max"), rtol=1e-6)
  np.testing.assert_allclose(cc_ops.avg_pool(x, 3, 2, (p, p)),
                             pool_oracle(x, 3, 2, "avg"), rtol=1e-5,
                             atol=1e-6)
  if size == 8:  # The last window covers 2x2 pixels: divided by 4, not 9.
    y = cc_ops.avg_pool(np.ones_like(x), 3, 2, (p, p))
    np.testing.assert_allclose(y, 1.0, rtol=1e-6)


def rnorm_oracle(x, size, scale, power, cross_map):
  """kCNorm_* (within a channel) and kFCNorm (across channels): the
  window starts size // 2 before the centre, is cut at the edges; the
  denominator is 1 + scale / size^2 (size) * sum of squares."""
  x = np.float64(x)
  n, h, w, c = x.shape
  r, y = size // 2, np.zeros_like(x)
  for i in range(h):
    for j in range(w):
      for f in range(c):
        if cross_map:
          s = (x[:, i, j, max(0, f - r):min(c, f - r + size)] ** 2).sum(-1)
          d = 1 + scale / size * s
        else:
          s = (x[:, max(0, i - r):min(h, i - r + size),
                 max(0, j - r):min(w, j - r + size), f] ** 2).sum((1, 2))
          d = 1 + scale / size ** 2 * s
        y[:, i, j, f] = x[:, i, j, f] * d ** -power
  return y


@pytest.mark.parametrize("size", [3, 4])
def test_within_channel_rnorm_matches_a_numpy_loop(size):
  x = rand(2, 5, 5, 3, scale=20.0)
  np.testing.assert_allclose(cc_ops.response_norm(x, size, 0.05, 0.75),
                             rnorm_oracle(x, size, 0.05, 0.75, False),
                             rtol=1e-5)


@pytest.mark.parametrize("size", [9, 4])
@pytest.mark.parametrize("ops", ["fast", "plain"])
def test_cross_map_rnorm_matches_a_numpy_loop(size, ops):
  x = rand(2, 3, 3, 16, scale=20.0)
  np.testing.assert_allclose(
      cc_ops.cross_map_norm(x, size, 0.01, 0.75, ops=ops),
      rnorm_oracle(x, size, 0.01, 0.75, True), rtol=1e-5)


# ---------------------------------------------------------------- nets

# Parameters by hand from the cfg files (weights + biases; a local layer
# has both per output position). Inputs: 24x24 (11pct, 13pct), 32x32.
# Pools: 24 -> 12 -> 6 and 32 -> 16 -> 8 -> 4 (ceil).
HAND_COUNTS = {
    "11pct": (5 * 5 * 3 * 64 + 64  # conv1
              + 5 * 5 * 64 * 64 + 64  # conv2
              + 6 * 6 * (3 * 3 * 64 * 64 + 64)  # local3, 6x6 positions
              + 6 * 6 * (3 * 3 * 64 * 32 + 32)  # local4
              + 6 * 6 * 32 * 10 + 10),  # fc10
    "13pct": (5 * 5 * 3 * 64 + 64 + 5 * 5 * 64 * 64 + 64
              + 6 * 6 * (3 * 3 * 64 * 32 + 32)  # local3: 32 filters
              + 6 * 6 * (3 * 3 * 32 * 32 + 32)
              + 6 * 6 * 32 * 10 + 10),
    "18pct": (5 * 5 * 3 * 32 + 32 + 5 * 5 * 32 * 32 + 32
              + 5 * 5 * 32 * 64 + 64 + 4 * 4 * 64 * 10 + 10),
    "80sec": (5 * 5 * 3 * 32 + 32 + 5 * 5 * 32 * 32 + 32
              + 5 * 5 * 32 * 64 + 64
              + 4 * 4 * 64 * 64 + 64 + 64 * 10 + 10),  # fc64, fc10
}
SHAPES = {
    "11pct": {"conv1": (24, 24, 64), "pool1": (12, 12, 64),
              "rnorm1": (12, 12, 64), "rnorm2": (12, 12, 64),
              "pool2": (6, 6, 64), "local3": (6, 6, 64),
              "local4": (6, 6, 32), "fc10": (10,)},
    "13pct": {"pool2": (6, 6, 64), "local3": (6, 6, 32),
              "local4": (6, 6, 32), "fc10": (10,)},
    "18pct": {"pool1": (16, 16, 32), "rnorm1": (16, 16, 32),
              "pool2": (8, 8, 32), "conv3": (8, 8, 64), "pool3": (4, 4, 64),
              "fc10": (10,)},
    "80sec": {"pool3": (4, 4, 64), "fc64": (64,), "fc10": (10,)},
}


def abstract_model(**kwargs):
  return nnx.eval_shape(lambda: cuda_convnet.CudaConvnet(rngs=nnx.Rngs(0),
                                                         **kwargs))


@pytest.mark.parametrize("net", sorted(cc_layers.NETS))
def test_parameter_counts_and_shapes_are_the_cfg_files(net):
  assert HAND_COUNTS == {n: cc_layers.count_params(n, s) for n, s in
                         cc_layers.INPUT_SIZES.items()}
  m = abstract_model(net=net)
  assert model_lib.count_params(m) == HAND_COUNTS[net]
  size = cc_layers.INPUT_SIZES[net]
  _, acts = jax.eval_shape(
      lambda x: cuda_convnet.CudaConvnet(net=net, rngs=nnx.Rngs(0))(
          x, return_activations=True),
      jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32))
  for name, shape in SHAPES[net].items():
    assert acts[name].shape == (2, *shape), name
  assert {r.name for r in cc_layers.NETS[net]} == set(acts)


# 11pct and 13pct (two locally connected layers each, ~20 s to compile) are
# slow here; 11pct also trains (finite gradients, a falling loss) in
# test_11pct_trains_checkpoints_evaluates_and_resumes.
@pytest.mark.parametrize("net", [
    pytest.param(n, marks=pytest.mark.slow) if n in ("11pct", "13pct") else n
    for n in sorted(cc_layers.NETS)])
def test_every_net_differentiates_to_finite_gradients(net):
  # Every op of every net under reverse mode (the average pooling and
  # within-channel rnorm windows need a literal zero as their init value).
  # Jitted: one compilation instead of one per op (eager: 5.3 s -> 1.9 s).
  m = cuda_convnet.CudaConvnet(net=net, rngs=nnx.Rngs(0))
  size = cc_layers.INPUT_SIZES[net]
  x = jnp.asarray(rand(2, size, size, 3, scale=50.0))
  grads = nnx.jit(nnx.grad(lambda m: jnp.sum(m(x) ** 2)))(m)
  leaves = jax.tree.leaves(grads)
  assert leaves and all(bool(jnp.isfinite(g).all()) for g in leaves)
  assert any(float(jnp.abs(g).max()) > 0 for g in leaves)


def test_figure_1_net_and_the_tanh_switch():
  # 18pct without rnorm: four weight layers, every relu made a tanh(b x).
  m = cuda_convnet.CudaConvnet(net="18pct", norm="none", activation="tanh",
                               tanh=(1.7159, 2 / 3), rngs=nnx.Rngs(0))
  assert cc_layers.weight_names("18pct") == ("conv1", "conv2", "conv3",
                                             "fc10")
  _, acts = nnx.jit(lambda m, x: m(x, return_activations=True))(
      m, jnp.asarray(rand(2, 32, 32, 3, scale=1e4)))
  assert "rnorm1" not in acts
  for name in ("pool1", "conv2", "conv3"):  # The cfg's relu neurons.
    assert float(jnp.abs(acts[name]).max()) <= 1.7159 + 1e-6
    assert float(acts[name].min()) < 0
  assert float(acts["conv1"].min()) < -2  # ident: no neuron there.
  x = jnp.linspace(-3, 3, 7)
  np.testing.assert_allclose(m.neuron("relu", x),
                             1.7159 * np.tanh(2 / 3 * np.asarray(x)),
                             rtol=1e-6)


def test_configs_name_the_tables_layers_and_pass_preflight():
  for net in cc_config.NETS:
    assert tuple(cc_config.WEIGHT_DECAY[net]) == cc_layers.weight_names(net)
    assert cc_config.INPUT_SIZES[net] == cc_layers.INPUT_SIZES[net]
  for arg in ("11pct", "13pct,cpu", "18pct", "80sec", "fig1"):
    preflight.check_config(cc_config.get_config(arg))
  with pytest.raises(ValueError, match="unknown config option"):
    cc_config.get_config("12pct")
  config = cc_config.get_config("11pct")
  config.finetune.freeze = ("local3",)
  preflight.check_config(config)
  config.finetune.freeze = ("fc8",)
  with pytest.raises(preflight.ConfigError, match="local3"):
    preflight.check_config(config)


def test_the_cmrnorm_statistic_is_the_factor_the_net_applies():
  """lrn_stats on 11pct's cmrnorm rows: the factor f = (1 + 0.001 / 9 *
  S)^-0.75 over each input's window of 9 channels, in float64, is what
  the forward multiplies each row's input by; its mean, spread and log
  deviation leave out masked rows; 13pct and ',nonorm' have no such rows."""
  model = cuda_convnet.CudaConvnet(net="11pct", rngs=nnx.Rngs(0))
  # Weights scaled up so that f is far from 1.
  model.conv1.kernel[...] = model.conv1.kernel[...] * 300.0
  model.conv2.kernel[...] = model.conv2.kernel[...] * 30.0
  x = jnp.asarray(rand(3, 24, 24, 3, scale=60.0))
  _, acts = model(x, return_activations=True)
  mask = jnp.asarray([1.0, 1.0, 0.0])
  got = lrn_stats.finish({k: float(v) for k, v in lrn_stats.sums(
      model, acts, mask).items()}, 1.0)
  for name, before in (("rnorm1", "pool1"), ("rnorm2", "conv2")):
    a = np.float64(acts[before])
    c = a.shape[-1]
    s = np.stack([np.sum(np.square(a[..., max(0, i - 4):i + 5]), -1)
                  for i in range(c)], -1)
    f = (1.0 + 0.001 / 9 * s) ** -0.75
    np.testing.assert_allclose(acts[name], a * f, rtol=2e-4, atol=1e-6)
    f = f[:2]  # The unmasked rows.
    assert got[f"lrn/{name}/mean"] == pytest.approx(f.mean(), rel=1e-5)
    assert got[f"lrn/{name}/spread"] == pytest.approx(f.std() / f.mean(),
                                                      rel=1e-3)
    assert got[f"lrn/{name}/logdev"] == pytest.approx(
        np.abs(np.log(f)).mean(), rel=1e-4)
    assert got[f"lrn/{name}/spread"] > 0.05
  for net, norm in (("13pct", "rnorm"), ("11pct", "none")):
    assert not lrn_stats.layers_of(cuda_convnet.CudaConvnet(
        net=net, norm=norm, rngs=nnx.Rngs(0)))


def test_two_tower_mesh_is_refused_in_one_line():
  config = cc_config.get_config("11pct")
  config.mesh.model = 2
  with pytest.raises(preflight.ConfigError,
                     match="model.family=cuda_convnet runs data parallel"):
    preflight.check_mesh(config)


def test_24_crops_of_32_images_and_the_multiview_test():
  # CroppedCIFARDataProvider: any of the 9x9 offsets, mirrored half the
  # time; the centre (4, 4) for the test, or --multiview-test's corners,
  # centre and their mirrors (data.eval_crops=10).
  from alexnet_jax import preprocess  # pylint: disable=import-outside-toplevel
  from alexnet_jax.sources import lazy_tf  # pylint: disable=import-outside-toplevel
  tf = lazy_tf()
  image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), np.uint8)
  data = tf.io.encode_png(image)
  d = cc_config.get_config("11pct").data
  mean = np.asarray(d.mean, np.float32)
  want = [image[y:y + 24, x:x + 24] - mean for y in range(9)
          for x in range(9)]
  want += [w[:, ::-1] for w in want]
  for seed in range(4):
    crop = preprocess.train_image(d, data, tf.constant([seed, 7], tf.int64),
                                  24).numpy()
    assert any(np.array_equal(crop, w) for w in want)
  np.testing.assert_array_equal(preprocess.eval_image(d, data, 24, 1),
                                image[4:28, 4:28] - mean)
  views = preprocess.eval_image(d, data, 24, 10).numpy()
  for k, (y, x) in enumerate([(0, 0), (0, 8), (8, 0), (8, 8), (4, 4)]):
    np.testing.assert_array_equal(views[k], image[y:y + 24, x:x + 24] - mean)
    np.testing.assert_array_equal(views[k + 5], views[k][:, ::-1])


# ---------------------------------------------------------------- training


def tiny_config():
  config = cc_config.get_config("11pct")
  config.batch_size = 8
  config.num_train_steps = 3
  config.log_every_steps = 1
  config.eval_every_steps = 3
  d = config.data
  d.source = "synthetic"
  d.num_train_examples = 16
  d.num_eval_examples = 12  # Not a multiple of 8: the last batch padded.
  return config


def test_11pct_trains_checkpoints_evaluates_and_resumes(tmp_path):
  config = tiny_config()
  metrics = train.train_and_evaluate(config, str(tmp_path))
  assert metrics["eval_examples"] == 12
  assert np.isfinite(metrics["train_loss"])
  # --mode=eval: the checkpoint restores to the same evaluation.
  again = train.evaluate_checkpoint(config, str(tmp_path))
  assert again["step"] == 3
  assert again["eval_loss"] == pytest.approx(metrics["eval_loss"], rel=1e-6)
  config.num_train_steps = 4  # Resumes at step 3.
  resumed = train.train_and_evaluate(config, str(tmp_path))
  assert np.isfinite(resumed["eval_loss"])
  rows = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(r)["step"] for r in rows if "train_loss" in r] == [
      1, 2, 3, 4]
