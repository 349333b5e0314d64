"""torchvision AlexNet weights -> a checkpoint of the `torchvision` preset.

  python -m alexnet_jax.convert --torchvision=alexnet.pth --workdir=DIR \
      [--config=configs/torchvision.py]

Reads a torchvision `alexnet` state_dict that the user supplies (nothing is
downloaded; torch is needed for this command only) and writes step 0 of
DIR/checkpoints, with the workdir's config.json, so that `--mode=eval` and
`--mode=predict` with configs/torchvision.py use it. (`--mode=train` in
that workdir would train on from step 0 with the config's own schedule; it
is not a fine-tuning recipe.) Class names: the 1000 ImageNet synset ids
that TFDS ships, in sorted order, which is torchvision's class order.
Dropout sits after fc6/fc7 here, before them in torchvision: the same
network at evaluation.

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
  """TFDS's imagenet2012 label names (synset ids), or 'class i'."""
  try:
    # pylint: disable-next=g-import-not-at-top
    from tensorflow_datasets.datasets.imagenet2012 import imagenet_common
    with open(imagenet_common.label_names_file()) as f:
      names = [line.strip() for line in f if line.strip()]
  except (ImportError, OSError):
    names = []
  if len(names) != num_classes:
    names = [f"class {i}" for i in range(num_classes)]
  return names


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


def convert(config, state_dict: dict, workdir: str) -> str:
  """Writes the checkpoint; returns its directory."""
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


def load_state_dict(path: str) -> dict:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ConfigError("--torchvision needs PyTorch for reading the file "
                      "(pip install torch==2.13.0)") from None
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
  try:
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
  flags.DEFINE_string("workdir", None, "A new directory for the checkpoint.")
  config_flags.DEFINE_config_file("config", "configs/torchvision.py",
                                  "The model's config.", lock_config=True)
  flags.mark_flags_as_required(["torchvision", "workdir"])
  app.run(main)
