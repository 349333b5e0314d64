"""Device meshes, where arrays live on them, and multi-process start-up.

The mesh has two axes: `data` (the batch is split along it) and `model`
(the paper's two-GPU split). With model=1 everything below is plain data
parallelism: parameters replicated, batch sharded on `data`.

With model=2 each tower's parameters live on its own device of the `model`
axis (paper, figure 2): conv1-conv5, fc6 and fc7 are split on their output
axis (tower t owns output block t: 48+48 conv1 kernels, 2048+2048 fc6/fc7
units), so the grouped layers' kernels (C_in/2 inputs) are exactly the
tower's own. fc8 is split on its input axis: tower t owns the 2048 rows
that read its own fc7 units, computes partial logits, and one all-reduce
sums the two halves (see run_towers). That exchange moves
batch x 1000 numbers instead of gathering batch x 4096 fc7 outputs, and
keeps half of fc8 per device; only its 1000 biases are replicated.
Optimizer state (momentum traces) mirrors the parameters leaf by leaf.

Several processes (hosts): initialize_distributed starts jax.distributed
before any device is touched; the mesh then spans every process's devices,
`place` builds each process's shards, and local_batch_rows says which rows
of the global batch this process must load.
"""

from __future__ import annotations

import os
import sys
import threading
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax import lax
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from alexnet_jax import layers
from alexnet_jax import ops as ops_lib

DATA, MODEL = "data", "model"

# Layers split into towers along their output (last) axis when model=2;
# BatchNorm of layers 1-2 is per channel, so it follows its conv's split.
# The layer that sums partial results (fc8) splits its input axis instead.
TOWER_LAYERS = tuple(l.name for l in layers.LAYERS if not l.reduce) + tuple(
    layers.BATCHNORMS.values())
INPUT_SPLIT_LAYERS = tuple(l.name for l in layers.LAYERS if l.reduce)
DISTRIBUTED_MODES = ("auto", "on", "off")


class MeshError(ValueError):
  """A mesh or process group that does not fit this run (a user error)."""


# ---------------------------------------------------------------- processes


def _cluster_in_environment() -> str | None:
  """The multi-process launcher this process runs under, if any."""
  env = os.environ
  if env.get("JAX_COORDINATOR_ADDRESS"):
    return "JAX_COORDINATOR_ADDRESS"
  if "SLURM_JOB_ID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
    return "SLURM"
  if "OMPI_MCA_orte_hnp_uri" in env and int(
      env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
    return "Open MPI"
  if len(env.get("TPU_WORKER_HOSTNAMES", "").split(",")) > 1:
    return "multi-host TPU"
  return None


def initialize_distributed(mesh_config: ml_collections.ConfigDict) -> bool:
  """Starts jax.distributed when the config or the environment asks for it.

  mesh.distributed: 'off' never; 'on' always (JAX fills unset fields from
  its cluster detection: SLURM, Open MPI, Cloud TPU, Kubernetes); 'auto'
  when mesh.coordinator_address is set or a launcher is detected in the
  environment (_cluster_in_environment). Must run before anything touches
  the devices. A peer that never arrives ends the process after
  mesh.initialization_timeout seconds with one line on stderr and exit
  code 2: JAX itself would abort with a C++ stack trace, so a watchdog
  fires a few seconds before JAX's own deadline. Returns whether it started.
  """
  c = mesh_config
  if c.distributed not in DISTRIBUTED_MODES:
    raise MeshError(f"mesh.distributed must be one of {DISTRIBUTED_MODES}, "
                    f"got {c.distributed!r}")
  if c.distributed == "off":
    return False
  detected = _cluster_in_environment()
  if c.distributed == "auto" and not c.coordinator_address and not detected:
    return False
  timeout = c.initialization_timeout
  if timeout <= 0:
    raise MeshError(f"mesh.initialization_timeout must be positive seconds, "
                    f"got {timeout}")
  where = c.coordinator_address or detected or "cluster auto-detection"
  logging.info("jax.distributed: process %s of %s via %s, timeout %ss",
               c.process_id, c.num_processes, where, timeout)

  def give_up():
    print(f"error: jax.distributed did not start within "
          f"mesh.initialization_timeout={timeout}s (coordinator {where}, "
          f"{c.num_processes or '?'} processes, this is process "
          f"{c.process_id if c.process_id is not None else '?'}): a peer "
          f"never arrived or the coordinator is unreachable", file=sys.stderr,
          flush=True)
    os._exit(2)  # The main thread is stuck inside the C++ connect call.

  watchdog = threading.Timer(timeout, give_up)
  watchdog.daemon = True
  start = time.monotonic()
  watchdog.start()
  try:
    jax.distributed.initialize(
        coordinator_address=c.coordinator_address,
        num_processes=c.num_processes, process_id=c.process_id,
        initialization_timeout=timeout + 10)  # The watchdog goes first.
  except (ValueError, RuntimeError) as e:
    raise MeshError(f"jax.distributed.initialize failed ({where}): "
                    f"{str(e).splitlines()[0]}") from None
  finally:
    watchdog.cancel()
  logging.info("jax.distributed: process %d of %d up after %.1fs",
               jax.process_index(), jax.process_count(),
               time.monotonic() - start)
  return True


# ---------------------------------------------------------------- mesh


def create_mesh(mesh_config: ml_collections.ConfigDict,
                devices=None) -> jax.sharding.Mesh:
  """A (data, model) mesh; -1 on `data` takes the remaining devices.

  devices: the devices to lay out (default: all of them, every process's).
  """
  devices = jax.devices() if devices is None else list(devices)
  n = len(devices)
  data, model = mesh_config.data, mesh_config.model
  if model not in (1, 2):
    raise MeshError(f"mesh.model must be 1 (data parallel) or 2 (the "
                    f"paper's two-device tower split), got {model}")
  if data == -1:
    if n % model:
      raise MeshError(f"mesh.model={model} needs a device count divisible "
                      f"by {model}, this run has {n}")
    data = n // model
  if data < 1 or data * model != n:
    raise MeshError(f"mesh {data}x{model} (data x model) needs "
                    f"{data * model} devices, this run has {n}")
  return jax.make_mesh((data, model), (DATA, MODEL),
                       axis_types=(AxisType.Auto, AxisType.Auto),
                       devices=devices)


def tower_split(mesh=None, batch: int | None = None) -> bool:
  """Whether `mesh` (default: the current one) runs one tower per device.

  True on a (data, model) mesh with model=2, when the batch (if given)
  splits evenly over `data`; otherwise the forward is one program that
  XLA's partitioner places (correct, with other exchanges).
  """
  mesh = jax.sharding.get_abstract_mesh() if mesh is None else mesh
  return (not mesh.empty and {DATA, MODEL} <= set(mesh.axis_names)
          and mesh.shape[MODEL] == 2
          and (batch is None or batch % mesh.shape[DATA] == 0))


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Batches: split along `data`, each row on one data shard."""
  return NamedSharding(mesh, P(DATA))


def place(tree, shardings):
  """jax.device_put onto shardings that may span several processes.

  Every process holds the same full values (the same seed built them); each
  builds the shards of its own devices from them. On one process this is
  plain jax.device_put.
  """
  def one(x, s):
    if s.is_fully_addressable:
      return jax.device_put(x, s)
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      data = one(jax.random.key_data(x), s)
      return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, s, lambda i: host[i])

  return jax.tree.map(one, tree, shardings)


def local_batch_rows(mesh: jax.sharding.Mesh, global_batch: int) -> slice:
  """The rows of a global batch that this process's devices hold.

  The mesh decides, not the process count: on a mesh whose `model` axis
  spans processes, both processes of a tower pair need the same rows.
  """
  index = batch_sharding(mesh).devices_indices_map((global_batch,))
  mine = sorted({index[d][0].indices(global_batch)[:2] for d in index
                 if d.process_index == jax.process_index()})
  start, stop = mine[0][0], mine[-1][1]
  if sum(b - a for a, b in mine) != stop - start:
    raise MeshError("this process's data shards are not contiguous rows "
                    "of the batch; lay out the mesh with whole processes "
                    "along `data`")
  return slice(start, stop)


def param_spec(layer: str, leaf: str, shape) -> P:
  """The PartitionSpec of one parameter (or its momentum) on a model=2 mesh.

  Tower layers split their last (output) axis on `model`; fc8's kernel
  splits its first (input) axis; the rest (fc8's bias, step counters, RNG
  state) is replicated.
  """
  if layer in TOWER_LAYERS and len(shape) >= 1 and shape[-1] % 2 == 0 and (
      leaf in ("kernel", "bias", "scale", "mean", "var")):
    return P(*([None] * (len(shape) - 1)), MODEL)
  if (layer in INPUT_SPLIT_LAYERS and leaf == "kernel" and len(shape) == 2
      and shape[0] % 2 == 0):
    return P(MODEL, None)
  return P()


def _names(path) -> list[str]:
  return [k.key for k in path
          if isinstance(k, jax.tree_util.DictKey) and isinstance(k.key, str)]


def state_shardings(state, mesh: jax.sharding.Mesh):
  """A NamedSharding for every leaf of a model or optimizer state.

  The result has the structure of `state` (an nnx.State of Variables, or
  its abstract twin from nnx.eval_shape), so it can be given to
  jax.device_put, to jax.jit's shardings, or zipped with an abstract state
  as an orbax restore target. Optimizer leaves are found by the same
  (layer, name) path suffix as their parameters.
  """
  split = mesh.shape[MODEL] > 1

  def one(path, leaf):
    names = _names(path)
    if not split or len(names) < 2:
      return NamedSharding(mesh, P())
    return NamedSharding(mesh, param_spec(names[-2], names[-1],
                                          getattr(leaf, "shape", ())))

  return jax.tree.map_with_path(one, state)


# ---------------------------------------------------------------- towers


def run_towers(model, x: jax.Array, return_activations: bool):
  """model.forward with one tower per device of the `model` axis (paper,
  figure 2): (logits, activations or {}).

  Runs under jax.shard_map, manual over `data` and `model`: each device
  holds its rows of the batch and its tower's parameters (placed by
  param_spec), so conv1, the grouped conv2/conv4/conv5, the per-tower LRN
  and the pooling touch only local data. The only exchanges are the
  paper's four, at the layer table's gather and reduce rows: all-gathers of
  both towers' outputs (channel or unit axis) into conv3, fc6 and fc7, and
  for fc8, which holds the rows for its own fc7 units, an all-reduce of the
  two partial logits (the module docstring says why). Every device then
  holds the full logits, so the loss needs no further exchange. Plain
  GSPMD annotations would instead move data inside the grouped layers.

  Dropout masks are drawn outside the shard_map for the full (batch,
  units) shape, exactly as the one-program forward draws them, and each
  device applies its block: identical masks on every mesh.
  """
  dt = model.dtype
  params = {n: (getattr(model, n).kernel[...], getattr(model, n).bias[...])
            for n in layers.NAMES}
  param_specs = {n: tuple(param_spec(n, leaf, p.shape)
                          for leaf, p in zip(("kernel", "bias"), params[n]))
                 for n in layers.NAMES}
  batch = P(DATA)
  tower = P(DATA, None, None, MODEL)
  units = P(DATA, MODEL)
  masks, keep = {}, {}
  for name, dropout_name in layers.DROPOUTS.items():
    drop = getattr(model, dropout_name)
    if not (drop.deterministic or drop.rate == 0):
      shape = (x.shape[0], getattr(model, name).kernel.shape[-1])
      masks[name] = drop(jnp.ones(shape, dt)) != 0
      keep[name] = 1.0 - drop.rate

  def forward(x, params, masks):
    logits, acts = model.forward(x, _Tower(model, params, masks, keep))
    return logits, (acts if return_activations else {})

  act_specs = {}
  for l in layers.LAYERS:
    act_specs[l.name] = (tower if l.kind == "conv" else
                         batch if l.reduce else units)
    if l.pool:
      act_specs[layers.POOLED[l.name]] = tower
    if l.norm and model.norm == "lrn":  # LRN's input (lrn_stats.py).
      act_specs[l.name + "_lrn_input"] = tower
  run = jax.shard_map(
      forward, in_specs=(batch, param_specs, {k: units for k in masks}),
      out_specs=(batch, act_specs if return_activations else {}),
      axis_names={DATA, MODEL})
  return run(x, params, masks)


class _Tower:
  """The forward's hooks on one device of the tower split: this tower's
  kernels (one group: the local channels are one tower), the gathers and
  the fc8 sum over `model`, dropout from the masks drawn outside."""

  lrn_groups = 1

  def __init__(self, model, params, masks, keep):
    self.model, self.params, self.masks, self.keep = model, params, masks, keep
    self.ops = ops_lib.select(model.ops)

  def apply(self, spec, y):
    kernel, bias = self.params[spec.name]
    dt = self.model.dtype
    if kernel.ndim == 2:
      y = y @ kernel.astype(dt)
      if spec.reduce:  # Partial logits of this tower, summed.
        y = lax.psum(y, MODEL)
    else:  # This tower's channels only: one group here.
      m = getattr(self.model, spec.name)
      y = self.ops.conv(y, kernel.astype(dt), stride=m.stride,
                        padding=m.padding)
    return self.ops.add_bias(y, bias.astype(dt))

  def gather(self, y):  # Both towers' halves, on every device.
    return lax.all_gather(y, MODEL, axis=y.ndim - 1, tiled=True)

  def dropout(self, spec, y):
    if spec.name not in self.masks:
      return y
    return lax.select(self.masks[spec.name], y / self.keep[spec.name],
                      jnp.zeros_like(y))

  def batchnorm(self, spec, y):
    raise ValueError("BatchNorm runs as one program, not split into towers")
