"""torchvision AlexNet weights -> a checkpoint of the `torchvision` preset.

  python -m alexnet_jax.convert --torchvision=alexnet.pth --workdir=DIR \
      [--config=configs/torchvision.py]
  python -m alexnet_jax.convert --to_torchvision=out.pth --workdir=DIR \
      [--config=CONFIG] [--best]

Reads a torchvision `alexnet` state_dict that the user supplies (nothing is
downloaded; torch is needed for this command only) and writes step 0 of
DIR/checkpoints, with the workdir's config.json, so that `--mode=eval` and
`--mode=predict` with configs/torchvision.py use it, and fine-tuning
starts from it (`finetune.init_from=DIR`; configs/finetune_cifar10.py has a
`:torchvision` option). Class names: the 1000 ImageNet synset ids that TFDS
ships, in sorted order (torchvision's class order), each after the readable
name TFDS also ships for that index: "tench (n01440764)".
Dropout sits after fc6/fc7 here, before them in torchvision: the same
network at evaluation.

Export writes a run's latest (or best) checkpoint back as such a
state_dict (its config's model must be torchvision's network, with any
num_classes; give the config it trained with), which
`torchvision.models.alexnet(num_classes=...).load_state_dict` takes.

Layouts: torch convolutions are OIHW, ours HWIO; torch flattens pool5 as
(C, H, W) before fc6, we flatten NHWC as (H, W, C), so fc6's rows are
permuted; Linear weights are (out, in), ours (in, out).
"""

from __future__ import annotations

import os
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags
import numpy as np
from flax import nnx

from alexnet_jax import checkpoint as checkpoint_lib
from alexnet_jax import layers
from alexnet_jax import sharding
from alexnet_jax import train

ConfigError = train.ConfigError
# Our layers (conv1..fc8, in table order) -> torchvision's modules.
TORCHVISION_KEYS = dict(zip(layers.NAMES, (
    "features.0", "features.3", "features.6", "features.8", "features.10",
    "classifier.1", "classifier.4", "classifier.6")))


def imagenet_names(num_classes: int) -> list[str]:
  """'tench (n01440764)', ...: the readable ImageNet-1k names and TFDS's
  imagenet2012 label names (synset ids) for 1000 classes; 'class i'
  otherwise. The synset ids alone when the readable list is missing."""
  # pylint: disable=g-import-not-at-top
  try:
    from tensorflow_datasets.datasets.imagenet2012 import imagenet_common
    with open(imagenet_common.label_names_file()) as f:
      synsets = [line.strip() for line in f if line.strip()]
  except (ImportError, OSError):
    synsets = []
  if len(synsets) != num_classes or num_classes != 1000:
    return [f"class {i}" for i in range(num_classes)]
  try:  # TFDS keeps the standard index -> name list with SI-Score.
    from tensorflow_datasets.datasets.siscore import labels
    readable = list(labels.IMAGENET_LABELS_LIST)
  except (ImportError, AttributeError):
    readable = []
  if len(readable) != len(synsets):
    return synsets
  return [f"{name.split(',')[0]} ({synset})"
          for name, synset in zip(readable, synsets)]


def from_torchvision(state_dict: dict, geometry) -> dict:
  """{layer: {"kernel", "bias"}} float32 arrays in our layouts.

  ConfigError names a missing key or a shape that does not fit.
  """
  for name, key in TORCHVISION_KEYS.items():
    for part in ("weight", "bias"):
      if f"{key}.{part}" not in state_dict:
        raise ConfigError(f"the state_dict has no {key}.{part} (torchvision "
                          f"alexnet's {name}); is it torchvision's alexnet?")
  side, c5 = geometry.stage_sizes[-1], geometry.channels[-1]
  first_fc = next(l.name for l in layers.LAYERS if l.kind == "fc")
  out = {}
  for name, key in TORCHVISION_KEYS.items():
    w = np.asarray(state_dict[f"{key}.weight"], np.float32)
    b = np.asarray(state_dict[f"{key}.bias"], np.float32)
    if w.ndim == 4:
      kernel = w.transpose(2, 3, 1, 0)  # OIHW -> HWIO.
    elif name == first_fc:  # fc6's rows (C, H, W) -> (H, W, C).
      if w.shape[1] != c5 * side * side:
        raise ConfigError(f"{key}.weight has shape {w.shape}; fc6 of this "
                          f"model takes {c5}x{side}x{side} = "
                          f"{c5 * side * side} inputs")
      kernel = w.reshape(w.shape[0], c5, side, side).transpose(
          2, 3, 1, 0).reshape(-1, w.shape[0])
    else:
      kernel = w.T
    out[name] = {"kernel": kernel, "bias": b}
  return out


def to_torchvision(params: dict, geometry) -> dict:
  """{torchvision key: float32 array}: from_torchvision undone."""
  side, c5 = geometry.stage_sizes[-1], geometry.channels[-1]
  first_fc = next(l.name for l in layers.LAYERS if l.kind == "fc")
  out = {}
  for name, key in TORCHVISION_KEYS.items():
    kernel = np.asarray(params[name]["kernel"], np.float32)
    if kernel.ndim == 4:
      w = kernel.transpose(3, 2, 0, 1)  # HWIO -> OIHW.
    elif name == first_fc:  # fc6's rows (H, W, C) -> (C, H, W).
      w = kernel.reshape(side, side, c5, -1).transpose(3, 2, 0, 1).reshape(
          kernel.shape[1], -1)
    else:
      w = kernel.T
    out[f"{key}.weight"] = np.ascontiguousarray(w)
    out[f"{key}.bias"] = np.asarray(params[name]["bias"], np.float32)
  return out


def _torchvision_geometry(config):
  """The config's geometry; ConfigError unless it is torchvision's network."""
  try:
    geometry = layers.resolve_config(config.model)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  m = config.model
  if (config.model.preset != "torchvision" or m.activation != "relu"
      or geometry != layers.resolve(preset="torchvision")):
    raise ConfigError("the config's model must be torchvision's network "
                      "(configs/torchvision.py: preset torchvision with its "
                      "own norm, towers, width, pooling and conv1)")
  return geometry


def export(config, workdir: str, path: str, *, best: bool = False) -> int:
  """Writes the workdir's latest (or best) checkpoint as a torchvision
  alexnet state_dict at `path`; returns the checkpoint's step."""
  geometry = _torchvision_geometry(config)
  torch = _torch()
  if os.path.exists(path):
    raise ConfigError(f"--to_torchvision: {path} exists; give a new file")
  run, meta = train.restore_trained(config, workdir, best=best)
  params = jax.device_get(nnx.to_pure_dict(run.model_state))
  state_dict = {k: torch.from_numpy(np.array(v)) for k, v in  # Writable.
                to_torchvision(params, geometry).items()}
  torch.save(state_dict, path)
  return meta["step"]


def convert(config, state_dict: dict, workdir: str) -> str:
  """Writes the checkpoint; returns its directory."""
  geometry = _torchvision_geometry(config)
  if os.path.isdir(os.path.join(workdir, "checkpoints")):
    raise ConfigError(f"{workdir} already holds checkpoints; give a new "
                      f"--workdir")
  params = from_torchvision(state_dict, geometry)
  run = train.setup(config)
  pure = nnx.to_pure_dict(run.model_state)
  for name, arrays in params.items():
    for part, value in arrays.items():
      have = tuple(pure[name][part].shape)
      if value.shape != have:
        raise ConfigError(f"{TORCHVISION_KEYS[name]}: shape {value.shape} "
                          f"does not fit {name} {part} {have}: "
                          f"model.num_classes or the preset differs")
      pure[name][part] = value
  nnx.replace_by_pure_dict(run.model_state, pure)
  os.makedirs(workdir, exist_ok=True)
  train.write_config(config, workdir)
  ckpts = checkpoint_lib.Checkpoints(workdir, max_to_keep=1)
  try:
    meta = {"step": 0, "best_eval_top1_error": None, "eval_pending": False,
            "model_config": config.model.to_dict(),
            "class_names": imagenet_names(config.model.num_classes),
            "imported_from": "torchvision"}
    ckpts.save(0, checkpoint_lib.run_state(run), meta)
    ckpts.wait()
    return ckpts.directory()
  finally:
    ckpts.close()


def _torch():
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ConfigError("reading and writing .pth files needs PyTorch "
                      "(pip install torch==2.13.0)") from None
  return torch


def load_state_dict(path: str) -> dict:
  torch = _torch()
  if not os.path.isfile(path):
    raise ConfigError(f"--torchvision: no such file: {path}")
  try:
    sd = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(f"--torchvision: {path} is not a torch state_dict "
                      f"({type(e).__name__})") from None
  if not isinstance(sd, dict):
    raise ConfigError(f"--torchvision: {path} holds a {type(sd).__name__}, "
                      f"not a state_dict")
  return {k: v.float().numpy() for k, v in sd.items()
          if hasattr(v, "float")}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  if (FLAGS.torchvision is None) == (FLAGS.to_torchvision is None):
    print("error: give one of --torchvision=FILE.pth (import) and "
          "--to_torchvision=FILE.pth (export)", file=sys.stderr)
    return 2
  try:
    if FLAGS.to_torchvision:
      step = export(FLAGS.config, FLAGS.workdir, FLAGS.to_torchvision,
                    best=FLAGS.best)
      print(f"wrote {FLAGS.to_torchvision} (torchvision alexnet state_dict "
            f"of step {step} of {FLAGS.workdir})")
      return 0
    where = convert(FLAGS.config, load_state_dict(FLAGS.torchvision),
                    FLAGS.workdir)
  except (ConfigError, sharding.MeshError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {where}/0 (torchvision weights); use it with "
        f"--config=configs/torchvision.py --workdir={FLAGS.workdir}")
  return 0


FLAGS = flags.FLAGS

if __name__ == "__main__":
  flags.DEFINE_string("torchvision", None, "A torchvision alexnet state_dict "
                      "(.pth).")
  flags.DEFINE_string("to_torchvision", None, "Export: write the workdir's "
                      "checkpoint as a torchvision alexnet state_dict here.")
  flags.DEFINE_bool("best", False, "Export the best checkpoint instead of "
                    "the latest.")
  flags.DEFINE_string("workdir", None, "Import: a new directory for the "
                      "checkpoint; export: the run to export.")
  config_flags.DEFINE_config_file("config", "configs/torchvision.py",
                                  "The model's config (export: the one the "
                                  "run trained with).", lock_config=True)
  flags.mark_flags_as_required(["workdir"])
  app.run(main)
