"""The fast formulations in ops.py against the plain ones (its references).

References: the LRN formula with shifted slices and a plain power,
pooling with `lax.reduce_window` (XLA's select-and-scatter gradient), and
grouped convolution with `feature_group_count`. Where the tolerance matters
the reference runs in float64 (`jax.enable_x64`). Tolerances:
- float64 fast path vs float64 reference: rtol 1e-12 (same mathematics).
- float32 fast path vs float64 reference: rtol 2e-6 on outputs, 1e-5 on
  gradients (a few float32 ulps through the window sums).
- max pooling: outputs identical; gradients go to the same elements, and
  equal up to the order in which overlapping windows' gradients are summed.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from alexnet_jax import model as model_lib
from alexnet_jax import ops
from alexnet_jax.ops import local_response_norm, max_pool
from tests import cifar_data

lrn_reference = ops.plain_local_response_norm
pool_reference = ops.plain_max_pool
conv_reference = ops.plain_conv


def value_and_vjp(f, x, g):
  y, vjp = jax.vjp(jax.jit(f), x)
  return y, jax.jit(vjp)(g)[0]


# ---------------------------------------------------------------- LRN

LRN_CASES = [dict(groups=2), dict(groups=1), dict(groups=2, n=3, beta=0.6),
             dict(groups=4, k=1.0, alpha=2e-3, beta=0.75)]


@pytest.mark.parametrize("kw", LRN_CASES)
def test_lrn_float64_is_the_formula(kw):
  with jax.enable_x64(True):
    x = jax.random.uniform(jax.random.key(0), (2, 5, 4, 24), jnp.float64,
                           maxval=80.0)
    g = jax.random.normal(jax.random.key(1), x.shape, jnp.float64)
    y, dx = value_and_vjp(lambda v: local_response_norm(v, **kw), x, g)
    y_ref, dx_ref = value_and_vjp(lambda v: lrn_reference(v, **kw), x, g)
    assert y.dtype == dx.dtype == jnp.float64
    np.testing.assert_allclose(y, y_ref, rtol=1e-12)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("kw", LRN_CASES)
def test_lrn_float32_against_float64_reference(kw):
  x = jax.random.uniform(jax.random.key(2), (2, 7, 6, 48), maxval=80.0)
  g = jax.random.normal(jax.random.key(3), x.shape)
  y, dx = value_and_vjp(lambda v: local_response_norm(v, **kw), x, g)
  with jax.enable_x64(True):
    y_ref, dx_ref = value_and_vjp(
        lambda v: lrn_reference(v, **kw), jnp.asarray(x, jnp.float64),
        jnp.asarray(g, jnp.float64))
  np.testing.assert_allclose(y, y_ref, rtol=2e-6)
  np.testing.assert_allclose(dx, dx_ref, rtol=1e-5,
                             atol=1e-6 * np.abs(dx_ref).max())


def test_lrn_forward_mode_and_second_order():
  # The hand-written derivative is a JVP, so jvp and hessians work too.
  with jax.enable_x64(True):
    x = jax.random.uniform(jax.random.key(4), (1, 2, 2, 8), jnp.float64,
                           maxval=60.0)
    t = jax.random.normal(jax.random.key(5), x.shape, jnp.float64)
    f = lambda v: local_response_norm(v, groups=2)
    ref = lambda v: lrn_reference(v, groups=2)
    np.testing.assert_allclose(jax.jvp(f, (x,), (t,))[1],
                               jax.jvp(ref, (x,), (t,))[1], rtol=1e-12)
    h = jax.hessian(lambda v: jnp.sum(f(v) ** 2))(x)
    h_ref = jax.hessian(lambda v: jnp.sum(ref(v) ** 2))(x)
    np.testing.assert_allclose(h, h_ref, rtol=1e-10, atol=1e-14)


def test_lrn_keeps_bfloat16():
  x = jnp.ones((1, 2, 2, 8), jnp.bfloat16) * 30
  y = local_response_norm(x, groups=2)
  assert y.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(y, np.float32),
                             lrn_reference(x.astype(jnp.float32), groups=2),
                             rtol=2e-2)


# ---------------------------------------------------------------- pooling

POOL_CASES = [((2, 55, 55, 8), 3, 2), ((2, 27, 27, 6), 3, 2),
              ((2, 13, 13, 4), 3, 2), ((2, 14, 15, 3), 2, 2),
              ((1, 9, 10, 2), 3, 3), ((1, 8, 8, 2), 2, 1),
              ((1, 3, 3, 2), 3, 2)]


@pytest.mark.parametrize("shape,window,stride", POOL_CASES)
def test_max_pool_matches_reduce_window(shape, window, stride):
  # Rounded ReLU outputs: many ties (zeros above all) in every window.
  x = jnp.round(3 * jax.nn.relu(jax.random.normal(jax.random.key(6), shape)))
  y_ref = pool_reference(x, window, stride)
  g = jax.random.normal(jax.random.key(7), y_ref.shape)
  y, dx = value_and_vjp(lambda v: max_pool(v, window, stride), x, g)
  _, dx_ref = value_and_vjp(lambda v: pool_reference(v, window, stride), x,
                            g)
  np.testing.assert_array_equal(y, y_ref)
  # Ties go to the same element (the first maximum in row-major order).
  np.testing.assert_array_equal(dx != 0, dx_ref != 0)
  np.testing.assert_allclose(dx, dx_ref, rtol=1e-6, atol=1e-6)


def test_max_pool_gradient_float64_exact():
  with jax.enable_x64(True):
    x = jax.random.normal(jax.random.key(8), (2, 27, 27, 4), jnp.float64)
    g = jax.random.normal(jax.random.key(9), (2, 13, 13, 4), jnp.float64)
    _, dx = value_and_vjp(lambda v: max_pool(v, 3, 2), x, g)
    _, dx_ref = value_and_vjp(lambda v: pool_reference(v, 3, 2), x, g)
    assert dx.dtype == jnp.float64
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-14, atol=1e-15)


def test_max_pool_nonfinite_and_bfloat16():
  x = jnp.full((1, 5, 5, 2), -jnp.inf).at[0, 1, 1, 0].set(1.0)
  np.testing.assert_array_equal(max_pool(x, 3, 2), pool_reference(x, 3, 2))
  xb = jax.random.normal(jax.random.key(10), (1, 7, 7, 3)).astype(
      jnp.bfloat16)
  y = max_pool(xb, 3, 2)
  assert y.dtype == jnp.bfloat16
  np.testing.assert_array_equal(y, pool_reference(xb, 3, 2))


# ---------------------------------------------------------------- bias


@pytest.mark.parametrize("shape", [(3, 7, 5, 6), (4, 10), (2, 3, 4, 5, 6)])
def test_bias_gradient_is_the_plain_sum_float64(shape):
  with jax.enable_x64(True):
    y = jax.random.normal(jax.random.key(13), shape, jnp.float64)
    b = jax.random.normal(jax.random.key(14), shape[-1:], jnp.float64)
    g = jax.random.normal(jax.random.key(15), shape, jnp.float64)
    out, vjp = jax.vjp(jax.jit(ops.add_bias), y, b)
    out_ref, vjp_ref = jax.vjp(lambda y, b: y + b, y, b)
    (dy, db), (dy_ref, db_ref) = vjp(g), vjp_ref(g)
    assert db.dtype == jnp.float64
    np.testing.assert_array_equal(out, out_ref)
    np.testing.assert_array_equal(dy, dy_ref)
    np.testing.assert_allclose(db, db_ref, rtol=1e-13)


def test_bias_add_refuses_mixed_dtypes():
  with pytest.raises(TypeError, match="bfloat16"):
    ops.add_bias(jnp.ones((2, 3), jnp.bfloat16), jnp.ones(3))


# ---------------------------------------------------------------- conv


@pytest.mark.parametrize("groups,stride,k", [(2, 1, 3), (2, 1, 5), (1, 4, 11),
                                             (4, 2, 3)])
def test_conv_against_feature_group_count_float64(groups, stride, k):
  with jax.enable_x64(True):
    kx, kk, kg = jax.random.split(jax.random.key(11), 3)
    x = jax.random.normal(kx, (2, 23, 23, 8), jnp.float64)
    kernel = jax.random.normal(kk, (k, k, 8 // groups, 12), jnp.float64)
    pad = ((k // 2, k // 2),) * 2
    f = lambda x, w: ops.conv(x, w, stride=stride, padding=pad,
                                    groups=groups)
    ref = lambda x, w: conv_reference(x, w, stride=stride, padding=pad,
                                      groups=groups)
    y, vjp = jax.vjp(jax.jit(f), x, kernel)
    y_ref, vjp_ref = jax.vjp(jax.jit(ref), x, kernel)
    g = jax.random.normal(kg, y.shape, jnp.float64)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    for a, b in zip(vjp(g), vjp_ref(g)):
      np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-11)


# ---------------------------------------------------------------- the model


def real_batch(tmp_path, n: int = 4) -> np.ndarray:
  """n CIFAR-10 training images, 0-255 minus the mean (the paper's scale)."""
  from configs import cifar10  # pylint: disable=g-import-not-at-top
  from alexnet_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  if not cifar_data.available():
    pytest.skip("CIFAR-10 archive not found")
  config = cifar10.get_config()
  config.data.path = str(cifar_data.subset(
      tmp_path / "cifar10", classes=("cat", "ship"), train_per_class=n,
      test_per_class=0))
  config.data.std = ()
  config.data.holdout = 0  # n images: none to hold out.
  config.batch_size = n
  _, batches = input_pipeline.train_iterator(config, image_size=32)
  return next(batches)["image"]


@pytest.mark.parametrize("images,init", [("random", "he"),
                                         ("cifar", "paper")])
def test_model_gradients_match_reference_formulations(tmp_path, images,
                                                      init):
  """The whole train loss: model.ops=fast vs model.ops=plain, in float64.

  Also on real images at the paper's scale and init (ReLU zeros, ties in
  the pools, LRN on 0-255 inputs), where a stalled run could have hidden a
  wrong gradient.
  """
  x = (real_batch(tmp_path) if images == "cifar" else
       30 * np.asarray(jax.random.normal(jax.random.key(12), (4, 32, 32, 3))))
  with jax.enable_x64(True):
    model = model_lib.AlexNet(preset="cifar", width=0.25, num_classes=10,
                              dropout_rate=0.0, init=init,
                              dtype=jnp.float64, rngs=nnx.Rngs(0))
    model.eval()
    graph, params, rest = nnx.split(model, nnx.Param, ...)
    x = jnp.asarray(x, jnp.float64)
    labels = jnp.arange(4) % 10

    def loss(params):
      logits = nnx.merge(graph, params, rest)(x)
      return jnp.mean(-jax.nn.log_softmax(logits)[jnp.arange(4), labels])

    fast = jax.jit(jax.value_and_grad(loss))(params)
    # The same parameters in the plain formulation (model.ops=plain).
    plain = model_lib.AlexNet(preset="cifar", width=0.25, num_classes=10,
                              dropout_rate=0.0, init=init, ops="plain",
                              dtype=jnp.float64, rngs=nnx.Rngs(0))
    plain.eval()
    graph, _, _ = nnx.split(plain, nnx.Param, ...)  # `loss` reads `graph`.
    ref = jax.jit(jax.value_and_grad(loss))(params)
  fast, ref = jax.tree.map(np.asarray, (fast, ref))
  np.testing.assert_allclose(fast[0], ref[0], rtol=1e-6)
  for a, b in zip(jax.tree.leaves(fast[1]), jax.tree.leaves(ref[1])):
    np.testing.assert_allclose(a, b, rtol=1e-6,
                               atol=1e-6 * np.abs(b).max() + 1e-12)


# ---------------------------------------------------------------- model.ops


def test_ops_auto_is_fast_on_cpu_and_plain_on_other_backends():
  assert ops.select("auto", backend="cpu") is ops.FAST
  for backend in ("gpu", "tpu"):  # Plain, with per-tower convolutions.
    chosen = ops.select("auto", backend=backend)
    assert chosen is ops.ACCELERATOR and chosen.conv is ops.FAST.conv
    assert chosen._replace(conv=ops.plain_conv) == ops.PLAIN
  assert ops.select("fast", backend="gpu") is ops.FAST
  assert ops.select("plain", backend="cpu") is ops.PLAIN
  with pytest.raises(ValueError, match="model.ops must be one of"):
    ops.select("fastest")


def train_losses(workdir):
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text()
          .splitlines()]
  return {r["step"]: r["train_loss"] for r in rows if "train_loss" in r}


def test_ops_plain_and_fast_train_alike_and_share_checkpoints(tmp_path):
  """The smoke config's losses with model.ops=fast and =plain, and a run
  started with one resumed with the other (ops is not part of the state)."""
  from alexnet_jax import train  # pylint: disable=g-import-not-at-top
  from configs import smoke  # pylint: disable=g-import-not-at-top

  def config(ops_mode, steps):
    c = smoke.get_config()
    c.num_train_steps, c.log_every_steps = steps, 1
    c.data.num_eval_examples = 32
    c.model.ops = ops_mode
    return c

  train.train_and_evaluate(config("fast", 4), str(tmp_path / "fast"))
  train.train_and_evaluate(config("plain", 2), str(tmp_path / "mixed"))
  plain = train_losses(tmp_path / "mixed")
  train.train_and_evaluate(config("fast", 4), str(tmp_path / "mixed"))
  fast, mixed = train_losses(tmp_path / "fast"), train_losses(
      tmp_path / "mixed")
  assert sorted(fast) == sorted(mixed) == [1, 2, 3, 4]
  for step in (1, 2):
    np.testing.assert_allclose(plain[step], fast[step], rtol=1e-5)
  for step in (3, 4):
    np.testing.assert_allclose(mixed[step], fast[step], rtol=1e-4)


# ---------------------------------------------------------------- flags


def test_import_sets_cpu_flags_only_when_unset():
  code = "import os, alexnet_jax; print(os.environ.get('XLA_FLAGS'))"
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  out = subprocess.run([sys.executable, "-c", code], env=env,
                       capture_output=True, text=True, check=True).stdout
  assert out.strip() == "--xla_cpu_experimental_ynn_fusion_type="
  env["XLA_FLAGS"] = "--xla_dump_to=/tmp/x"
  out = subprocess.run([sys.executable, "-c", code], env=env,
                       capture_output=True, text=True, check=True).stdout
  assert out.strip() == "--xla_dump_to=/tmp/x"
