"""--mode=predict: the top-5 classes of image files, from a trained workdir.

  python -m alexnet_jax.main --mode=predict --config=configs/cifar10.py \
      --workdir=DIR --images=a.jpg,b.png [--best] [--json]

Loads the latest (or, with --best, the best) checkpoint that restores, as
--mode=eval does, and scores each image with the config's evaluation
preprocessing (preprocess.eval_image: the center crop, or with
data.eval_crops=10 the paper's ten crops, whose softmax is averaged). The
class names are the ones the run trained with (folder names, TFDS label
names), saved in every checkpoint's metadata, so no data set is needed.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from alexnet_jax import preflight
from alexnet_jax import preprocess
from alexnet_jax import train
from alexnet_jax.sources import lazy_tf

ConfigError = preflight.ConfigError
TOP_K = 5
# The formats tf.io.decode_image reads, by their first bytes: a file that is
# none of them is refused before TensorFlow logs a failed decode.
MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM")


def _is_image(data: bytes) -> bool:
  webp = data[:4] == b"RIFF" and data[8:12] == b"WEBP"
  return data.startswith(MAGIC) or webp


def load_images(config, paths: list[str], size: int) -> np.ndarray:
  """(N, size, size, 3) or (N, 10, size, size, 3) float32, preprocessed as
  the config evaluates; a missing or undecodable file is a ConfigError."""
  if not paths:
    raise ConfigError("--images is empty: give image files, e.g. "
                      "--images=a.jpg,b.png")
  preprocess.check_options(config, size)  # data.mean/std/eval_crops.
  tf = lazy_tf()
  out = []
  for path in paths:
    if not os.path.isfile(path):
      raise ConfigError(f"--images: no such file: {path}")
    with open(path, "rb") as f:
      data = f.read()
    not_image = ConfigError(f"--images: {path} is not an image that "
                            f"TensorFlow decodes (JPEG, PNG, GIF, BMP, "
                            f"WebP)")
    if not _is_image(data):
      raise not_image
    try:
      image = preprocess.eval_image(config.data, tf.constant(data), size,
                                    config.data.eval_crops)
    except (tf.errors.InvalidArgumentError, ValueError):  # A damaged file.
      raise not_image from None
    out.append(image.numpy())
  # uint8 crops (data.normalize_on_device): the mean and std as training's.
  return preprocess.finished_batch(config.data,
                                   {"image": np.stack(out)})["image"]


def _probabilities(run, images: np.ndarray) -> np.ndarray:
  """Softmax over the classes, averaged over the crops when there are 10."""
  graph = run.eval_graph

  @jax.jit
  def forward(state, x):
    model = nnx.merge(graph, state)
    if x.ndim == 5:
      b, crops = x.shape[:2]
      logits = model(x.reshape(b * crops, *x.shape[2:]))
      return jax.nn.softmax(logits.astype(jnp.float32)).reshape(
          b, crops, -1).mean(axis=1)
    return jax.nn.softmax(model(x).astype(jnp.float32))

  # In chunks of the batch size (the last padded), so that many images
  # neither fill the device nor compile once per count.
  b, out = run.config.batch_size, []
  with jax.set_mesh(run.mesh):
    for start in range(0, len(images), b):
      chunk = images[start:start + b]
      pad = np.zeros((b - len(chunk),) + chunk.shape[1:], chunk.dtype)
      probs = forward(run.model_state, np.concatenate([chunk, pad]))
      out.append(np.asarray(jax.device_get(probs))[:len(chunk)])
  return np.concatenate(out)


def predict(config: ml_collections.ConfigDict, workdir: str,
            paths: list[str], *, best: bool = False) -> list[dict]:
  """[{"image": path, "top5": [{"index", "label", "prob"}, ...]}, ...]."""
  preflight.check_config(config)
  run, meta = train.restore_trained(config, workdir, best=best)
  images = load_images(config, paths, run.image_size)
  names = meta.get("class_names") or [
      f"class {i}" for i in range(config.model.num_classes)]
  probs = _probabilities(run, images)
  k = min(TOP_K, probs.shape[1])
  results = []
  for path, p in zip(paths, probs):
    top = np.argsort(-p, kind="stable")[:k]
    results.append({"image": path, "top5": [
        {"index": int(i), "label": names[i], "prob": float(p[i])}
        for i in top]})
  return results


def format_results(results: list[dict], as_json: bool = False) -> str:
  if as_json:
    return json.dumps(results)
  lines = []
  for r in results:
    lines.append(r["image"])
    lines += [f"  {t['prob']:7.2%}  {t['label']} ({t['index']})"
              for t in r["top5"]]
  return "\n".join(lines)
