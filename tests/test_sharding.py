"""The paper's two-device split, data parallelism and multi-process runs.

Every mesh result is compared with the same model on one device. Tolerance:
1e-5 of each array's largest magnitude (logits, losses, every parameter and
every parameter's update after a step); the split changes only the order of
float32 sums (measured: at most 3e-6 on the updates, 6e-7 on the logits).
"""

import functools
import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from alexnet_jax import comm
from alexnet_jax import model as model_lib
from alexnet_jax import ops
from alexnet_jax import sharding
from alexnet_jax import steps
from alexnet_jax import train
from configs import default
from tests import xla_flags

ROOT = pathlib.Path(__file__).resolve().parent.parent
REL = 1e-5
LR = 0.05
MESHES = [(1, 1), (2, 1), (1, 2), (4, 2)]
TOWER_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")


def small_config(**model):
  """The paper's network scaled down: cifar geometry, width 0.25, 10 classes."""
  config = default.get_config()
  config.batch_size = 8
  config.model.update(dict(preset="cifar", width=0.25, towers=2,
                           num_classes=10, dropout_rate=0.0, init="he"))
  config.model.update(model)
  return config


def mesh_of(data, model):
  return sharding.create_mesh(
      ml_collections.ConfigDict({"data": data, "model": model}),
      devices=jax.devices()[:data * model])


def make_batch(config, seed=0):
  rng = np.random.default_rng(seed)
  b = config.batch_size
  return {"image": rng.normal(size=(b, 32, 32, 3)).astype(np.float32),
          "label": rng.integers(0, 10, size=b).astype(np.int32),
          "mask": np.ones(b, bool)}


@functools.lru_cache(maxsize=None)
def initial(**overrides):
  """Graphs and initial states (one device), made once per model variant.

  A variant whose state has the default's shapes (e.g. another dropout
  rate) reuses the default's states with its own graphs.
  """
  config = small_config(**overrides)
  local = sharding.create_mesh(ml_collections.ConfigDict(
      {"data": 1, "model": 1}), devices=jax.local_devices()[:1])
  create = lambda: train.create_train_state(config)
  with jax.set_mesh(local):
    model, optimizer, eval_graph = nnx.eval_shape(create)
    model_graph, model_state = nnx.split(model)
    opt_graph, opt_state = nnx.split(optimizer)
    if overrides:
      base = initial()
      shapes = lambda t: jax.tree.map(lambda x: (x.shape, x.dtype), t)
      if shapes((base[2], base[4])) == shapes((model_state, opt_state)):
        return (config, model_graph, base[2], opt_graph, base[4],
                eval_graph)
    # Under jit: one compile instead of one per eager random draw (2x faster).
    model, optimizer, _ = nnx.jit(create)()
  model_graph, model_state = nnx.split(model)
  opt_graph, opt_state = nnx.split(optimizer)
  return config, model_graph, model_state, opt_graph, opt_state, eval_graph


def setup(mesh, **overrides):
  """States placed as train.py places them, plus the jitted steps."""
  config, model_graph, model_state, opt_graph, opt_state, eval_graph = (
      initial(**overrides))
  # Copies first: the training step donates its inputs, and device_put onto
  # several devices may reuse the source buffer for one of them.
  model_state, opt_state = jax.tree.map(jnp.copy, (model_state, opt_state))
  model_state = sharding.place(
      model_state, sharding.state_shardings(model_state, mesh))
  opt_state = sharding.place(opt_state,
                             sharding.state_shardings(opt_state, mesh))
  train_step, _ = steps.make_steps(model_graph, opt_graph, eval_graph)
  forward = jax.jit(lambda s, x: nnx.merge(eval_graph, s)(x))
  return config, model_state, opt_state, train_step, forward


@functools.lru_cache(maxsize=None)
def run(data, model):
  """Logits, one training step's loss and parameters on a data x model mesh."""
  mesh = mesh_of(data, model)
  config, model_state, opt_state, train_step, forward = setup(mesh)
  with jax.set_mesh(mesh):
    batch = jax.device_put(make_batch(config), sharding.batch_sharding(mesh))
    # Compiled once, run from the compiled executables (the HLO we read).
    forward = forward.lower(model_state, batch["image"]).compile()
    train_step = train_step.lower(model_state, opt_state, batch,
                                  LR).compile()
    logits = np.asarray(forward(model_state, batch["image"]))
    model_state, opt_state, metrics = train_step(model_state, opt_state,
                                                 batch, LR)
  return dict(mesh=mesh, logits=logits, loss=float(metrics["loss"]),
              model_state=model_state, opt_state=opt_state,
              params=jax.tree.map(np.asarray, params_of(model_state)),
              fwd=comm.collectives(forward.as_text()),
              step=comm.collectives(train_step.as_text()),
              train_step=train_step)


def forward_only(data, model, train_mode=False, plain=False, **overrides):
  """Logits and compiled collectives of a forward pass of a model variant.

  train_mode: dropout active. plain: AlexNet.forward with OneProgram, the
  network as one
  program left to XLA's partitioner even when the mesh has model=2.
  """
  mesh = mesh_of(data, model)
  config, model_state, _, _, _ = setup(mesh, **overrides)
  _, model_graph, _, _, _, eval_graph = initial(**overrides)
  graph = model_graph if train_mode else eval_graph
  call = ((lambda m, x: m.forward(x, model_lib.OneProgram(m))[0]) if plain
          else (lambda m, x: m(x)))
  with jax.set_mesh(mesh):
    f = jax.jit(lambda s, x: call(nnx.merge(graph, s), x))
    x = jax.device_put(make_batch(config)["image"],
                       sharding.batch_sharding(mesh))
    compiled = f.lower(model_state, x).compile()
    return np.asarray(compiled(model_state, x)), comm.collectives(
        compiled.as_text())


def compiled_forward_collectives(data, model, **overrides):
  """Collectives of a variant's compiled forward; nothing is initialized."""
  config = small_config(**overrides)
  mesh = mesh_of(data, model)
  with jax.set_mesh(mesh):
    model_, _, eval_graph = nnx.eval_shape(
        lambda: train.create_train_state(config))
    state = nnx.state(model_)
    state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        state, sharding.state_shardings(state, mesh))
    x = jax.ShapeDtypeStruct((config.batch_size, 32, 32, 3), jnp.float32,
                             sharding=sharding.batch_sharding(mesh))
    f = jax.jit(lambda s, x: nnx.merge(eval_graph, s)(x))
    return comm.collectives(f.lower(state, x).compile().as_text())


def assert_close(got, ref):
  """Within 1e-5 of the reference array's largest magnitude."""
  got, ref = np.asarray(got), np.asarray(ref)
  np.testing.assert_allclose(got, ref, rtol=0,
                             atol=REL * np.abs(ref).max() + 1e-30)


def params_of(model_state):
  """{layer: {kernel, bias}} arrays of the conv and fc layers."""
  return {n: {k: model_state[n][k][...] for k in ("kernel", "bias")}
          for n in (*TOWER_LAYERS, "fc8")}


# ---------------------------------------------------------------- meshes


@pytest.mark.parametrize("data,model", MESHES[1:])
def test_forward_and_train_step_match_one_device(data, model):
  ref, got = run(1, 1), run(data, model)
  before = jax.tree.map(np.asarray, params_of(initial()[2]))
  assert_close(got["logits"], ref["logits"])
  assert np.abs(ref["logits"]).max() > 0.1  # Not a trivially small output.
  assert_close(got["loss"], ref["loss"])
  for layer in ref["params"]:
    for leaf in ("kernel", "bias"):
      want, was = ref["params"][layer][leaf], before[layer][leaf]
      assert_close(got["params"][layer][leaf], want)
      assert_close(got["params"][layer][leaf] - was, want - was)
      assert np.abs(want - was).max() > 1e-4  # The step moved it.


def test_dropout_masks_are_the_same_on_every_mesh():
  # The two-tower forward draws the full mask outside the shard_map and
  # each device applies its block, so dropout does not depend on the mesh.
  ref, _ = forward_only(1, 1, train_mode=True, dropout_rate=0.5)
  got, found = forward_only(1, 2, train_mode=True, dropout_rate=0.5)
  off, _ = forward_only(1, 1, dropout_rate=0.5)  # Eval mode: no dropout.
  assert_close(got, ref)
  assert np.abs(ref - off).max() > 0.1 * np.abs(off).max()  # It acted.
  # Drawing the masks adds no exchange (each device makes its own bits).
  assert sorted(exchanges(found)) == sorted(PAPER_FORWARD)


# ---------------------------------------------------------------- placement


def momentum(opt_state, layer, leaf):
  """The optimizer leaves that mirror parameter layer/leaf."""
  return [x for path, x in jax.tree.leaves_with_path(opt_state)
          if sharding._names(path)[-2:] == [layer, leaf]]


@pytest.mark.parametrize("data,model", [(1, 2), (4, 2)])
def test_each_towers_weights_live_on_its_own_device(data, model):
  r = run(data, model)
  mesh, state, params = r["mesh"], r["model_state"], r["params"]
  opt = r["opt_state"]
  for layer in TOWER_LAYERS:
    for leaf in ("kernel", "bias"):
      arr = state[layer][leaf][...]
      full = params[layer][leaf]
      half = full.shape[-1] // 2
      assert arr.sharding.shard_shape(arr.shape) == (*full.shape[:-1], half)
      for shard in arr.addressable_shards:
        tower = int(np.argwhere(mesh.devices == shard.device)[0][1])
        np.testing.assert_array_equal(
            shard.data, full[..., tower * half:(tower + 1) * half])
      traces = momentum(opt, layer, leaf)
      assert traces and all(t.sharding == arr.sharding for t in traces)
  # conv2's grouped kernel on tower 1's device: exactly that tower's block.
  c2 = state["conv2"]["kernel"][...]
  assert c2.shape[2] * 2 == state["conv1"]["kernel"][...].shape[-1]
  # fc8: tower t holds the rows that read its own fc7 units.
  fc8, rows = state["fc8"]["kernel"][...], params["fc8"]["kernel"].shape[0]
  for shard in fc8.addressable_shards:
    tower = int(np.argwhere(mesh.devices == shard.device)[0][1])
    np.testing.assert_array_equal(
        shard.data, params["fc8"]["kernel"][tower * rows // 2:
                                            (tower + 1) * rows // 2])
  assert state["fc8"]["bias"][...].sharding.is_fully_replicated
  # Parameters per device: half of everything but fc8's bias.
  per_device = sum(s.data.size for leaf in jax.tree.leaves(state)
                   if hasattr(leaf, "addressable_shards")
                   for s in leaf.addressable_shards
                   if s.device == mesh.devices[0, 0] and leaf.ndim)
  total = sum(x.size for x in jax.tree.leaves(params) if x.ndim)
  fc8_bias = params["fc8"]["bias"].size
  assert per_device == (total - fc8_bias) // 2 + fc8_bias


def test_data_parallel_grouped_convolutions_stay_on_their_device(
    monkeypatch):
  # XLA's partitioner all-gathers the batch of a feature_group_count
  # convolution on a data-sharded mesh: why `auto` on GPU/TPU (ACCELERATOR)
  # takes the per-tower convolution with the otherwise plain operations.
  plain = compiled_forward_collectives(2, 1, ops="plain")
  assert {(c["op"], c["layer"]) for c in plain} == {
      ("all-gather", "conv2"), ("all-gather", "conv4"), ("all-gather", "conv5")}
  select = ops.select
  monkeypatch.setattr(ops, "select",
                      lambda mode, backend=None: select(mode, backend="gpu"))
  assert ops.select("auto") is ops.ACCELERATOR
  assert compiled_forward_collectives(2, 1) == []


def test_model_1_is_plain_data_parallelism():
  r = run(2, 1)
  for leaf in jax.tree.leaves(r["model_state"]):
    assert leaf.sharding.is_fully_replicated
  assert [c for c in r["fwd"]] == []  # Nothing crosses devices forward.
  # The training step's exchanges: the gradient sum over `data`, and the
  # scalar sums of the loss and accuracy means.
  step = without_metrics(r["step"])
  assert {c["op"] for c in step} == {"all-reduce"}
  assert {c["pass"] for c in step} == {"bwd"}


def test_state_shardings_make_orbax_restore_targets(tmp_path):
  import orbax.checkpoint as ocp
  src = run(1, 2)["model_state"]
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(tmp_path / "state", src)
  mesh = mesh_of(4, 2)
  with jax.set_mesh(mesh):
    abstract = nnx.state(nnx.eval_shape(
        lambda: train.create_train_state(small_config())[0]))
    shardings = sharding.state_shardings(abstract, mesh)
    assert jax.tree.structure(shardings) == jax.tree.structure(abstract)
    target = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        abstract, shardings)
    with ocp.StandardCheckpointer() as ckpt:
      restored = ckpt.restore(tmp_path / "state", target)
  k = restored["conv4"]["kernel"][...]
  assert k.sharding == shardings["conv4"]["kernel"].get_value()
  assert len(k.sharding.device_set) == 8
  np.testing.assert_array_equal(k, src["conv4"]["kernel"][...])


# ---------------------------------------------------------------- collectives


def without_metrics(collectives):
  """All but the scalar all-reduces of the batch means (loss, accuracy)."""
  return [c for c in collectives
          if not (c["op"] == "all-reduce" and c["layer"] == "-"
                  and c["bytes"] <= 8)]


def exchanges(collectives):
  return [(c["op"], c["layer"], c["pass"]) for c in without_metrics(
      collectives)]


PAPER_FORWARD = [("all-gather", "conv3", "fwd"), ("all-gather", "fc6", "fwd"),
                 ("all-gather", "fc7", "fwd"), ("all-reduce", "fc8", "fwd")]


@pytest.mark.parametrize("data,model", [(1, 2), (4, 2)])
def test_two_tower_forward_has_exactly_the_papers_four_exchanges(data, model):
  r = run(data, model)
  assert sorted(exchanges(r["fwd"])) == sorted(PAPER_FORWARD)
  # conv3's input: both towers' pool2 (7x7 at 32px, 32 channels each
  # at width 0.25), the rows of one data shard, float32.
  rows = 8 // data
  conv3 = [c for c in r["fwd"] if c["layer"] == "conv3"][0]
  assert conv3["bytes"] == rows * 7 * 7 * 64 * 4
  fc8 = [c for c in r["fwd"] if c["layer"] == "fc8"][0]
  assert fc8["bytes"] == rows * 10 * 4  # Partial logits, summed.
  # Training adds the backward of the three gathers (a reduce-scatter
  # each; fc8's sum needs nothing back, every device holds the logits'
  # gradient) and, with data > 1, the gradient sum over `data`.
  step = exchanges(r["step"])
  assert sorted(s for s in step if s[2] == "fwd") == sorted(PAPER_FORWARD)
  tower_bwd = [s for s in step if s[2] == "bwd" and s[0] != "all-reduce"]
  assert sorted(tower_bwd) == sorted(
      ("reduce-scatter", layer, "bwd") for layer in ("conv3", "fc6", "fc7"))
  all_reduce = [s for s in step if s[0] == "all-reduce" and s[2] == "bwd"]
  assert (len(all_reduce) > 0) == (data > 1)
  # No exchange inside a grouped layer or conv1 in either direction,
  # other than the data-parallel gradient sum.
  local = {"conv1", "conv2", "conv4", "conv5"}
  assert not [s for s in step if s[1] in local and s[0] != "all-reduce"]


def test_one_tower_model_on_model_2_exchanges_far_more():
  # For contrast: the one-tower variant on the same mesh and placement goes
  # through XLA's partitioner, which moves data around every layer.
  found = compiled_forward_collectives(1, 2, towers=1)
  assert len(found) > 4
  assert {c["layer"] for c in found} & {"conv2", "conv4", "conv5"}


def test_plain_annotations_on_two_towers_gather_grouped_layers():
  # Why the towers run under shard_map: the same model and placement,
  # forward left to XLA's partitioner, communicates inside grouped layers.
  got, found = forward_only(1, 2, plain=True)
  assert_close(got, run(1, 1)["logits"])
  assert {c["layer"] for c in found} & {"conv2", "conv4", "conv5"}


def test_comm_report_on_the_full_test_mesh():
  config = small_config()
  config.mesh.model = 2
  r = comm.analyze(config)
  assert r["mesh"] == {"data": 4, "model": 2} and r["tower_split"]
  assert sorted(exchanges(r["forward"])) == sorted(PAPER_FORWARD)
  devices = r["memory"]["per_device"]
  assert len(devices) == 8
  params = run(4, 2)["params"]
  total = sum(x.size for x in jax.tree.leaves(params) if x.ndim)
  fc8_bias = params["fc8"]["bias"].size
  want = ((total - fc8_bias) // 2 + fc8_bias) * 4
  assert {d["params_bytes"] for d in devices} == {want}
  for d in devices:  # Momentum mirrors the parameters; plus counters.
    assert want <= d["opt_state_bytes"] < want + 256
  assert all(d["temp_bytes"] > 0 and d["total_bytes"] > 2 * want
             for d in devices)
  text = comm.format_report(r)
  assert "one tower per device" in text and "all-gather" in text
  assert json.loads(json.dumps(r)) == r
  # uint8 batches (data.normalize_on_device): the same exchanges, and the
  # batch a quarter of the image bytes plus 3 float32 shifts per image.
  config.data.normalize_on_device = True
  r8 = comm.analyze(config)
  assert sorted(exchanges(r8["forward"])) == sorted(PAPER_FORWARD)
  b = config.batch_size // 4  # Rows per data shard.
  pixels = b * r["image_size"] ** 2 * 3
  for d, d8 in zip(devices, r8["memory"]["per_device"]):
    assert d["batch_bytes"] == 4 * pixels + b * (4 + 1)  # + label, mask.
    assert d8["batch_bytes"] == pixels + b * (4 + 1) + b * 3 * 4


def test_collective_parser_reads_shapes_and_skips_one_device_groups():
  hlo = textwrap.dedent("""\
    %ag = f32[8,7,7,64]{3,2,1,0} all-gather(%x), replica_groups={{0,1}}, dimensions={3}, metadata={op_name="jit(f)/shard_map/conv3/all_gather"}
    %ar = (f32[10]{0}, bf16[4,4]{1,0}) all-reduce(%a, %b), replica_groups=[1,2]<=[2], metadata={op_name="jit(f)/transpose(jvp())/(fc6/psum:fc8/psum)"}
    %noop = f32[10]{0} all-reduce(%a), replica_groups={{0},{1}}
    %m = f32[] all-reduce(%a), replica_groups=mesh['axis_0'=2,'axis_1'=2] {'axis_0'}, metadata={op_name="jit(f)/reduce_sum"}
    %m1 = f32[] all-reduce(%a), replica_groups=mesh['axis_0'=1,'axis_1'=2] {'axis_0'}
    %c = f32[3]{0} add(%a, %b)""")
  assert comm.collectives(hlo) == [
      {"op": "all-gather", "layer": "conv3", "pass": "fwd",
       "bytes": 8 * 7 * 7 * 64 * 4},
      {"op": "all-reduce", "layer": "many", "pass": "bwd",
       "bytes": 40 + 32},
      {"op": "all-reduce", "layer": "-", "pass": "fwd", "bytes": 4}]


# ---------------------------------------------------------------- mesh config


def test_create_mesh_axes_and_errors():
  mesh = sharding.create_mesh(ml_collections.ConfigDict(
      {"data": -1, "model": 2}))
  assert dict(mesh.shape) == {"data": 4, "model": 2}
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
  with pytest.raises(sharding.MeshError, match="mesh.model must be 1"):
    sharding.create_mesh(ml_collections.ConfigDict({"data": -1, "model": 4}))
  with pytest.raises(sharding.MeshError, match="needs 6 devices"):
    sharding.create_mesh(ml_collections.ConfigDict({"data": 3, "model": 2}))


def test_local_batch_rows_follow_the_mesh():
  assert sharding.local_batch_rows(mesh_of(4, 2), 16) == slice(0, 16)


def test_distributed_is_off_without_a_coordinator(monkeypatch):
  for var in ("JAX_COORDINATOR_ADDRESS", "SLURM_JOB_ID",
              "OMPI_MCA_orte_hnp_uri", "TPU_WORKER_HOSTNAMES"):
    monkeypatch.delenv(var, raising=False)
  mesh = default.get_config().mesh
  assert sharding.initialize_distributed(mesh) is False
  mesh.distributed = "sometimes"
  with pytest.raises(sharding.MeshError, match="mesh.distributed"):
    sharding.initialize_distributed(mesh)
  monkeypatch.setenv("SLURM_JOB_ID", "1")
  monkeypatch.setenv("SLURM_NTASKS", "4")
  assert sharding._cluster_in_environment() == "SLURM"


# ---------------------------------------------------------------- processes


WORKER = textwrap.dedent("""
    import json, sys
    import jax, ml_collections, numpy as np
    from alexnet_jax import sharding
    from tests import test_sharding as t
    cfg = ml_collections.ConfigDict(dict(
        distributed="auto", coordinator_address=sys.argv[1], num_processes=2,
        process_id=int(sys.argv[2]), initialization_timeout=120))
    assert sharding.initialize_distributed(cfg)
    out = {"devices": jax.device_count(), "local": jax.local_device_count()}
    # 2x2: `data` across the processes. 1x2: one device of each process, so
    # the towers' exchanges cross the process boundary, like the paper's
    # two GPUs.
    pairs = {"2x2": jax.devices(),
             "1x2": [[d for d in jax.devices() if d.process_index == p][0]
                     for p in (0, 1)]}
    for name, devices in pairs.items():
      data = len(devices) // 2
      mesh = sharding.create_mesh(ml_collections.ConfigDict(
          dict(data=data, model=2)), devices=devices)
      out[name] = t.train_two_steps(mesh)
    print("RESULT " + json.dumps(out), flush=True)
""")


def train_two_steps(mesh, compiled_step=None):
  """Losses of two steps and parameter sums, feeding only local rows."""
  config, model_state, opt_state, train_step, _ = setup(mesh)
  train_step = compiled_step or train_step
  rows = sharding.local_batch_rows(mesh, config.batch_size)
  losses = []
  with jax.set_mesh(mesh):
    for seed in (0, 1):
      local = {k: v[rows] for k, v in make_batch(config, seed).items()}
      batch = {k: jax.make_array_from_process_local_data(
          sharding.batch_sharding(mesh), v) for k, v in local.items()}
      if compiled_step is None and seed == 0:
        train_step = train_step.lower(model_state, opt_state, batch,
                                      LR).compile()
      model_state, opt_state, metrics = train_step(model_state, opt_state,
                                                   batch, LR)
      losses.append(float(metrics["loss"]))
    sums = jax.jit(lambda s: jax.tree.map(jnp.sum, s))(
        params_of(model_state))
  return {"losses": losses,
          "sums": jax.tree.map(float, jax.device_get(sums))}


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def worker_env(devices):
  env = dict(os.environ)
  env["XLA_FLAGS"] = xla_flags.flags(devices)
  env["PYTHONPATH"] = str(ROOT)
  return env


def test_two_processes_train_like_one():
  address = f"127.0.0.1:{free_port()}"
  procs = [subprocess.Popen([sys.executable, "-c", WORKER, address, str(i)],
                            cwd=ROOT, env=worker_env(2), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
           for i in range(2)]
  outs = []
  try:
    for p in procs:
      stdout, stderr = p.communicate(timeout=240)
      assert p.returncode == 0, stderr[-3000:]
      line = [l for l in stdout.splitlines() if l.startswith("RESULT ")][0]
      outs.append(json.loads(line[len("RESULT "):]))
  finally:
    for p in procs:
      p.kill()
  ref = train_two_steps(mesh_of(1, 1), run(1, 1)["train_step"])
  for out in outs:
    assert out["devices"] == 4 and out["local"] == 2
    for name in ("2x2", "1x2"):
      np.testing.assert_allclose(out[name]["losses"], ref["losses"],
                                 rtol=REL)
      # Sums of whole parameter arrays: a sum near zero of entries that
      # each match to 1e-5 relative, so compared with an absolute 1e-4.
      jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=REL,
                                     atol=1e-4), out[name]["sums"],
                   ref["sums"])
  assert ref["losses"][1] != ref["losses"][0]


def test_a_peer_that_never_arrives_ends_with_a_clear_error(tmp_path):
  start = time.monotonic()
  proc = subprocess.run(
      [sys.executable, "-m", "alexnet_jax.main", "--config=configs/smoke.py",
       f"--workdir={tmp_path}",
       f"--config.mesh.coordinator_address=127.0.0.1:{free_port()}",
       "--config.mesh.num_processes=2", "--config.mesh.process_id=0",
       "--config.mesh.initialization_timeout=3"],
      cwd=ROOT, env=worker_env(1), capture_output=True, text=True,
      timeout=120)
  elapsed = time.monotonic() - start
  assert proc.returncode == 2
  assert ("did not start within mesh.initialization_timeout=3s"
          in proc.stderr), proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr and "Check failure" not in proc.stderr
  assert elapsed < 60
