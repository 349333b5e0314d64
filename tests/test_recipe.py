"""The recipe where the paper's text is silent (the authors' code): bias rate
and decay, per-layer decay; the per-pixel mean image and the lighting's
eigenvectors from the training set; the GPU check's chance helper."""

import json
import math
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorflow as tf
from flax import nnx

from alexnet_jax import compute_mean
from alexnet_jax import model as model_lib
from alexnet_jax import optim
from alexnet_jax import preflight
from alexnet_jax import preprocess
from alexnet_jax import sources
from configs import cifar10, default, smoke
from experiments import gpu_table
from tests.test_input_pipeline import config_for
from tests.test_train import optim_config

ROOT = pathlib.Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- optimizer




def layered(rng):
  """Two layers' kernels and biases, as the model's state nests them."""
  return {name: {"kernel": rng.normal(size=(3, 4)),
                 "bias": rng.normal(size=(4,))} for name in ("conv1", "fc8")}


def run_steps(tx, w, grads, rates):
  """The optimizer's parameters after each of the steps, float32."""
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), w)
  state, out = tx.init(params), []
  for g, e in zip(grads, rates):
    updates, state = tx.update(jax.tree.map(jnp.asarray, g), state, params,
                               learning_rate=e)
    params = optax.apply_updates(params, updates)
    out.append(jax.tree.map(np.asarray, params))
  return out


def hand_coupled(w, grads, rates, *, m, decay, rate):
  """v <- m v - e r (d w + g), w <- w + v in float64, for each leaf with
  its rate multiplier r = rate(layer, part) and decay d = decay(layer, part)."""
  w = {l: dict(p) for l, p in w.items()}
  v = {l: {k: np.zeros_like(x) for k, x in p.items()} for l, p in w.items()}
  out = []
  for g, e in zip(grads, rates):
    for l in w:
      for k in w[l]:
        r, d = rate(l, k), decay(l, k)
        v[l][k] = m * v[l][k] - e * r * (d * w[l][k] + g[l][k])
        w[l][k] = w[l][k] + v[l][k]
    out.append({l: dict(p) for l, p in w.items()})
  return out


def assert_trees_close(got, want):
  for l in want:
    for k in want[l]:
      np.testing.assert_allclose(got[l][k], want[l][k], rtol=2e-6,
                                 atol=1e-7, err_msg=f"{l}.{k}")


def test_defaults_are_the_authors_and_cifar10_keeps_its_measured_recipe():
  o = default.get_config().optim
  assert (o.decay_biases, o.bias_lr_scale, dict(o.layer_weight_decay)) == (
      False, 2.0, {})
  o = cifar10.get_config().optim
  assert (o.decay_biases, o.bias_lr_scale) == (True, 1.0)


def test_biases_undecayed_at_twice_the_rate_coupled_two_steps():
  """The default (coupled decay, momentum 0.9): after one and two steps,
  kernels v <- m v - e (wd w + g), biases v <- m v - 2e g; finetune's layer
  scale (fc8 at 0.5) multiplies both; the rate changes between the steps."""
  rng = np.random.default_rng(0)
  w = layered(rng)
  grads = [layered(rng), layered(rng)]
  rates = [0.01, 0.005]
  tx = optim.create_optimizer(optim_config(), {"fc8": 0.5})
  want = hand_coupled(
      w, grads, rates, m=0.9,
      decay=lambda l, k: 0.0 if k == "bias" else 5e-4,
      rate=lambda l, k: (0.5 if l == "fc8" else 1.0) * (
          2.0 if k == "bias" else 1.0))
  for got, ref in zip(run_steps(tx, w, grads, rates), want):
    assert_trees_close(got, ref)


@pytest.mark.parametrize("decay_biases", [False, True])
def test_layer_weight_decay_overrides_that_layers_decay(decay_biases):
  rng = np.random.default_rng(1)
  w = layered(rng)
  grads = [layered(rng), layered(rng)]
  rates = [0.01, 0.01]
  tx = optim.create_optimizer(optim_config(
      decay_biases=decay_biases, layer_weight_decay={"fc8": 0.05}))

  def decay(l, k):
    if k == "bias" and not decay_biases:
      return 0.0
    return 0.05 if l == "fc8" else 5e-4
  want = hand_coupled(w, grads, rates, m=0.9, decay=decay,
                      rate=lambda l, k: 2.0 if k == "bias" else 1.0)
  for got, ref in zip(run_steps(tx, w, grads, rates), want):
    assert_trees_close(got, ref)


@pytest.mark.parametrize("mode", ["decoupled", "none"])
def test_bias_rate_in_the_other_decay_modes(mode):
  """One step from zero velocity: decoupled adds -e r d w after the
  momentum; none has no decay; the bias rate r=2 and fc8's scale 0.5 apply
  to both terms."""
  rng = np.random.default_rng(2)
  w, g = layered(rng), layered(rng)
  e, wd = 0.01, 0.05
  tx = optim.create_optimizer(optim_config(
      weight_decay_mode=mode, weight_decay=wd, decay_biases=True),
      {"fc8": 0.5})
  (got,) = run_steps(tx, w, [g], [e])
  for l in w:
    for k in w[l]:
      r = (0.5 if l == "fc8" else 1.0) * (2.0 if k == "bias" else 1.0)
      d = wd if mode == "decoupled" else 0.0
      want = w[l][k] - e * r * g[l][k] - e * r * d * w[l][k]
      np.testing.assert_allclose(got[l][k], want, rtol=2e-6, atol=1e-7)


def test_batchnorm_scale_and_bias_count_as_biases():
  """In the model's state (norm=batchnorm), with zero gradients: kernels
  decay, BatchNorm's scale and bias (like conv3's bias) do not."""
  c = smoke.get_config()
  c.model.norm = "batchnorm"
  model = model_lib.from_config(c.model, rngs=nnx.Rngs(0))
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  tx = optim.create_optimizer(optim_config(weight_decay=0.5))
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params, learning_rate=0.1)
  assert set(params["bn1"]) == {"scale", "bias"}
  for layer in ("bn1", "bn2"):
    for part in ("scale", "bias"):
      assert not np.asarray(updates[layer][part]).any()
  assert not np.asarray(updates["conv3"]["bias"]).any()
  np.testing.assert_allclose(updates["conv3"]["kernel"],
                             -0.1 * 0.5 * params["conv3"]["kernel"],
                             rtol=1e-6)



def test_a_locally_connected_bias_is_a_bias():
  """11pct's local3/local4 biases hold a value per position and channel
  (ho, wo, cout): epsB (2x the rate) and no decay, as cuda-convnet gives
  every bias; their kernels decay at the layer's wc."""
  # pylint: disable=g-import-not-at-top
  from alexnet_jax import cuda_convnet as cc_model
  from configs import cuda_convnet
  c = cuda_convnet.get_config("11pct")
  model = cc_model.from_config(c.model, rngs=nnx.Rngs(0))
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  params = jax.tree.map(lambda x: x + 1.0, params)  # Nonzero biases.
  assert params["local3"]["bias"].ndim == 3
  tx = optim.create_optimizer(c.optim)
  ones = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(ones, tx.init(params), params, learning_rate=0.1)
  for layer in ("conv1", "local3", "local4", "fc10"):
    np.testing.assert_allclose(updates[layer]["bias"], -0.1 * 2.0,
                               rtol=1e-6, err_msg=layer)
    wc = c.optim.layer_weight_decay[layer]
    np.testing.assert_allclose(
        updates[layer]["kernel"],
        -0.1 * (1.0 + wc * params[layer]["kernel"]), rtol=1e-5,
        err_msg=layer)
  assert c.optim.layer_weight_decay["local3"] > 0

@pytest.mark.parametrize("field,value,text", [
    ("bias_lr_scale", -1.0, "optim.bias_lr_scale must be >= 0"),
    ("layer_weight_decay", {"fc8": -0.1}, "optim.layer_weight_decay must"),
    ("layer_weight_decay", {"conv9": 0.1}, "names conv9, not layers")])
def test_preflight_names_a_bad_recipe_field(field, value, text):
  c = smoke.get_config()
  c.optim[field] = value
  with pytest.raises(preflight.ConfigError, match=text):
    preflight.check_config(c)
  c = smoke.get_config()
  c.optim.layer_weight_decay = {"fc8": 0.004}
  preflight.check_config(c)


# ---------------------------------------------------------------- images


def write_png(path, image):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(tf.io.encode_png(image).numpy())


def folder_config(path, **data):
  """The default config on a folder, augmentation off unless asked."""
  return config_for(path, batch_size=default.get_config().batch_size, **data)


def correlated(rng, h, w):
  """Colours along a grey axis, with distinct spreads off it: the RGB
  covariance has well separated eigenvalues."""
  grey = rng.uniform(20, 200, (h, w))
  rgb = np.stack([grey + rng.normal(0, 20, (h, w)),
                  0.8 * grey + rng.normal(0, 5, (h, w)),
                  0.5 * grey + 30 + rng.normal(0, 10, (h, w))], -1)
  return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def test_statistics_and_mean_image_equal_numpy(tmp_path):
  """Mean, std, RGB covariance eigen-decomposition (pixels in [0, 1]) and
  the per-pixel mean of the central squares, against NumPy in float64."""
  rng = np.random.default_rng(3)
  images = [correlated(rng, 12, 16 if i % 2 else 12) for i in range(6)]
  for i, image in enumerate(images):  # Two classes; PNG: no loss.
    write_png(tmp_path / "train" / f"c{i % 2}" / f"{i}.png", image)
  squares = np.stack([im[:, (im.shape[1] - 12) // 2:][:, :12]
                      for im in images]).astype(np.float64)
  config = folder_config(tmp_path)
  s = compute_mean.statistics(config, image_size=8, mean_image=True)
  pixels = squares.reshape(-1, 3)
  assert s["images"] == 6
  np.testing.assert_allclose(s["mean"], pixels.mean(0), rtol=1e-6)
  np.testing.assert_allclose(s["std"], pixels.std(0), rtol=1e-5)
  np.testing.assert_allclose(s["image"], squares.mean(0), rtol=1e-6)
  assert s["image"].dtype == np.float32 and s["image"].shape == (12, 12, 3)
  cov = np.cov((pixels / 255.0).T, bias=True)
  val, vec = np.linalg.eigh(cov)
  np.testing.assert_allclose(s["eigval"], val[::-1], rtol=1e-4)
  assert (np.diff(s["eigval"]) <= 0).all()
  np.testing.assert_allclose(s["eigvec"] @ np.diag(s["eigval"]) @
                             s["eigvec"].T, cov, atol=1e-6)
  np.testing.assert_allclose(np.abs(s["eigvec"]), np.abs(vec[:, ::-1]),
                             atol=1e-4)
  # resize_size=16: every square resized to 16 first, as preprocess does.
  config.data.resize_size = 16
  s = compute_mean.statistics(config, image_size=8, mean_image=True)
  want = np.mean([tf.image.resize(q[None], [16, 16]).numpy()[0]
                  for q in squares], 0)
  np.testing.assert_allclose(s["image"], want, rtol=1e-5, atol=1e-3)


def test_program_writes_the_mean_image_and_the_eigenvectors(tmp_path):
  rng = np.random.default_rng(4)
  for i in range(4):
    write_png(tmp_path / "data" / "train" / f"c{i % 2}" / f"{i}.png",
              rng.integers(0, 256, (10, 10, 3), np.uint8))
  out, stats = tmp_path / "mean.npy", tmp_path / "stats.json"
  proc = subprocess.run(
      [sys.executable, "-m", "alexnet_jax.compute_mean",
       "--config=configs/smoke.py", "--config.data.source=folder",
       f"--config.data.path={tmp_path / 'data'}",
       "--config.data.resize_size=32", f"--mean_image={out}",
       f"--json={stats}"],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  image = np.load(out)
  assert image.shape == (32, 32, 3) and image.dtype == np.float32
  saved = json.loads(stats.read_text())
  assert saved["images"] == 4 and np.array(saved["pca_eigvec"]).shape == (3,
                                                                          3)
  assert f"--config.data.mean_image={out}" in proc.stdout
  assert "--config.data.pca_eigvec=\"((" in proc.stdout


def coordinate_folder(root, side, n=3):
  """PNGs already side x side (no resize): R = 5 y, G = 5 x, B random."""
  rng = np.random.default_rng(5)
  for i in range(n):
    y, x = np.mgrid[:side, :side]
    image = np.stack([5 * y, 5 * x, rng.integers(0, 256, (side, side))],
                     -1).astype(np.uint8)
    for split in ("train", "val"):
      write_png(root / split / f"c{i % 2}" / f"{i}.png", image)


def images_of(config, size, key):
  """The train image for `key` and the eval images, of the first file."""
  d = config.data
  data = next(iter(sorted((pathlib.Path(d.path) / "train" / "c0")
                          .iterdir()))).read_bytes()
  data = tf.constant(data)
  return (preprocess.train_image(d, data, key, size).numpy(),
          preprocess.eval_image(d, data, size, 1).numpy(),
          preprocess.eval_image(d, data, size, 10).numpy())


@pytest.mark.parametrize("pad", [0, 3])
def test_mean_image_window_follows_each_crop(tmp_path, pad):
  """With the mean image half the (identical) image, every crop minus its
  window of the mean is half the crop: the window is the crop's, mirrored
  with it, in the train (random, flipped, padded) and eval (1, 10) paths."""
  side, size = 20, 12
  coordinate_folder(tmp_path, side)
  config = folder_config(tmp_path, resize_size=side, random_crop=True,
                         flip=True, crop_padding=pad, fused_crop=False)
  first = sorted((tmp_path / "train" / "c0").iterdir())[0]
  square = tf.io.decode_png(first.read_bytes()).numpy().astype(np.float32)
  np.save(tmp_path / "mean.npy", square / 2)
  flips = set()
  for i in range(6):
    key = tf.constant([7, i], tf.int64)
    config.data.mean_image = None
    plain = images_of(config, size, key)
    config.data.mean_image = str(tmp_path / "mean.npy")
    config.data.mean = (1.0, 2.0, 3.0)  # Not used with a mean image.
    preprocess.check_options(config, size)
    centred = images_of(config, size, key)
    config.data.mean = ()
    for got, want in zip(centred, plain):
      np.testing.assert_array_equal(got, want / 2)
    flips.add(bool(preprocess.augment_params(key, 0.1)["flip"].numpy()))
  assert flips == {True, False}


def test_mean_image_window_in_the_fused_jpeg_crop(tmp_path):
  """A JPEG's crop is decoded from its window of the original: the mean
  subtracted is the window at the crop's offset in the resized square."""
  side, size = 24, 16
  rng = np.random.default_rng(6)
  image = rng.integers(0, 256, (30, 40, 3), np.uint8)
  path = tmp_path / "train" / "c0" / "x.jpg"
  path.parent.mkdir(parents=True)
  path.write_bytes(tf.io.encode_jpeg(image).numpy())
  y, x = np.mgrid[:side, :side]
  mean = np.stack([y, x, y * 0], -1).astype(np.float32)
  np.save(tmp_path / "mean.npy", mean)
  config = folder_config(tmp_path, resize_size=side, random_crop=True,
                         flip=True, fused_crop=True)
  data = tf.constant(path.read_bytes())
  for i in range(4):
    key = tf.constant([3, i], tf.int64)
    plain = preprocess.train_image(config.data, data, key, size).numpy()
    config.data.mean_image = str(tmp_path / "mean.npy")
    got = preprocess.train_image(config.data, data, key, size).numpy()
    config.data.mean_image = None
    draws = preprocess.augment_params(key, 0.1)
    oy, ox = preprocess.crop_offset(draws["u"], side, size).numpy()
    want = mean[oy:oy + size, ox:ox + size]
    want = want[:, ::-1] if draws["flip"].numpy() else want
    np.testing.assert_allclose(plain - got, want, atol=1e-4)


def test_mean_image_with_resize_size_zero_takes_its_side(tmp_path):
  """resize_size=0 (CIFAR): the mean image's side is the square's."""
  coordinate_folder(tmp_path, 16)
  np.save(tmp_path / "mean.npy", np.full((16, 16, 3), 100, np.float32))
  config = folder_config(tmp_path, mean_image=str(tmp_path / "mean.npy"))
  preprocess.check_options(config, 12)
  _, center, _ = images_of(config, 12, tf.constant([0, 0], tf.int64))
  config.data.mean_image = None
  _, plain, _ = images_of(config, 12, tf.constant([0, 0], tf.int64))
  np.testing.assert_array_equal(center, plain - 100)


def test_a_mean_image_that_does_not_fit_is_one_clear_error(tmp_path):
  np.save(tmp_path / "mean.npy", np.zeros((16, 16, 3), np.float32))
  config = folder_config(tmp_path, resize_size=20,
                         mean_image=str(tmp_path / "mean.npy"))
  with pytest.raises(sources.DataError, match="is 16x16, data.resize_size 20"):
    preprocess.check_options(config, 12)
  config.data.resize_size = 0
  with pytest.raises(sources.DataError, match="smaller than the 18 model"):
    preprocess.check_options(config, 18)
  config.data.mean_image = str(tmp_path / "missing.npy")
  with pytest.raises(sources.DataError, match="cannot read .*compute_mean"):
    preprocess.check_options(config, 12)
  config.data.mean_image = None
  config.data.pca_eigvec = ((1.0, 0.0), (0.0, 1.0))
  with pytest.raises(sources.DataError, match="data.pca_eigvec must be"):
    preprocess.check_options(config, 12)


def test_lighting_uses_the_configured_eigenvectors(tmp_path):
  coordinate_folder(tmp_path, 12)
  config = folder_config(tmp_path, resize_size=12)
  val = (0.3, 0.02, 0.001)
  vec = ((0.0, 1.0, 0.0), (0.6, 0.0, 0.8), (0.8, 0.0, -0.6))
  key = tf.constant([1, 2], tf.int64)
  plain, _, _ = images_of(config, 12, key)
  config.data.pca_lighting = True
  config.data.pca_eigval, config.data.pca_eigvec = val, vec
  lit, _, _ = images_of(config, 12, key)
  alpha = preprocess.augment_params(key, 0.1)["alpha"].numpy()
  want = 255.0 * np.array(vec) @ (alpha * np.array(val))
  np.testing.assert_allclose(lit - plain, np.broadcast_to(want, lit.shape),
                             atol=1e-3)


# ---------------------------------------------------------------- GPU check


def test_first_step_below_chance_from_a_metrics_file(tmp_path):
  """20-step rows: the 100-step mean is the mean of the last five rows;
  eval rows and a repeated (resumed) step are handled."""
  losses = [2.30] * 10 + [2.0] * 3 + [1.9] * 10
  rows = [{"step": 20 * (i + 1), "train_loss": l} for i, l in
          enumerate(losses)]
  rows.insert(5, {"step": 100, "eval_top1_error": 0.9})
  rows.insert(7, {"step": 140, "train_loss": 9.0})  # Logged again after.
  path = tmp_path / "metrics.jsonl"
  path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
  # 0.9 ln 10 = 2.072. The window ending at 260 holds 2.3 x2, 2.0 x3:
  # 2.12; at 280: 2.3, 2.0 x3, 1.9: 2.04, the first below.
  r = gpu_table.first_below_chance(path)
  assert r["step"] == 280
  assert r["threshold"] == pytest.approx(0.9 * math.log(10))
  assert gpu_table.window_means(gpu_table.train_losses(path), 100)[0] == (
      100, pytest.approx(2.30))
  assert "first fell below 2.072 (10% under ln 10) at step 280" in (
      gpu_table.chance_line(path))
  path.write_text("\n".join(json.dumps({"step": s, "train_loss": 2.3})
                            for s in (50, 100, 150)))
  assert gpu_table.first_below_chance(path)["step"] is None
  assert "did not fall below 2.072 (10% under ln 10) within 150 steps " \
         "(last 100-step mean 2.300)" in gpu_table.chance_line(path)
  # Rows every 30 steps: a window counts a row's overlap with it.
  rows = [(30, 3.0), (60, 3.0), (90, 3.0), (120, 1.0)]
  assert gpu_table.window_means(rows, 100) == [
      (120, pytest.approx((70 * 3.0 + 30 * 1.0) / 100))]
