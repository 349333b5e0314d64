"""The pieces that let the LRN x pooling ablation measure what it claims:
LRN constants as config (each convention against its formula in float64),
the norm=scale control, ceil-mode pools of equal sizes, the one-GPU net, the
LRN statistic, the held-out split and the test split read once at the end.
"""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from alexnet_jax import flops
from alexnet_jax import folders
from alexnet_jax import layers
from alexnet_jax import lrn_stats
from alexnet_jax import model as model_lib
from alexnet_jax import ops
from alexnet_jax import train
from configs import ablation_cifar10
from configs import default
from configs import smoke

try:
  import torch  # noqa: F401
  HAS_TORCH = True
except ImportError:
  HAS_TORCH = False


def lrn_float64(a, *, k, n, alpha_sum, beta, groups=1):
  """b = a / (k + alpha_sum * sum of a^2 over the window)^beta, a NumPy
  loop over channels inside each group, in float64."""
  a = np.asarray(a, np.float64)
  c = a.shape[-1]
  per = c // groups
  out = np.empty_like(a)
  for i in range(c):
    g0 = i // per * per
    lo, hi = max(g0, i - n // 2), min(g0 + per - 1, i + (n - 1 - n // 2))
    s = np.sum(a[..., lo:hi + 1] ** 2, axis=-1)
    out[..., i] = a[..., i] / (k + alpha_sum * s) ** beta
  return out


# (setting, pixel_scale) -> (k, n, alpha on the window's sum, beta), by hand:
# the paper sums; cuda-convnet and Caffe divide alpha by the window size.
CONVENTIONS = [
    ("paper", 1.0, (2.0, 5, 1e-4, 0.75)),
    ("cuda_convnet", 1.0, (2.0, 5, 2e-5, 0.75)),
    ("caffe", 1.0, (1.0, 5, 2e-5, 0.75)),
    ("paper", 10.0, (2.0, 5, 1e-2, 0.75)),
    ("caffe", 10.0, (1.0, 5, 2e-3, 0.75)),
]


@pytest.mark.parametrize("setting,scale,want", CONVENTIONS)
def test_lrn_settings_resolve_and_match_the_formula_in_float64(
    setting, scale, want):
  c = layers.resolve_lrn({"setting": setting, "pixel_scale": scale})
  k, n, alpha, beta = want
  assert (c.k, c.n, c.beta) == (k, n, beta)
  assert c.alpha == pytest.approx(alpha, rel=1e-12)
  # Activations where alpha * S is of the order of k: far from a constant.
  x = np.random.default_rng(0).uniform(0, 3 * math.sqrt(k / alpha / n),
                                       (2, 3, 3, 16))
  want_y = lrn_float64(x, k=k, n=n, alpha_sum=alpha, beta=beta, groups=2)
  assert not np.allclose(want_y, x * k ** -beta, rtol=0.05)
  for fn in (ops.local_response_norm, ops.plain_local_response_norm):
    got = fn(jnp.asarray(x, jnp.float32), groups=2, k=c.k, n=c.n,
             alpha=c.alpha, beta=c.beta)
    np.testing.assert_allclose(np.asarray(got, np.float64), want_y,
                               rtol=3e-6)


def test_lrn_fields_override_the_setting_and_bad_values_are_errors():
  c = layers.resolve_lrn({"setting": "caffe", "k": 2.0, "n": 3,
                          "average": False})
  assert (c.k, c.n, c.alpha) == (2.0, 3, 1e-4)
  for bad, match in [({"setting": "tf"}, "setting"), ({"n": 0}, "n a pos"),
                     ({"alpha": -1.0}, "alpha"), ({"kk": 1}, "no field")]:
    with pytest.raises(ValueError, match=match):
      layers.resolve_lrn(bad)


def test_the_model_reads_model_lrn():
  config = smoke.get_config()
  config.model.lrn.setting = "caffe"
  config.model.lrn.pixel_scale = 4.0
  m = model_lib.from_config(config.model, rngs=nnx.Rngs(0))
  assert (m.lrn.k, m.lrn.n) == (1.0, 5)
  assert m.lrn.alpha == pytest.approx(1e-4 / 5 * 16)
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  _, acts = m(x, return_activations=True)
  a = np.asarray(acts["conv1_lrn_input"], np.float64)
  want = lrn_float64(a, k=1.0, n=5, alpha_sum=m.lrn.alpha, beta=0.75,
                     groups=2)
  np.testing.assert_allclose(np.asarray(acts["conv1"]), want, rtol=1e-5,
                             atol=1e-6)


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
@pytest.mark.parametrize("lrn", ["slices", "module"])
def test_torch_peer_uses_the_configured_lrn(lrn):
  import torch
  from experiments import torch_peer
  config = default.get_config()
  config.model.lrn.setting = "caffe"
  config.model.lrn.pixel_scale = 30.0
  net = torch_peer.torch_alexnet(config, lrn)
  norm = [m for m in net if type(m).__name__ in ("SliceLRN", "TowerLRN")][0]
  c = layers.resolve_lrn(config.model.lrn.to_dict())
  x = 3 * np.random.default_rng(1).standard_normal((2, 5, 5, 96))
  want = lrn_float64(x, k=c.k, n=c.n, alpha_sum=c.alpha, beta=c.beta,
                     groups=2)
  with torch.inference_mode():
    got = norm(torch.from_numpy(x.transpose(0, 3, 1, 2)).float())
  np.testing.assert_allclose(got.numpy().transpose(0, 2, 3, 1), want,
                             rtol=2e-5, atol=1e-6)


def cifar_model_config(**fields):
  config = ablation_cifar10.get_config()
  config.model.update(fields)
  return config.model


def forward_flops(model_config) -> int:
  m = model_lib.from_config(model_config, rngs=nnx.Rngs(0))
  m.eval()
  jaxpr = jax.make_jaxpr(lambda x: m(x))(jnp.zeros((1, 32, 32, 3)))
  return flops.count_flops(jaxpr.jaxpr)


def test_both_pools_have_equal_sizes_parameters_and_flops_in_the_sweep():
  geos, counts, fl = {}, {}, {}
  for pool in ("overlap", "nonoverlap"):
    c = cifar_model_config(pool=pool)
    geos[pool] = layers.resolve_config(c)
    m = nnx.eval_shape(lambda c=c: model_lib.from_config(c, rngs=nnx.Rngs(0)))
    counts[pool] = model_lib.count_params(m)
    fl[pool] = forward_flops(c)  # Convolutions and matmuls: not the pools.
  assert geos["overlap"].stage_sizes == (32, 16, 8, 4)
  assert geos["nonoverlap"].stage_sizes == (32, 16, 8, 4)
  assert counts["overlap"] == counts["nonoverlap"]
  assert fl["overlap"] == fl["nonoverlap"] > 0
  # Floor mode (the default) keeps the committed geometry: 32 -> 15 -> 7 -> 3.
  floor = cifar_model_config(pool="overlap", pool_mode="floor")
  assert layers.resolve_config(floor).stage_sizes == (32, 15, 7, 3)
  # The paper's 227 geometry is the same either way.
  paper = default.get_config().model
  paper.pool_mode = "ceil"
  assert layers.resolve_config(paper).stage_sizes == (55, 27, 13, 6)


def test_ceil_mode_pool_equals_a_numpy_max_over_clipped_windows():
  c = cifar_model_config(pool="overlap", width=0.125, norm="none")
  m = model_lib.from_config(c, rngs=nnx.Rngs(0))
  m.eval()
  x = jax.random.normal(jax.random.key(2), (2, 32, 32, 3))
  _, acts = m(x, return_activations=True)
  a = np.asarray(acts["conv1"])
  want = np.empty((2, 16, 16, a.shape[-1]), np.float32)
  for i in range(16):
    for j in range(16):
      want[:, i, j] = a[:, 2 * i:2 * i + 3, 2 * j:2 * j + 3].max(axis=(1, 2))
  np.testing.assert_array_equal(np.asarray(acts["pool1"]), want)


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
def test_torch_peer_follows_ceil_mode_and_the_scale_arm():
  import torch
  from experiments import torch_peer
  config = ablation_cifar10.get_config()
  config.model.norm = "scale"
  net = torch_peer.torch_alexnet(config)
  m = nnx.eval_shape(lambda: model_lib.from_config(config.model,
                                                   rngs=nnx.Rngs(0)))
  assert sum(p.numel() for p in net.parameters()) == model_lib.count_params(m)
  scales = [mod.factor for mod in net if type(mod).__name__ == "Scale"]
  assert scales == list(ablation_cifar10.NORM_SCALE)
  net.eval()
  with torch.inference_mode():
    assert tuple(net(torch.zeros(1, 3, 32, 32)).shape) == (1, 10)


def test_norm_scale_multiplies_by_fixed_factors_and_has_no_parameters():
  none = model_lib.from_config(cifar_model_config(norm="none", width=0.125),
                               rngs=nnx.Rngs(3))
  scaled = model_lib.from_config(cifar_model_config(norm="scale",
                                                    width=0.125),
                                 rngs=nnx.Rngs(3))
  assert model_lib.count_params(none) == model_lib.count_params(scaled)
  x = jax.random.normal(jax.random.key(4), (2, 32, 32, 3))
  _, a = none(x, return_activations=True)
  _, b = scaled(x, return_activations=True)
  s1 = ablation_cifar10.NORM_SCALE[0]
  np.testing.assert_allclose(np.asarray(b["conv1"]),
                             np.asarray(a["conv1"]) * s1, rtol=1e-6)
  default_scale = model_lib.AlexNet(preset="cifar", norm="scale",
                                    width=0.125, rngs=nnx.Rngs(0))
  assert default_scale.norm_scale == (2 ** -0.75,) * 2
  with pytest.raises(ValueError, match="norm_scale needs 2"):
    model_lib.AlexNet(preset="cifar", norm="scale", norm_scale=(0.5,),
                      width=0.125, rngs=nnx.Rngs(0))


def test_one_gpu_preset_is_the_papers_comparison_net():
  g = layers.resolve(preset="paper_1gpu")
  assert g.towers == 1
  assert g.channels == (48, 128, 192, 192, 256)  # Half of conv1-conv4.
  assert g.fc_features == (4096, 4096)
  m = nnx.eval_shape(lambda: model_lib.AlexNet(preset="paper_1gpu",
                                               rngs=nnx.Rngs(0)))
  want = (11 * 11 * 3 * 48 + 48 + 5 * 5 * 48 * 128 + 128
          + 3 * 3 * 128 * 192 + 192 + 3 * 3 * 192 * 192 + 192
          + 3 * 3 * 192 * 256 + 256 + 6 * 6 * 256 * 4096 + 4096
          + 4096 * 4096 + 4096 + 4096 * 1000 + 1000)
  assert model_lib.count_params(m) == want
  c = layers.resolve(preset="cifar", channels=(8, 16, 24, 24, 16),
                     fc_features=(32, 32))
  assert c.channels == (8, 16, 24, 24, 16) and c.fc_features == (32, 32)
  assert "cifar_1gpu" in ablation_cifar10.EXTRA_AXES["towers"]


def test_lrn_statistic_matches_numpy_and_ignores_masked_rows():
  c = layers.resolve_lrn({"pixel_scale": 60.0})

  class Net:
    lrn, towers, norm = c, 2, "lrn"

  rng = np.random.default_rng(5)
  a = np.maximum(rng.standard_normal((3, 4, 4, 8)), 0)
  a[2] = 100.0  # A masked row: must not count.
  mask = np.array([1.0, 1.0, 0.0])
  sums = lrn_stats.sums(Net, {"conv1_lrn_input": jnp.asarray(a, jnp.float32),
                              "conv1": jnp.zeros(1)}, jnp.asarray(mask))
  got = lrn_stats.finish({k: float(v) for k, v in sums.items()}, c.constant)
  kept = a[:2].astype(np.float64)
  # S over each channel's window of 5 inside its tower of 4 channels.
  s = np.stack([np.sum(np.square(kept[..., max(i // 4 * 4, i - 2):
                                          min(i // 4 * 4 + 3, i + 2) + 1]), -1)
                for i in range(8)], -1)
  factor = (c.k + c.alpha * s) ** -c.beta
  assert got["lrn/conv1/mean"] == pytest.approx(factor.mean(), rel=1e-5)
  assert got["lrn/conv1/spread"] == pytest.approx(
      factor.std() / factor.mean(), rel=1e-4)
  assert got["lrn/conv1/logdev"] == pytest.approx(
      np.abs(np.log(factor / c.constant)).mean(), rel=1e-5)
  assert got["lrn/conv1/spread"] > 0.05  # It normalises at this scale.


def write_pngs(root, counts: dict):
  import PIL.Image
  for c, n in counts.items():
    d = root / "train" / c
    d.mkdir(parents=True)
    for i in range(n):
      PIL.Image.new("RGB", (8, 8), (i, 0, 0)).save(d / f"{i:03d}.png")


def test_holdout_is_stratified_fixed_and_disjoint_from_training(tmp_path):
  write_pngs(tmp_path, {"a": 10, "b": 7, "c": 5})
  config = default.get_config()
  d = config.data
  d.source, d.path, d.holdout = "folder", str(tmp_path), 6
  train_paths, train_labels, names = folders.list_folder(d, "train")
  held, held_labels, _ = folders.list_folder(d, "holdout")
  # 6 x (10, 7, 5) / 22 = (2.73, 1.91, 1.36): floors (2, 1, 1), the two
  # largest remainders get one more.
  assert np.bincount(held_labels).tolist() == [3, 2, 1]
  assert not set(train_paths) & set(held)
  assert len(train_paths) + len(held) == 22
  assert np.bincount(train_labels).tolist() == [7, 5, 4]
  config.seed = 7  # The holdout does not depend on the run's seed.
  assert folders.list_folder(config.data, "holdout")[0] == held
  d.holdout = 0
  with pytest.raises(folders.DataError, match="needs data.holdout > 0"):
    folders.list_folder(d, "holdout")
  d.holdout = 22
  with pytest.raises(folders.DataError, match="data.holdout must be"):
    folders.list_folder(d, "train")


def test_the_test_split_is_read_once_after_the_last_step(tmp_path):
  config = smoke.get_config()
  config.num_train_steps = 4
  config.eval_every_steps = 2
  config.log_every_steps = 2
  config.data.test_split = "test"
  train.train_and_evaluate(config, str(tmp_path))
  rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  tests = [r for r in rows if "test_top1_error" in r]
  evals = [r for r in rows if "eval_top1_error" in r]
  assert len(tests) == 1 and tests[0]["step"] == 4
  assert rows[-1] is not None and "test_top1_error" in rows[-1]
  assert len(evals) == 2
  # The smoke network has LRN: its statistic is in every eval row.
  for r in evals:
    assert {"lrn/conv1/mean", "lrn/conv2/spread", "lrn/conv1/logdev"} <= set(r)


def test_checkpoints_from_before_the_new_model_fields_still_resume():
  from alexnet_jax import checkpoint
  from alexnet_jax import preflight
  config = smoke.get_config()
  saved = json.loads(json.dumps(config.model.to_dict()))
  for key in checkpoint.ADDED_MODEL_FIELDS:
    saved.pop(key)  # As a checkpoint written before they existed holds it.
  checkpoint.check_compatible({"model_config": saved}, config)
  config.model.lrn.pixel_scale = 63.6  # Another network: refused.
  with pytest.raises(preflight.ConfigError, match="model.lrn="):
    checkpoint.check_compatible({"model_config": saved}, config)
