"""Pre-flight: every check that can fail a run, before anything is compiled
or written to the workdir.

A run that would stop after an epoch on a missing split, a class count that
does not match the model, a workdir that is a file or a learning rate that
cannot work stops here instead, with one line naming what to fix. The
resumable checkpoint is checked by train.py right after (it needs the
placed model state), still before anything in the workdir changes.
"""

from __future__ import annotations

import math
import os

import ml_collections
from flax import nnx

from alexnet_jax import cc_layers
from alexnet_jax import input_pipeline
from alexnet_jax import layers
from alexnet_jax import model as model_lib
from alexnet_jax import precision
from alexnet_jax import sharding


class ConfigError(ValueError):
  """A config value that cannot work (a user error)."""


SCHEDULES = ("constant", "step", "plateau", "cosine")
DECAY_MODES = ("coupled", "decoupled", "none")


def _finite(x) -> bool:
  return isinstance(x, (int, float)) and math.isfinite(x)


def check_config(config: ml_collections.ConfigDict) -> None:
  """Values that no run can use: one ConfigError naming the field."""
  problems = []

  def need(ok, text):
    if not ok:
      problems.append(text)

  need(config.batch_size >= 1,
       f"batch_size must be positive, got {config.batch_size}")
  for name in ("log_every_steps", "checkpoint_every_steps",
               "max_checkpoints_to_keep"):
    need(config[name] >= 1, f"{name} must be >= 1, got {config[name]}")
  need(config.num_train_steps > 0 or (_finite(config.num_epochs) and
                                      config.num_epochs > 0),
       f"num_epochs must be > 0 when num_train_steps <= 0 (got num_epochs="
       f"{config.num_epochs}, num_train_steps={config.num_train_steps})")
  need(config.get("half_precision_dtype", "auto") in precision.DTYPES,
       f"half_precision_dtype must be one of {precision.DTYPES}, got "
       f"{config.get('half_precision_dtype')!r}")
  o = config.optim
  need(_finite(o.learning_rate) and o.learning_rate > 0,
       f"optim.learning_rate must be a positive number, got "
       f"{o.learning_rate}")
  need(_finite(o.momentum) and 0 <= o.momentum < 1,
       f"optim.momentum must be in [0, 1), got {o.momentum}")
  need(_finite(o.weight_decay) and o.weight_decay >= 0,
       f"optim.weight_decay must be >= 0, got {o.weight_decay}")
  need(o.weight_decay_mode in DECAY_MODES,
       f"optim.weight_decay_mode must be one of {DECAY_MODES}, got "
       f"{o.weight_decay_mode!r}")
  need(o.schedule in SCHEDULES,
       f"optim.schedule must be one of {SCHEDULES}, got {o.schedule!r}")
  need(_finite(o.warmup_epochs) and o.warmup_epochs >= 0,
       f"optim.warmup_epochs must be >= 0, got {o.warmup_epochs}")
  need(all(_finite(e) and e >= 0 for e in o.step_epochs),
       f"optim.step_epochs must be epochs >= 0, got {tuple(o.step_epochs)}")
  need(o.plateau_patience >= 1,
       f"optim.plateau_patience must be >= 1, got {o.plateau_patience}")
  need(_finite(o.plateau_factor) and 0 < o.plateau_factor <= 1,
       f"optim.plateau_factor must be in (0, 1], got {o.plateau_factor}")
  need(_finite(o.get("bias_lr_scale", 1.0)) and o.get("bias_lr_scale",
                                                       1.0) >= 0,
       f"optim.bias_lr_scale must be >= 0, got {o.get('bias_lr_scale')}")
  layer_wd = dict(o.get("layer_weight_decay") or {})
  bad = [f"{n}={v!r}" for n, v in layer_wd.items()
         if not (_finite(v) and v >= 0)]
  need(not bad, f"optim.layer_weight_decay must map layers to weight "
       f"decays >= 0, got {', '.join(bad)}")
  problems += finetune_problems(config)
  if problems:
    raise ConfigError("; ".join(problems))
  try:  # The model's own checks (names, sizes), without allocating it.
    abstract = nnx.eval_shape(lambda: model_lib.from_config(config.model,
                                                            rngs=nnx.Rngs(0)))
  except ValueError as e:
    raise ConfigError(str(e)) from None
  names = set(nnx.state(abstract, nnx.Param).keys())
  unknown = sorted(set(layer_wd) - names)
  if unknown:
    raise ConfigError(f"optim.layer_weight_decay names {', '.join(unknown)}, "
                      f"not layers of this model ({', '.join(sorted(names))})")


def finetune_problems(config: ml_collections.ConfigDict) -> list[str]:
  """The finetune block's (finetune.py) problems, as lines."""
  f = config.get("finetune")
  if f is None:
    return []
  names = layer_names(config.model)
  if not names:  # A net that does not exist: the model check names it.
    return []
  problems = []
  for field in ("keep", "freeze"):
    if isinstance(f[field], str) or any(n not in names for n in f[field]):
      problems.append(f"finetune.{field} must be a tuple of layer names "
                      f"({', '.join(names)}), got {f[field]!r}")
  bad = [f"{n}={s!r}" for n, s in f.lr_scale.items()
         if n not in names or not (_finite(s) and s >= 0)]
  if bad:
    problems.append(f"finetune.lr_scale must map layer names to numbers "
                    f">= 0, got {', '.join(bad)}")
  return problems


def layer_names(model_config) -> tuple[str, ...]:
  """The layers (model attributes with weights) of the configured family:
  AlexNet's conv1..fc8, or a cuda-convnet net's (cc_layers.py)."""
  if model_config.get("family", "alexnet") == "alexnet":
    return layers.NAMES
  return cc_layers.weight_names(model_config.get("net"))


def check_workdir(workdir: str) -> None:
  """The workdir is a directory, or can be created as one."""
  path = os.path.abspath(os.path.expanduser(workdir))
  if os.path.exists(path) and not os.path.isdir(path):
    raise ConfigError(f"--workdir {workdir} is a file, not a directory: "
                      f"give a new directory or a previous run's workdir")
  parent = path
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
    raise ConfigError(f"--workdir {workdir} cannot be created: {parent} is "
                      f"not a writable directory")


def check_mesh(config: ml_collections.ConfigDict):
  """The mesh fits the devices and the batch splits over its data axis."""
  mesh = sharding.create_mesh(config.mesh)
  family = config.model.get("family", "alexnet")
  if family != "alexnet" and mesh.shape[sharding.MODEL] > 1:
    raise ConfigError(f"mesh.model={mesh.shape[sharding.MODEL]} splits "
                      f"AlexNet's two towers; model.family={family} runs "
                      f"data parallel only: set --config.mesh.model=1")
  if config.batch_size % mesh.shape[sharding.DATA]:
    # The towers of a pair see the same rows: only `data` splits the batch.
    raise ConfigError(f"batch_size {config.batch_size} is not divisible by "
                      f"the mesh's {mesh.shape[sharding.DATA]} data shards")
  return mesh


def check_data(config: ml_collections.ConfigDict, *, train: bool,
               process_count: int = 1) -> dict[str, input_pipeline.Split]:
  """Every split the run reads is found and counted; classes match."""
  d = config.data
  size = model_lib.input_size(config.model)
  input_pipeline.check_options(config, size)
  if train and d.get("decoder", "tf") == "dali":  # Before the workdir is
    from alexnet_jax import dali, prepared  # pylint: disable=g-import-not-at-top
    dali.require()  # written to: DALI, a GPU, and options DALI does.
    dali.check(d, prepared.load_manifest(d))
  splits = ([d.train_split] if train else []) + [d.eval_split]
  if train and d.get("test_split"):  # Read once, at the end: found now.
    splits.append(d.test_split)
  out = {}
  for split in splits:
    info = input_pipeline.describe_split(config, split, size, process_count)
    if d.source != "synthetic" and info.num_classes != (
        config.model.num_classes):
      if d.source == "folder":
        where = f"folder {os.path.join(d.path, split)}"
      elif d.source == "prepared":
        where = f"prepared {d.path}"
      else:  # TFDS: data.path may be unset.
        where = f"TFDS {d.name}"
      raise input_pipeline.DataError(
          f"the data has {info.num_classes} classes ({where}), the model "
          f"{config.model.num_classes}: set --config.model.num_classes="
          f"{info.num_classes}")
    out[split] = info
  return out


def run(config: ml_collections.ConfigDict, workdir: str, *, train: bool,
        process_count: int = 1) -> dict[str, input_pipeline.Split]:
  """All of the above, in the order a user would fix them."""
  check_config(config)
  check_workdir(workdir)
  check_mesh(config)
  return check_data(config, train=train, process_count=process_count)
