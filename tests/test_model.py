"""The model against the paper's numbers and independent oracles."""

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from alexnet_jax import layers
from alexnet_jax import model as model_lib
from alexnet_jax import ops
from alexnet_jax.model import AlexNet, count_params
from alexnet_jax.ops import local_response_norm

HAS_TORCH = importlib.util.find_spec("torch") is not None


def abstract(**kwargs):
  """The model with shapes only: no weights drawn (quick for 60M params)."""
  return nnx.eval_shape(lambda: AlexNet(rngs=nnx.Rngs(0), **kwargs))


def stage_shapes(size, batch=2, **kwargs):
  """Each stage's output shape, traced abstractly (no weights drawn)."""
  def forward():
    model = AlexNet(rngs=nnx.Rngs(0), **kwargs)
    model.eval()
    x = jnp.zeros((batch, size, size, 3))
    return model(x, return_activations=True)[1]
  # LRN's inputs (conv1/conv2 after the ReLU, kept for lrn_stats) are the
  # same shapes as those layers' outputs: left out of the stages.
  return {k: v.shape[1:] for k, v in jax.eval_shape(forward).items()
          if not k.endswith("_lrn_input")}


# The model's forward pass with its activations, jitted: one compilation
# instead of one per op (a width-0.5 forward, eager: 3.2 s -> 0.5 s).
# Dropout's and BatchNorm's state (RNG counts, running statistics) update
# through nnx.jit as they do eagerly.
forward = nnx.jit(lambda m, x: m(x, return_activations=True))


def test_parameter_counts():
  assert count_params(abstract()) == 60_965_224
  tv = abstract(preset="torchvision")
  assert tv.towers == 1 and tv.norm == "none"
  assert count_params(tv) == 61_100_840


PAPER_STAGES = {
    "conv1": (55, 55, 96), "pool1": (27, 27, 96), "conv2": (27, 27, 256),
    "pool2": (13, 13, 256), "conv3": (13, 13, 384), "conv4": (13, 13, 384),
    "conv5": (13, 13, 256), "pool5": (6, 6, 256), "fc6": (4096,),
    "fc7": (4096,), "fc8": (1000,)}


@pytest.mark.parametrize("pool", ["overlap", "nonoverlap"])
@pytest.mark.parametrize("image_size", [227, 224])
def test_stage_shapes(pool, image_size):
  assert stage_shapes(image_size, pool=pool,
                      image_size=image_size) == PAPER_STAGES


def test_224_input_pads_bottom_right_only():
  # cuda-convnet's rounding up: 224 + 3 rows/cols at the far edge = 227.
  assert layers.conv1_pads(224, 11, 4, -1) == ((0, 3), (0, 3))
  assert layers.conv1_pads(227, 11, 4, -1) == ((0, 0), (0, 0))
  assert layers.conv1_pads(224, 11, 4, 2) == ((2, 2), (2, 2))


def test_cifar_preset_shapes_and_num_classes():
  shapes = stage_shapes(32, preset="cifar", num_classes=10)
  assert shapes["conv1"] == (32, 32, 96)
  assert shapes["pool5"] == (3, 3, 256)
  assert shapes["fc8"] == (10,)


def test_width_scales_every_layer_in_multiples_of_towers():
  shapes = stage_shapes(227, width=0.5, num_classes=7)
  assert [shapes[k][-1] for k in ("conv1", "conv2", "conv3", "conv4", "conv5",
                                  "fc6", "fc7", "fc8")] == [
                                      48, 128, 192, 192, 128, 2048, 2048, 7]


def test_bad_switches_raise_naming_the_field():
  for kwargs, field in [(dict(norm="layer"), "model.norm"),
                        (dict(pool="avg"), "model.pool"),
                        (dict(towers=3), "model.towers"),
                        (dict(activation="gelu"), "model.activation"),
                        (dict(preset="vgg"), "model.preset"),
                        (dict(init="xavier"), "model.init"),
                        (dict(image_size=40), "image_size")]:
    with pytest.raises(ValueError, match=field):
      AlexNet(rngs=nnx.Rngs(0), **kwargs)


# ---------------------------------------------------------------- LRN


def lrn_numpy(a, k=2.0, n=5, alpha=1e-4, beta=0.75):
  """The paper's formula, channel by channel, in float64 (NHWC input)."""
  a = np.asarray(a, np.float64)
  c = a.shape[-1]
  out = np.empty_like(a)
  for i in range(c):
    lo, hi = max(0, i - n // 2), min(c - 1, i + n // 2)
    s = np.sum(a[..., lo:hi + 1] ** 2, axis=-1)
    out[..., i] = a[..., i] / (k + alpha * s) ** beta
  return out


def test_lrn_matches_paper_formula_including_channel_edges():
  # Large activations so that the normalizer is far from k**beta.
  x = jax.random.uniform(jax.random.key(0), (2, 3, 4, 11), minval=0,
                         maxval=80.0)
  got = np.asarray(local_response_norm(x))
  want = lrn_numpy(x)
  np.testing.assert_allclose(got, want, rtol=2e-6)
  assert not np.allclose(want, np.asarray(x) / 2.0 ** 0.75, rtol=1e-3)


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
def test_lrn_matches_torch():
  import torch
  x = np.array(jax.random.uniform(jax.random.key(1), (2, 5, 5, 16),
                                    maxval=60.0))
  lrn = torch.nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)
  want = lrn(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
  np.testing.assert_allclose(np.asarray(local_response_norm(jnp.asarray(x))),
                             want.numpy(), rtol=2e-6)


def test_lrn_stays_inside_each_tower():
  x = jax.random.uniform(jax.random.key(2), (1, 2, 2, 96), maxval=80.0)
  bumped = x.at[..., 48].multiply(3.0)  # First channel of tower 2.
  two = lambda v: local_response_norm(v, groups=2)
  np.testing.assert_array_equal(two(x)[..., :48], two(bumped)[..., :48])
  # Per tower it equals the formula on each 48-channel half.
  np.testing.assert_allclose(
      two(x), np.concatenate([lrn_numpy(x[..., :48]), lrn_numpy(x[..., 48:])],
                             -1), rtol=2e-6)
  # One tower: channel 47 does see channel 48.
  one = lambda v: local_response_norm(v, groups=1)
  assert not np.array_equal(one(x)[..., 47], one(bumped)[..., 47])


def test_lrn_gradient_matches_direct_formulation():
  # Shifted slices and a plain power instead of reduce_window and rsqrt.
  direct = ops.plain_local_response_norm
  x = jax.random.uniform(jax.random.key(3), (2, 3, 3, 12), maxval=50.0)
  w = jax.random.normal(jax.random.key(4), x.shape)
  g = jax.grad(lambda v: jnp.sum(w * local_response_norm(v)))(x)
  g_ref = jax.grad(lambda v: jnp.sum(w * direct(v)))(x)
  np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------- towers


def test_grouped_conv_is_two_independent_convs():
  kx, kk = jax.random.split(jax.random.key(5))
  x = jax.random.normal(kx, (2, 9, 9, 8))
  kernel = jax.random.normal(kk, (3, 3, 4, 6))  # 2 towers: 4 in, 3 out each.
  got = ops.conv(x, kernel, padding=((1, 1), (1, 1)), groups=2)
  dn = ("NHWC", "HWIO", "NHWC")
  halves = [lax.conv_general_dilated(x[..., 4 * t:4 * t + 4],
                                     kernel[..., 3 * t:3 * t + 3], (1, 1),
                                     ((1, 1), (1, 1)), dimension_numbers=dn)
            for t in range(2)]
  np.testing.assert_array_equal(got, jnp.concatenate(halves, -1))
  grouped = ops.plain_conv(x, kernel, padding=((1, 1), (1, 1)), groups=2)
  np.testing.assert_allclose(got, grouped, rtol=1e-5, atol=1e-5)


def test_grouped_layers_of_the_model_do_not_mix_towers():
  full = abstract()  # The paper's shapes (no weights drawn).
  assert full.conv2.kernel.shape == (5, 5, 48, 256)
  assert full.conv4.kernel.shape == (3, 3, 192, 384)
  assert full.conv5.kernel.shape == (3, 3, 192, 256)
  assert full.conv3.kernel.shape == (3, 3, 256, 384)  # Full: sees both.
  # The same layers at a quarter width, with weights: 24 -> 64 channels.
  model = AlexNet(preset="cifar", width=0.25, rngs=nnx.Rngs(0))
  assert model.conv2.kernel.shape == (5, 5, 12, 64)
  x = jax.random.normal(jax.random.key(6), (1, 5, 5, 24))
  bumped = x.at[..., 15].add(10.0)  # A tower-2 input channel.
  y, y2 = model.conv2(x), model.conv2(bumped)
  np.testing.assert_array_equal(y[..., :32], y2[..., :32])
  assert not np.allclose(y[..., 32:], y2[..., 32:])


# ---------------------------------------------------------------- init, modes


def test_paper_initialization():
  model = AlexNet(rngs=nnx.Rngs(0))
  for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7",
               "fc8"):
    layer = getattr(model, name)
    k = np.asarray(layer.kernel[...])
    assert abs(k.std() - 0.01) < 0.0005, name
    assert abs(k.mean()) < 0.001, name
    want_bias = 1.0 if name in ("conv2", "conv4", "conv5", "fc6", "fc7") else 0
    np.testing.assert_array_equal(layer.bias[...], want_bias)


def test_caffe_initialization_is_bvlc_alexnets():
  model = AlexNet(init="caffe", width=0.5, rngs=nnx.Rngs(0))
  for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7",
               "fc8"):
    layer = getattr(model, name)
    k = np.asarray(layer.kernel[...])
    want_std = 0.005 if name in ("fc6", "fc7") else 0.01
    assert abs(k.std() - want_std) < 0.05 * want_std, name
    want_bias = 0.1 if name in ("conv2", "conv4", "conv5", "fc6", "fc7") else 0
    np.testing.assert_allclose(layer.bias[...], want_bias, rtol=1e-7)


def test_fc8_init_std_overrides_only_fc8():
  base = AlexNet(preset="cifar", width=0.25, num_classes=10, init="he",
                 rngs=nnx.Rngs(0))
  small = AlexNet(preset="cifar", width=0.25, num_classes=10, init="he",
                  fc8_init_std=0.01, rngs=nnx.Rngs(0))
  k = np.asarray(small.fc8.kernel[...])
  assert abs(k.std() - 0.01) < 0.001
  np.testing.assert_array_equal(small.fc7.kernel[...], base.fc7.kernel[...])
  with pytest.raises(ValueError, match="fc8_init_std"):
    AlexNet(fc8_init_std=-1.0, rngs=nnx.Rngs(0))


def test_he_initialization_scales_with_fan_in():
  model = AlexNet(init="he", rngs=nnx.Rngs(0))
  k = np.asarray(model.conv2.kernel[...])
  assert abs(k.std() - (2 / (5 * 5 * 48)) ** 0.5) < 0.001
  np.testing.assert_array_equal(model.fc6.bias[...], 0.0)


def test_dropout_only_in_train_mode():
  model = AlexNet(preset="cifar", width=0.25, num_classes=10, init="he",
                  rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(7), (4, 32, 32, 3))
  model.eval()
  np.testing.assert_array_equal(forward(model, x)[0], forward(model, x)[0])
  model.train()
  _, a1 = forward(model, x)
  _, a2 = forward(model, x)
  frac_zero = float(jnp.mean(a1["fc6"] == 0))
  assert 0.4 < frac_zero < 0.9  # ReLU zeros plus half dropped.
  assert not np.array_equal(a1["fc7"], a2["fc7"])  # A fresh mask per call.


def test_dropout_keeps_half_and_scales_them_by_two():
  """Inverted dropout: E[train output] = eval output, as the paper's 0.5x
  at test time (and torch.nn.Dropout) give."""
  model = AlexNet(preset="cifar", width=0.5, num_classes=10, init="he",
                  rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(7), (8, 32, 32, 3))
  model.eval()
  _, plain = forward(model, x)
  model.train()
  _, dropped = forward(model, x)
  a, b = np.asarray(plain["fc6"]), np.asarray(dropped["fc6"])
  kept = b != 0
  np.testing.assert_allclose(b[kept], 2 * a[kept], rtol=1e-5)
  assert 0.45 < kept.sum() / (a != 0).sum() < 0.55


@pytest.mark.parametrize("norm", ["none", "batchnorm"])
def test_norm_variants_build_and_run(norm):
  model = AlexNet(preset="cifar", width=0.25, num_classes=10, norm=norm,
                  rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(8), (4, 32, 32, 3))
  model.train()
  y, _ = forward(model, x)
  assert y.shape == (4, 10) and bool(jnp.all(jnp.isfinite(y)))
  if norm == "batchnorm":
    assert not hasattr(model, "bn3")
    assert model.conv1.bias is None  # BatchNorm's shift replaces it.
    assert not np.allclose(model.bn1.mean[...], 0.0)  # Running stats moved.
  model.eval()
  assert forward(model, x)[0].shape == (4, 10)


def test_one_tower_and_tanh_variants():
  model = abstract(towers=1, activation="tanh")
  assert model.conv2.kernel.shape == (5, 5, 96, 256)
  # One tower with full conv2/4/5: more parameters than the grouped paper net.
  assert count_params(model) == 60_965_224 + 5 * 5 * 48 * 256 + 3 * 3 * 192 * (
      384 + 256)
  assert stage_shapes(227, batch=1, towers=1, activation="tanh")["fc8"] == (
      1000,)
  small = AlexNet(preset="cifar", width=0.25, towers=1, activation="tanh",
                  num_classes=10, rngs=nnx.Rngs(0))
  small.eval()
  y, _ = forward(small, jnp.ones((2, 32, 32, 3)))
  assert y.shape == (2, 10) and bool(jnp.all(jnp.isfinite(y)))


def test_half_precision_computes_in_bfloat16_with_float32_params():
  model = AlexNet(preset="cifar", width=0.25, num_classes=10,
                  dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  model.eval()
  y, acts = forward(model, jnp.ones((2, 32, 32, 3)))
  assert acts["conv3"].dtype == jnp.bfloat16
  assert y.dtype == jnp.float32
  assert model.conv1.kernel[...].dtype == jnp.float32
