"""Half precision per device, and float16's dynamic loss scale (precision.py).

The float16 path runs on the CPU here (XLA computes float16 there, slowly):
an overflow skips the step and halves the scale, finite steps double it,
the scale is checkpointed, and a short float16 run learns.
"""

import functools
import json
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from alexnet_jax import checkpoint as checkpoint_lib
from alexnet_jax import model as model_lib
from alexnet_jax import ops
from alexnet_jax import precision
from alexnet_jax import preflight
from alexnet_jax import progress
from alexnet_jax import sharding
from alexnet_jax import train
from configs import smoke


@pytest.mark.parametrize("platform,kind,cc,dtype", [
    ("tpu", "TPU v4", None, "bfloat16"),
    ("cpu", "cpu", None, "bfloat16"),
    ("gpu", "NVIDIA A100-SXM4-40GB", "8.0", "bfloat16"),
    ("gpu", "NVIDIA H100 80GB HBM3", "9.0", "bfloat16"),
    ("gpu", "NVIDIA GeForce RTX 3090", "8.6", "bfloat16"),
    ("gpu", "Tesla T4", "7.5", "float16"),
    ("gpu", "Tesla V100-SXM2-16GB", "7.0", "float16"),
    ("gpu", "Tesla P100-PCIE-16GB", "6.0", "float16"),
    ("gpu", "Tesla P4", "6.1", "float32"),
    ("gpu", "Tesla K80", "3.7", "float32"),
    ("gpu", "AMD Instinct MI250X", None, "bfloat16"),
    ("gpu", "some GPU", None, "float32"),
    ("metal", "Apple M2", None, "float32"),
])
def test_auto_picks_the_dtype_the_device_has(platform, kind, cc, dtype):
  p = precision.for_device(platform, kind, cc)
  assert p.dtype == dtype
  assert p.loss_scaling == (dtype == "float16")
  assert p.warning == (dtype == "float32")  # Half asked, float32 given.
  line = p.describe()
  assert "\n" not in line and line.startswith(
      "warning: precision: float32" if p.warning else "precision: ")
  if cc:
    assert f"compute capability {cc}" in line and kind in line


def config_of(half, dtype="auto"):
  return ml_collections.ConfigDict({"half_precision": half,
                                    "half_precision_dtype": dtype})


def test_choose_reads_the_switch_the_override_and_the_device():
  t4 = types.SimpleNamespace(platform="gpu", device_kind="Tesla T4",
                             compute_capability="7.5")
  assert precision.choose(config_of(False), t4).dtype == "float32"
  auto = precision.choose(config_of(True), t4)
  assert auto.dtype == "float16" and auto.compute_dtype == jnp.float16
  assert "Tesla T4, compute capability 7.5 lacks bfloat16" in auto.describe()
  forced = precision.choose(config_of(True, "bfloat16"), t4)
  assert forced.dtype == "bfloat16"
  assert "half_precision_dtype=bfloat16" in forced.describe()
  assert precision.choose(config_of(True)).dtype == "bfloat16"  # This CPU.
  with pytest.raises(ValueError, match="half_precision_dtype must be one"):
    precision.choose(config_of(True, "fp8"))


def test_a_bad_dtype_is_a_one_line_config_error():
  config = smoke.get_config()
  config.half_precision_dtype = "float8"
  with pytest.raises(preflight.ConfigError,
                     match="half_precision_dtype must be one of"):
    preflight.check_config(config)


def test_the_scale_halves_on_overflow_doubles_after_period_never_below_1():
  s = precision.DynamicLossScale(init=4.0, period=3)

  def after(*finite):
    for f in finite:
      s.adjust(jnp.bool_(f))
    return float(s.scale[...]), int(s.good_steps[...])

  assert after(True, True) == (4.0, 2)
  assert after(True) == (8.0, 0)  # The third finite step in a row.
  assert after(False) == (4.0, 0)
  assert after(True, True, False) == (2.0, 0)  # Overflow resets the count.
  assert after(False, False, False) == (1.0, 0)
  top = precision.DynamicLossScale(init=precision.MAX_SCALE, period=1)
  top.adjust(jnp.bool_(True))
  assert float(top.scale[...]) == precision.MAX_SCALE  # Capped, never inf.


def test_float16_lrn_sums_squares_in_float32():
  # Activations of 300: their squares (9e4) overflow float16 (max 65504),
  # which would turn the LRN's output into 0.
  x = jnp.full((1, 2, 2, 8), 300.0)
  lrn = functools.partial(ops.local_response_norm, k=2.0, n=5, alpha=1e-4,
                          beta=0.75)
  y = precision.norm_in_float32(lrn, x.astype(jnp.float16))
  assert y.dtype == jnp.float16
  np.testing.assert_allclose(np.asarray(y, np.float32), lrn(x), rtol=1e-3)
  assert float(lrn(x.astype(jnp.float16)).max()) == 0.0  # Without it.
  bf = x.astype(jnp.bfloat16)  # Other dtypes as they were.
  np.testing.assert_array_equal(precision.norm_in_float32(lrn, bf), lrn(bf))


@pytest.mark.parametrize("norm", ["batchnorm", "lrn"])
def test_every_layer_computes_in_float16(norm):
  config = float16_config()
  config.model.norm = norm
  model = model_lib.from_config(config.model, dtype=jnp.float16,
                                rngs=nnx.Rngs(0))
  model.eval()  # Traced only (no compilation): BatchNorm writes nothing.
  logits, acts = jax.eval_shape(
      lambda x: model(x, return_activations=True),
      jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32))
  assert logits.dtype == jnp.float32
  assert {k: str(v.dtype) for k, v in acts.items() if k != "fc8"} == {
      k: "float16" for k in acts if k != "fc8"}
  if norm == "batchnorm":  # Its statistics stay float32.
    assert model.bn1.mean[...].dtype == jnp.float32


def test_a_window_of_steps_skipped_at_scale_1_is_a_divergence():
  window = progress.Window(0, 10, 8)
  window.add({"loss": 2.0, "loss_scale": 2.0, "overflow": 1.0})
  window.add({"loss": 2.0, "loss_scale": 1.0, "overflow": 0.0})
  out = window.fetch(2, None)  # One finite step: training goes on.
  assert out["train_loss_scale"] == 1.0 and out["train_overflow"] == 0.5
  for _ in range(3):
    window.add({"loss": 2.0, "loss_scale": 1.0, "overflow": 1.0})
  with pytest.raises(progress.Diverged,
                     match="not finite even at loss scale 1 .steps 3-5"):
    window.fetch(5, None)


# ---------------------------------------------------------------- the step


def float16_config(**top):
  config = smoke.get_config()
  config.half_precision = True
  config.half_precision_dtype = "float16"
  config.data.num_eval_examples = 32
  for k, v in top.items():
    config[k] = v
  return config


@pytest.fixture(scope="module")
def float16_step():
  """start(scale, good_steps): the float16 smoke run's jitted train step
  (train.setup: on the 8-device mesh, the program the run below compiles
  too), fresh copies of its states with that loss scale, and a batch."""
  run = train.setup(float16_config())
  assert run.eval_graph is not None
  rng = np.random.default_rng(0)
  with jax.set_mesh(run.mesh):
    batch = jax.device_put(
        {"image": rng.standard_normal((32, 32, 32, 3), np.float32),
         "label": rng.integers(0, 10, 32).astype(np.int32),
         "mask": np.ones(32, bool)}, sharding.batch_sharding(run.mesh))

  def start(scale, good_steps=0):
    model_state = jax.tree.map(jnp.copy, run.model_state)
    opt_state = jax.tree.map(jnp.copy, run.opt_state)
    # Placed as the state's own (replicated), so that nothing recompiles.
    precision.restore_scale(opt_state, {"loss_scale": {
        "scale": scale, "good_steps": good_steps}})

    def step(model_state, opt_state, rate):
      with jax.set_mesh(run.mesh):
        return run.train_step(model_state, opt_state, batch, jnp.float32(rate))

    return step, model_state, opt_state

  return start


def pure(state):
  return jax.device_get(checkpoint_lib.to_saveable(nnx.to_pure_dict(state)))


def assert_trees_equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


def all_finite(tree):
  return all(np.all(np.isfinite(x)) for x in jax.tree.leaves(tree))


def test_an_overflow_skips_the_step_and_halves_the_scale(float16_step):
  # A scale of 2^120 is finite in float32 but overflows float16 in the
  # backward: every gradient is inf.
  step, model_state, opt_state = float16_step(2.0 ** 120)
  model0, opt0 = pure(model_state), pure(opt_state)
  model_state, opt_state, m = step(model_state, opt_state, 0.01)
  assert float(m["overflow"]) == 1.0 and float(m["loss_scale"]) == 2.0 ** 120
  assert np.isfinite(float(m["loss"]))
  model1, opt1 = pure(model_state), pure(opt_state)
  assert_trees_equal(model1, model0)  # Bit for bit: the step was skipped.
  scale1 = opt1.pop("loss_scale")
  opt0.pop("loss_scale")
  assert_trees_equal(opt1, opt0)  # Momentum and the step count too.
  assert float(scale1["scale"]) == 2.0 ** 119
  assert all_finite(model1) and all_finite(opt1)

  # At a scale float16 can hold, the same batch updates the parameters.
  precision.restore_scale(opt_state, {"loss_scale": {
      "scale": 2.0 ** 10, "good_steps": 0}})
  model_state, opt_state, m = step(model_state, opt_state, 0.01)
  assert float(m["overflow"]) == 0.0
  model2 = pure(model_state)
  assert all_finite(model2)
  assert not np.array_equal(model2["conv1"]["kernel"],
                            model1["conv1"]["kernel"])
  assert int(pure(opt_state)["step"]) == 1


def test_the_scale_doubles_after_period_finite_steps(float16_step):
  # Two steps short of the period (precision.PERIOD finite steps in a row).
  step, model_state, opt_state = float16_step(4.0, precision.PERIOD - 2)
  used = []
  for _ in range(3):
    model_state, opt_state, m = step(model_state, opt_state, 0.001)
    assert float(m["overflow"]) == 0.0
    used.append(float(m["loss_scale"]))
  assert used == [4.0, 4.0, 8.0]  # The period's last step doubled it.
  scale = pure(opt_state)["loss_scale"]
  assert float(scale["scale"]) == 8.0 and int(scale["good_steps"]) == 1


def test_without_float16_the_optimizer_has_no_scale():
  config = float16_config(half_precision_dtype="bfloat16")
  model, optimizer, _ = train.create_train_state(config)
  assert model.dtype == jnp.bfloat16
  assert precision.scale_of(optimizer) is None
  assert "loss_scale" not in nnx.to_pure_dict(nnx.state(optimizer))


# ---------------------------------------------------------------- a run


def rows(workdir):
  return [json.loads(l) for l in (workdir / "metrics.jsonl").open()
          if "train_loss" in l]


def saved(workdir, step):
  ckpts = checkpoint_lib.Checkpoints(str(workdir), max_to_keep=3)
  try:
    return ckpts.read_meta(step)
  finally:
    ckpts.close()


def test_a_float16_run_learns_and_resumes_with_its_scale(tmp_path):
  config = float16_config(num_train_steps=16, log_every_steps=1,
                          eval_every_steps=16, checkpoint_every_steps=8)
  straight = tmp_path / "straight"
  train.train_and_evaluate(config, str(straight))
  losses = [r["train_loss"] for r in rows(straight)]
  assert len(losses) == 16 and np.all(np.isfinite(losses))
  assert np.mean(losses[-4:]) < 0.7 * np.mean(losses[:4])
  scales = [r["train_loss_scale"] for r in rows(straight)]
  assert scales[0] == precision.INIT_SCALE
  assert all(s >= 1 and np.log2(s) == int(np.log2(s)) for s in scales)
  meta = saved(straight, 16)["loss_scale"]
  assert meta["scale"] == scales[-1] * (0.5 if rows(straight)[-1][
      "train_overflow"] else 1)

  # Stopped at 8 and resumed: the same steps, scale included.
  resumed = tmp_path / "resumed"
  config.num_train_steps = 8
  train.train_and_evaluate(config, str(resumed))
  config.num_train_steps = 16
  train.train_and_evaluate(config, str(resumed))
  keys = ("train_loss", "train_loss_scale", "train_overflow")
  assert [[r[k] for k in keys] for r in rows(resumed)] == [
      [r[k] for k in keys] for r in rows(straight)]
  assert saved(resumed, 16)["loss_scale"] == meta


def test_a_float32_checkpoint_resumes_in_float16_from_the_initial_scale(
    tmp_path):
  config = float16_config(num_train_steps=2, half_precision=False)
  train.train_and_evaluate(config, str(tmp_path))
  assert "loss_scale" not in saved(tmp_path, 2)
  config.half_precision, config.num_train_steps = True, 3
  train.train_and_evaluate(config, str(tmp_path))
  last = rows(tmp_path)[-1]
  assert last["step"] == 3
  assert last["train_loss_scale"] == precision.INIT_SCALE
  assert "loss_scale" in saved(tmp_path, 3)
