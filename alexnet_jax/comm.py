"""What crosses devices, and what each device holds: --mode=comm.

Compiles (does not run) the forward pass and the training step for the
configured model, batch and mesh, then reads the compiled HLO for its
collectives (op, layer, forward or backward, count, bytes) and the compiled
step's memory analysis. Layers are found through the jax.named_scope that
AlexNet puts around each layer, which XLA keeps in each op's metadata.

Bytes are the size of a collective's result on one device (an all-gather of
two 48-channel halves counts the 96-channel result); a device receives the
part it did not already hold.
"""

from __future__ import annotations

import collections
import json
import math
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from alexnet_jax import finetune
from alexnet_jax import layers
from alexnet_jax import model as model_lib
from alexnet_jax import preprocess
from alexnet_jax import sharding
from alexnet_jax import steps
from alexnet_jax import train

COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter",
               "collective-permute", "all-to-all", "collective-broadcast",
               "ragged-all-to-all")
_OP = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(?P<shape>.*?)\s+"
                 r"(?P<op>" + "|".join(COLLECTIVES) + r")(?P<start>-start)?\(")
_ARRAY = re.compile(r"\b(?P<dtype>[a-z][a-z0-9]*)\[(?P<dims>[\d,]*)\]")
_OP_NAME = re.compile(r'op_name="(?P<name>[^"]*)"')
# AlexNet's weight layers, then cuda-convnet's others (cc_layers.py).
_CC_ONLY = ("local3", "local4", "fc64", "fc10")
_LAYER = re.compile(r"\b(conv[1-5]|fc[678]|bn[12]|local[34]|fc64|fc10)\b")
_GROUPS = re.compile(r"replica_groups=(?:\{\{(?P<list>[\d,]*)\}|"
                     r"\[\d+,(?P<iota>\d+)\]|"
                     r"mesh\[(?P<axes>[^\]]*)\]\s*\{(?P<over>[^}]*)\})")


def _group_size(line: str) -> int | None:
  """Devices per replica group of a collective (None: not stated)."""
  m = _GROUPS.search(line)
  if not m:
    return None
  if m["iota"]:
    return int(m["iota"])
  if m["list"] is not None:
    return len(m["list"].split(","))
  sizes = dict(re.findall(r"'(\w+)'=(\d+)", m["axes"]))
  return math.prod(int(sizes[a]) for a in re.findall(r"'(\w+)'", m["over"]))


def _moves_data(line: str) -> bool:
  """False for a collective over groups of one device (a no-op that XLA:CPU
  leaves in, e.g. the gradient sum over a data axis of size 1)."""
  size = _group_size(line)
  return size is None or size > 1


def _bytes(dtype: str, dims: str) -> int:
  """Bytes of an HLO array type such as f32[128,13,13,256] (pred: 1 byte)."""
  n = math.prod(int(d) for d in dims.split(",") if d)
  bits = re.match(r"[a-z]+(\d+)", dtype)
  return n * (int(bits[1]) if bits else 8) // 8


def collectives(hlo_text: str) -> list[dict]:
  """Every collective instruction of a compiled HLO module, one dict each.

  Keys: op, layer (the named layer scope; 'many' for an op XLA combined
  over several layers, '-' for none), pass ('fwd', or
  'bwd' for ops that come from differentiation), bytes (result, per device).
  """
  found = []
  for line in hlo_text.splitlines():
    m = _OP.match(line)
    if not m or not _moves_data(line):
      continue
    arrays = _ARRAY.findall(m["shape"])
    if m["start"] and m["op"] in ("all-gather", "collective-permute"):
      arrays = arrays[-1:]  # Async start: (operand, result); count the result.
    name = _OP_NAME.search(line)
    name = name["name"] if name else ""
    # One op can serve several layers (XLA combines gradient all-reduces).
    layers = sorted(set(_LAYER.findall(name)))
    layer = layers[0] if len(layers) == 1 else "many" if layers else "-"
    found.append({"op": m["op"], "layer": layer,
                  "pass": "bwd" if "transpose(" in name else "fwd",
                  "bytes": sum(_bytes(d, s) for d, s in arrays)})
  return found


def summarize(found: list[dict]) -> list[dict]:
  """Collectives grouped by (op, layer, pass) with count and total bytes."""
  groups = collections.OrderedDict()
  for c in found:
    key = (c["op"], c["layer"], c["pass"])
    g = groups.setdefault(key, dict(op=c["op"], layer=c["layer"],
                                    pass_=c["pass"], count=0, bytes=0))
    g["count"] += 1
    g["bytes"] += c["bytes"]
  order = [*layers.NAMES, *layers.BATCHNORMS.values(), *_CC_ONLY, "many",
           "-"]
  rows = sorted(groups.values(), key=lambda g: (
      g["pass_"] == "bwd", order.index(g["layer"]), g["op"]))
  return [{"op": g["op"], "layer": g["layer"], "pass": g["pass_"],
           "count": g["count"], "bytes": g["bytes"]} for g in rows]


def _device_bytes(abstract_tree, only=None) -> dict:
  """Bytes of a tree of sharded ShapeDtypeStructs held by each device.

  only: count only leaves inside Variables of this type (e.g. nnx.Param).
  """
  held = collections.Counter()
  variables = jax.tree.leaves(
      abstract_tree, is_leaf=lambda x: isinstance(x, nnx.Variable))
  for var in variables:
    if only is not None and not isinstance(var, only):
      continue
    leaf = var.get_value() if isinstance(var, nnx.Variable) else var
    itemsize = np.dtype(leaf.dtype).itemsize if not jax.dtypes.issubdtype(
        leaf.dtype, jax.dtypes.prng_key) else 8  # A threefry key: 2 x u32.
    for device, index in leaf.sharding.devices_indices_map(
        leaf.shape).items():
      shape = [len(range(*s.indices(n))) for s, n in zip(index, leaf.shape)]
      held[device] += math.prod(shape) * itemsize
  return held


def _abstract(state, shardings):
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      state, shardings)


def analyze(config: ml_collections.ConfigDict) -> dict:
  """Collectives of the compiled forward and train step, memory per device."""
  # Long (66 lines) because the report is one flat dict built from one
  # compile of each program; splitting it would pass the compiled objects
  # around for no reader's benefit.
  mesh = sharding.create_mesh(config.mesh)
  with jax.set_mesh(mesh):
    image_size = model_lib.input_size(config.model)
    # Abstract: nothing is allocated, even for the full paper model.
    model, optimizer, eval_graph = nnx.eval_shape(
        lambda: train.create_train_state(config))
    n_params = model_lib.count_params(model)
    model_graph, model_state = nnx.split(model)
    opt_graph, opt_state = nnx.split(optimizer)
    model_abs = _abstract(model_state,
                          sharding.state_shardings(model_state, mesh))
    opt_abs = _abstract(opt_state, sharding.state_shardings(opt_state, mesh))
    rows = sharding.batch_sharding(mesh)
    b = config.batch_size
    uint8 = bool(config.data.get("normalize_on_device"))
    batch_abs = {
        "image": jax.ShapeDtypeStruct((b, image_size, image_size, 3),
                                      jnp.uint8 if uint8 else jnp.float32,
                                      sharding=rows),
        "label": jax.ShapeDtypeStruct((b,), jnp.int32, sharding=rows),
        "mask": jax.ShapeDtypeStruct((b,), jnp.bool_, sharding=rows)}
    if uint8:  # The batches the input pipeline yields, finished in the step.
      batch_abs["shift"] = jax.ShapeDtypeStruct((b, 3), jnp.float32,
                                                sharding=rows)
    finish = preprocess.device_finish(config.data)
    train_step, _ = steps.make_steps(model_graph, opt_graph, eval_graph,
                                     wrt=finetune.trainable(config),
                                     finish=finish)
    forward = jax.jit(lambda s, x: nnx.merge(eval_graph, s)(finish(x)))
    fwd = forward.lower(model_abs, batch_abs["image"]).compile()
    rate = jax.ShapeDtypeStruct((), jnp.float32)
    step = train_step.lower(model_abs, opt_abs, batch_abs, rate).compile()

  mem = step.memory_analysis()
  params = _device_bytes(model_abs, only=nnx.Param)
  opt, data = _device_bytes(opt_abs), _device_bytes(batch_abs)
  coords = {d: (int(i), int(j)) for (i, j), d in np.ndenumerate(mesh.devices)}
  per_device = [{
      "device": d.id, "process": d.process_index, "data": coords[d][0],
      "model": coords[d][1], "params_bytes": params[d],
      "opt_state_bytes": opt[d], "batch_bytes": data[d],
      "temp_bytes": mem.temp_size_in_bytes,
      "total_bytes": (mem.argument_size_in_bytes + mem.output_size_in_bytes
                      - mem.alias_size_in_bytes + mem.temp_size_in_bytes)}
      for d in mesh.devices.flat]
  alexnet = config.model.get("family", "alexnet") == "alexnet"
  geometry = layers.resolve_config(config.model) if alexnet else None
  towers = geometry.towers if alexnet else 1
  return {
      "mesh": {"data": mesh.shape["data"], "model": mesh.shape["model"]},
      "devices": mesh.devices.size,
      "platform": mesh.devices.flat[0].platform,
      "batch_size": b, "image_size": image_size, "parameters": n_params,
      "towers": towers,
      "tower_split": bool(alexnet and geometry.tower_split
                          and mesh.shape["model"] == 2),
      "forward": summarize(collectives(fwd.as_text())),
      "train_step": summarize(collectives(step.as_text())),
      "memory": {
          "per_device": per_device,
          # The compiled step's own numbers (one SPMD program, per device).
          "train_step_analysis": {
              "argument_bytes": mem.argument_size_in_bytes,
              "output_bytes": mem.output_size_in_bytes,
              "alias_bytes": mem.alias_size_in_bytes,
              "temp_bytes": mem.temp_size_in_bytes}},
  }


def _mb(n: int) -> str:
  return f"{n / 2**20:,.1f}"


def format_report(r: dict) -> str:
  """The analysis as plain-text tables."""
  mesh = f"{r['mesh']['data']}x{r['mesh']['model']}"
  how = ("one tower per device (shard_map)" if r["tower_split"]
         else "data parallel" if r["mesh"]["model"] == 1
         else "placed by XLA's partitioner (GSPMD)")
  out = [f"mesh {mesh} (data x model) on {r['devices']} {r['platform']} "
         f"devices; batch {r['batch_size']} at {r['image_size']}px; "
         f"{r['parameters']:,} parameters, {r['towers']} tower(s): {how}"]
  for title, rows in (("forward", r["forward"]),
                      ("train step", r["train_step"])):
    total = sum(x["bytes"] for x in rows)
    count = sum(x["count"] for x in rows)
    out.append(f"\n{title}: {count} collectives, {_mb(total)} MiB per device")
    if rows:
      out.append(f"  {'op':<20}{'layer':<7}{'pass':<6}{'count':>6}"
                 f"{'bytes/device':>16}")
      for x in rows:
        out.append(f"  {x['op']:<20}{x['layer']:<7}{x['pass']:<6}"
                   f"{x['count']:>6}{x['bytes']:>16,}")
  out.append("\nmemory per device, compiled train step (MiB; the paper had "
             "3072 per GTX 580):")
  out.append(f"  {'device':>6}{'proc':>5}{'data':>5}{'model':>6}"
             f"{'params':>9}{'opt':>9}{'batch':>9}{'temp':>9}{'total':>9}")
  for d in r["memory"]["per_device"]:
    out.append(f"  {d['device']:>6}{d['process']:>5}{d['data']:>5}"
               f"{d['model']:>6}{_mb(d['params_bytes']):>9}"
               f"{_mb(d['opt_state_bytes']):>9}{_mb(d['batch_bytes']):>9}"
               f"{_mb(d['temp_bytes']):>9}{_mb(d['total_bytes']):>9}")
  out.append("  temp: activations, gradients and workspace of the step; "
             "total: arguments + outputs - donated + temp")
  out.append("collectives: bytes of the result on one device; layer '-': "
             "outside the network (loss and accuracy means); 'many': one "
             "op XLA combined over several layers")
  return "\n".join(out)


def report(config: ml_collections.ConfigDict, as_json: bool = False) -> str:
  """The --mode=comm output: a table, or JSON."""
  r = analyze(config)
  return json.dumps(r, indent=2) if as_json else format_report(r)
