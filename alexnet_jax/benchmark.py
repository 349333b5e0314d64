"""Throughput of the train and eval steps, optionally against PyTorch.

  python -m alexnet_jax.benchmark --what=train --batch=64 --compare-torch
  python -m alexnet_jax.benchmark --what=eval --config=configs/cifar10.py \
      --config.model.width=1.0 --batch=128 --compare-torch --json
  python -m alexnet_jax.benchmark --what=input --config=configs/cifar10.py

The JAX steps are the project's own, built as training builds them
(`train.setup`, i.e. `create_train_state` + `nnx.split` + `make_steps`:
jitted, parameters and optimizer state donated), on the config's mesh, fed
one fixed device-resident batch, so that only the step is timed.
Compilation is timed separately, then a few warm-up steps run (the first
windows after compiling were 2-8x slower), then timed windows of several
steps; JAX and PyTorch windows alternate so that load from other
processes hits both alike. The table reports the median window.

GFLOP/s counts 2 x multiply-adds of every convolution and matmul in the
step's jaxpr (forward, and for train the backward convolutions and matmuls
too); elementwise work (ReLU, LRN, pooling, optimizer) is not counted. The
peak is a 4096x4096 `jnp.dot` in the step's compute dtype (with
`--config.half_precision=True` the one precision.py chooses for the device:
bfloat16, or float16 with its loss scale in the step), measured in the same
run (the best of its runs before and after the timed windows).

The PyTorch peers are the same network written with torch.nn (grouped
convs via groups=2, LRN per tower, same pools and dropout;
experiments/torch_peer.py, so --compare-torch runs from a checkout), 2
threads, one fixed batch, SGD with momentum and coupled weight decay; with
`--config.half_precision=True` under bfloat16 autocast. Their GFLOP/s use
the same FLOP count. torch is optional. `--torch_peers` picks them, all
timed in the same run (rows in parentheses):
  eager          (torch) eager, LRN's window sum as five shifted slices of
                 the squares (up to 35% faster here than `module`)
  module         (torch_module) eager with torch.nn.LocalResponseNorm
  channels_last  (torch_channels_last) eager, NHWC memory format
  compile        (torch_compile) torch.compile (inductor, C++ on a CPU);
                 its compile time, the first step, is reported apart
The report names the fastest peer and the ratio against it.
"""

from __future__ import annotations

import json
import math
import platform
import statistics
import sys
import time

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

import alexnet_jax  # noqa: F401  (sets the XLA:CPU flags before jax starts)
import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax import flops as flops_lib
from alexnet_jax import input_pipeline
from alexnet_jax import model as model_lib
from alexnet_jax import precision
from alexnet_jax import sharding
from alexnet_jax import train

FLAGS = flags.FLAGS
# The PyTorch peers, by --torch_peers name: row name and TorchStep options.
TORCH_PEERS = {
    "eager": ("torch", {}),
    "module": ("torch_module", {"lrn": "module"}),
    "channels_last": ("torch_channels_last", {"channels_last": True}),
    "compile": ("torch_compile", {"compile": True}),
}
PEER_LABELS = {
    "torch": "eager, LRN by shifted slices",
    "torch_module": "eager, torch.nn.LocalResponseNorm",
    "torch_channels_last": "eager, channels-last",
    "torch_compile": "torch.compile (inductor)",
}
flags.DEFINE_enum("what", "train", ["train", "eval", "input"],
                  "Which step to time.")
flags.DEFINE_integer("batch", None, "Batch size (default: the config's).")
flags.DEFINE_bool("compare_torch", False,
                  "Also time the same network in PyTorch, alternating.")
flags.DEFINE_bool("json", False, "Print one JSON object instead of a table.")
flags.DEFINE_integer("windows", 5, "Timed windows per framework.")
flags.DEFINE_integer("steps", 0, "Steps per window (0: enough for "
                     "--min_window_s, judged from the warm-up).")
flags.DEFINE_float("min_window_s", 1.0, "Target length of one window.")
flags.DEFINE_integer("warmup", 5, "Untimed steps after compiling (at least; "
                     "more while steps keep getting faster).")
flags.DEFINE_integer("torch_threads", 2, "torch.set_num_threads.")
flags.DEFINE_list("torch_peers", ["eager", "channels_last", "compile"],
                  f"PyTorch peers to time with --compare-torch, of "
                  f"{sorted(TORCH_PEERS)}.")
flags.DEFINE_integer("peak_size", 4096, "n of the n x n matmul that measures "
                     "the peak.")
config_flags.DEFINE_config_file(
    "config", "configs/default.py", "A config file (configs/*.py).",
    lock_config=True)


# ---------------------------------------------------------------- JAX side


class JaxStep:
  """The project's jitted train or eval step on one fixed batch."""

  def __init__(self, config, what: str, batch_size: int):
    self.what = what
    run = train.setup(config)  # What train_and_evaluate itself runs.
    mesh, self.params = run.mesh, run.num_params
    self.model_state, self.opt_state = run.model_state, run.opt_state
    train_step, eval_step = run.train_step, run.eval_step
    self.mesh = mesh
    size = model_lib.input_size(config.model)
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.standard_normal((batch_size, size, size, 3), np.float32),
        "label": rng.integers(0, config.model.num_classes, batch_size,
                              dtype=np.int32),
        "mask": np.ones(batch_size, bool)}  # Every row is a real image.
    with jax.set_mesh(mesh):
      self.batch = jax.device_put(batch, sharding.batch_sharding(mesh))
      if what == "train":
        fn = train_step
        self.extra = (jnp.float32(config.optim.learning_rate),)
        args = (self.model_state, self.opt_state, self.batch, *self.extra)
      else:
        fn = eval_step
        args = (self.model_state, self.batch)
      self.flops = flops_lib.count_flops(jax.make_jaxpr(fn)(*args).jaxpr)
      t = time.perf_counter()
      self.compiled = fn.lower(*args).compile()
      self.compile_s = time.perf_counter() - t
    cost = self.compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    self.xla_flops = float((cost or {}).get("flops", float("nan")))

  def run(self, steps: int):
    """Runs `steps` steps and waits for the last."""
    with jax.set_mesh(self.mesh):
      out = None
      for _ in range(steps):
        if self.what == "train":
          self.model_state, self.opt_state, out = self.compiled(
              self.model_state, self.opt_state, self.batch, *self.extra)
        else:
          out = self.compiled(self.model_state, self.batch)
      jax.block_until_ready(out)


# ---------------------------------------------------------------- torch side


def import_torch_or_exit():
  try:
    import torch  # noqa: F401
  except ImportError:
    print("error: --compare-torch needs PyTorch (pip install torch==2.13.0)",
          file=sys.stderr)
    sys.exit(2)
  try:
    from experiments import torch_peer  # noqa: F401
  except ImportError:
    print("error: --compare-torch needs the repository's "
          "experiments/torch_peer.py; run it from the repository root",
          file=sys.stderr)
    sys.exit(2)


# ---------------------------------------------------------------- timing


def _timed(fn, steps: int) -> float:
  t = time.perf_counter()
  fn(steps)
  return (time.perf_counter() - t) / steps


def benchmark(config, *, what: str = "train", batch_size: int | None = None,
              compare_torch: bool = False, windows: int = 5, steps: int = 0,
              min_window_s: float = 1.0, warmup: int = 5,
              torch_threads: int = 2, peak_size: int = 4096,
              torch_peers=("eager",)) -> dict:
  """Times the step; returns a dict of what was measured (see module doc)."""
  # One function on purpose (85 lines): the JAX and PyTorch windows must
  # alternate in one loop so that load from other processes hits both alike.
  batch_size = batch_size or config.batch_size
  with config.unlocked():
    config.batch_size = batch_size
  # The peak in the step's compute dtype: 16-bit matmuls run at several
  # times the float32 rate on GPUs, so MFU is against the matching one.
  try:
    prec = precision.choose(config)
  except ValueError as e:  # A half_precision_dtype that does not exist.
    raise train.ConfigError(str(e)) from None
  print(prec.describe(), file=sys.stderr, flush=True)  # stdout: --json's.
  peak_dtype = prec.compute_dtype
  peak = flops_lib.matmul_peak(peak_size, dtype=peak_dtype)
  runners = {"jax": JaxStep(config, what, batch_size)}
  first = {}
  if compare_torch:
    from experiments import torch_peer  # pylint: disable=g-import-not-at-top
    for peer in torch_peers:
      name, options = TORCH_PEERS[peer]
      try:  # torch.compile needs a C++ compiler; a peer that fails is left out.
        runners[name] = torch_peer.TorchStep(config, what, batch_size,
                                             torch_threads, **options)
        first[name] = _timed(runners[name].run, 1)
      except Exception as e:  # pylint: disable=broad-except
        runners.pop(name, None)
        why = (str(e).strip().splitlines() or [""])[0][:200]
        print(f"warning: PyTorch peer {name} failed ({type(e).__name__}: "
              f"{why}); left out", file=sys.stderr, flush=True)
  # Warm-up: XLA's first runs fault in buffers and thread pools; torch's
  # first 3-4 steps of a shape build oneDNN kernels (about 1 s each here,
  # more than a whole step of the small nets). Keep going while the last
  # step was well above the best one.
  per_step = {}
  for name, r in runners.items():
    if name not in first:
      first[name] = _timed(r.run, 1)
    seen = [_timed(r.run, 1) for _ in range(max(1, warmup))]
    while seen[-1] > 1.3 * min(seen) and len(seen) < 3 * warmup + 6:
      seen.append(_timed(r.run, 1))
    per_step[name] = min(seen)
  if steps <= 0:
    slowest = max(per_step.values())
    steps = max(1, math.ceil(min_window_s / slowest))
  times = {name: [] for name in runners}
  for _ in range(windows):  # Alternating windows share the machine's load.
    for name, r in runners.items():
      times[name].append(_timed(r.run, steps))
  # Other processes lower a single peak measurement: keep the better of two.
  peak = max(peak, flops_lib.matmul_peak(peak_size, dtype=peak_dtype))

  flops = runners["jax"].flops
  result = {
      "what": what, "batch": batch_size,
      "model": config.model.to_dict(), "half_precision": config.half_precision,
      "dtype": prec.dtype, "precision": prec.describe(),
      "params": runners["jax"].params,
      "flops_per_step": flops,
      "flops_source": "jaxpr: 2 x multiply-adds of convolutions and matmuls",
      "xla_cost_analysis_flops": runners["jax"].xla_flops,
      "matmul_peak_gflops": peak, "peak_size": peak_size,
      "peak_dtype": jnp.dtype(peak_dtype).name,
      "compile_s": runners["jax"].compile_s,
      "windows": windows, "steps_per_window": steps,
      "machine": _machine(), "rows": {}}
  for name in runners:
    med = statistics.median(times[name])
    result["rows"][name] = {
        "ms_per_step": 1e3 * med,
        "images_per_s": batch_size / med,
        "gflops": flops / med / 1e9,
        "pct_peak": 100 * flops / med / 1e9 / peak,
        "window_ms": [1e3 * t for t in times[name]],
        "first_step_ms": 1e3 * first[name]}
  peers = [name for name in runners if name != "jax"]
  if peers:
    # torch.compile compiles in its first step: that step less a timed one.
    if "torch_compile" in peers:
      result["rows"]["torch_compile"]["compile_s"] = (
          first["torch_compile"] - statistics.median(times["torch_compile"]))
    result["torch_params"] = runners[peers[0]].params
    jax_rate = result["rows"]["jax"]["images_per_s"]
    for name in peers:
      result[f"ratio_jax_over_{name}"] = (
          jax_rate / result["rows"][name]["images_per_s"])
    fastest = max(peers, key=lambda n: result["rows"][n]["images_per_s"])
    result["fastest_peer"] = fastest
    result["ratio_jax_over_fastest_peer"] = result[f"ratio_jax_over_{fastest}"]
  return result


def _machine() -> dict:
  info = {"platform": platform.platform(), "python": platform.python_version(),
          "jax": jax.__version__, "backend": jax.default_backend(),
          "devices": jax.device_count(),
          "device_kind": jax.devices()[0].device_kind}
  try:
    import os
    info["load_avg"] = os.getloadavg()
    info["cpu_count"] = os.cpu_count()
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          info["cpu"] = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  try:
    import torch
    info["torch"] = torch.__version__
  except ImportError:
    pass
  import flax
  info["flax"] = flax.__version__
  return info


def format_table(r: dict) -> str:
  """The human-readable report of `benchmark`'s result."""
  m = r["model"]
  prec = {"float32": "fp32", "bfloat16": "bf16 compute",
          "float16": "fp16 compute, loss scaling"}[r.get("dtype") or (
              "bfloat16" if r["half_precision"] else "float32")]
  lines = [
      f"{r['what']} step, batch {r['batch']}, {m['preset']} preset, width "
      f"{m['width']}, {r['params']:,} params, {prec}; "
      f"{r['machine'].get('cpu', '?')} ({r['machine']['backend']}, "
      f"{r['machine']['devices']} device(s)), load avg "
      f"{', '.join(f'{x:.2f}' for x in r['machine'].get('load_avg', ()))}",
      f"compile {r['compile_s']:.1f} s; median of {r['windows']} windows x "
      f"{r['steps_per_window']} steps; {r['flops_per_step'] / 1e9:.2f} "
      f"GFLOP/step ({r['flops_source']}); matmul peak "
      f"{r['matmul_peak_gflops']:.0f} GFLOP/s ({r['peak_size']}^2 "
      f"{r.get('peak_dtype', 'float32')} "
      "jnp.dot, this run)",
      "",
      f"{'':12s} {'images/s':>10s} {'ms/step':>10s} {'GFLOP/s':>9s} "
      f"{'% peak':>7s} {'first ms':>9s}"]
  for name, row in r["rows"].items():
    lines.append(f"{name:12s} {row['images_per_s']:10.1f} "
                 f"{row['ms_per_step']:10.1f} {row['gflops']:9.1f} "
                 f"{row['pct_peak']:7.1f} {row['first_step_ms']:9.0f}")
  for name, row in r["rows"].items():
    if name != "jax":
      lines.append(f"JAX / PyTorch: {r[f'ratio_jax_over_{name}']:.2f}x "
                   f"({PEER_LABELS.get(name, name)})")
    if "compile_s" in row:
      lines.append(f"  {name}: compile {row['compile_s']:.1f} s (its first "
                   "step, outside the timed windows)")
  if "fastest_peer" in r:
    lines.append(f"JAX / fastest PyTorch ({PEER_LABELS[r['fastest_peer']]}): "
                 f"{r['ratio_jax_over_fastest_peer']:.2f}x")
  return "\n".join(lines)


# ---------------------------------------------------------------- main


def run_input(config, batch_size, as_json):
  """--what=input: the pipeline next to a bare decode loop (input_benchmark)."""
  from alexnet_jax import input_benchmark  # pylint: disable=g-import-not-at-top
  try:
    input_benchmark.run(config, batch_size=batch_size, as_json=as_json)
  except input_pipeline.DataError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  config = FLAGS.config
  if FLAGS.what == "input":
    return run_input(config, FLAGS.batch or config.batch_size, FLAGS.json)
  if FLAGS.compare_torch:
    unknown = [p for p in FLAGS.torch_peers if p not in TORCH_PEERS]
    if unknown or not FLAGS.torch_peers:
      print(f"error: --torch_peers takes names of {sorted(TORCH_PEERS)}, "
            f"got {FLAGS.torch_peers}", file=sys.stderr)
      return 2
    import_torch_or_exit()
  try:
    result = benchmark(config, what=FLAGS.what, batch_size=FLAGS.batch,
                       compare_torch=FLAGS.compare_torch,
                       windows=FLAGS.windows, steps=FLAGS.steps,
                       min_window_s=FLAGS.min_window_s, warmup=FLAGS.warmup,
                       torch_threads=FLAGS.torch_threads,
                       peak_size=FLAGS.peak_size,
                       torch_peers=FLAGS.torch_peers)
  except (train.ConfigError, sharding.MeshError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(json.dumps(result) if FLAGS.json else format_table(result),
        flush=True)
  return 0


if __name__ == "__main__":
  # --compare-torch as spelled in the issue; absl spells it --compare_torch.
  sys.argv = [a.replace("--compare-torch", "--compare_torch")
              .replace("--nocompare-torch", "--nocompare_torch")
              for a in sys.argv]
  app.run(main)
