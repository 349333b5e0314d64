"""The paper's Figures 3 and 4 from a trained workdir.

  python -m experiments.figures filters --workdir=DIR [--out=F.png]
  python -m experiments.figures neighbours --workdir=DIR [--split=test] \
      [--queries=8] [--k=6] [--max_train=N] [--out=F.png]

filters (Figure 3): conv1's kernels as an image grid, one block per tower,
the towers side by side (the paper saw colour-agnostic kernels on one GPU
and colour-specific ones on the other). Each kernel is stretched to the
full 0-255 range on its own, then enlarged by a whole factor.

neighbours (Figure 4): for --queries images of --split (default: the
config's eval split), one of each class as far as the split has classes
(the first of each in evaluation order), the --k training images nearest
by Euclidean distance between fc7 features (the 4096-d output of fc7's
ReLU, eval mode), as a PNG grid (query, then its neighbours nearest first,
one row per query) and OUT.json with the indices (in the order the
training split is evaluated), labels and distances. The training split is
read twice: for its features, then for the neighbours' images only. Images are the
config's center crops, shown with the mean and std put back.

Both read the workdir's config.json (written by training) unless --config is
given, and the latest checkpoint (--best: the best).
"""

from __future__ import annotations

import json
import math
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags
import ml_collections

import alexnet_jax  # noqa: F401  (sets the XLA:CPU flags before jax starts)
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from alexnet_jax import input_pipeline
from alexnet_jax import layers
from alexnet_jax import preprocess
from alexnet_jax import sharding
from alexnet_jax import train
from alexnet_jax.sources import lazy_tf

FLAGS = flags.FLAGS
CELL = 44  # Target side, in pixels, of one kernel in the filters grid.
PAD = 2


# ---------------------------------------------------------------- loading


def load_config(workdir: str, config=None) -> ml_collections.ConfigDict:
  """config, or the one the workdir trained with (its config.json)."""
  if config is not None:
    return config
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise train.ConfigError(f"no config.json in {workdir}: give --config, or "
                            f"a workdir that training wrote")
  try:
    with open(path) as f:
      return ml_collections.ConfigDict(json.load(f))
  except json.JSONDecodeError as e:
    raise train.ConfigError(f"{path} is not JSON ({e.msg} at line {e.lineno}"
                            f"); give --config") from None


def restore(config, workdir: str, best: bool = False):
  """A train.Run with the workdir's latest (or best) checkpoint loaded."""
  return train.restore_trained(config, workdir, best=best)


def write_png(path: str, image: np.ndarray) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "wb") as f:
    f.write(lazy_tf().io.encode_png(image).numpy())


# ---------------------------------------------------------------- Figure 3


def filter_scale(kernel_size: int) -> int:
  return max(1, round(CELL / kernel_size))


def filters_grid(kernel: np.ndarray, towers: int, cols: int = 8) -> np.ndarray:
  """uint8 (H, W, 3): conv1's (k, k, 3, C) kernels, a block per tower.

  Block t holds output channels [t C/towers, (t+1) C/towers) in rows of
  `cols`; blocks are separated by 4 PAD of white.
  """
  k, _, _, c = kernel.shape
  s = filter_scale(k)
  per = c // towers
  cols = min(cols, per)
  rows = math.ceil(per / cols)
  cell = k * s + PAD
  block_w = cols * cell + PAD
  height = rows * cell + PAD
  width = towers * block_w + (towers - 1) * 4 * PAD
  out = np.full((height, width, 3), 255, np.uint8)
  for ch in range(c):
    t, i = divmod(ch, per)
    r, q = divmod(i, cols)
    w = kernel[..., ch]
    lo, hi = w.min(), w.max()
    w = (w - lo) / (hi - lo) if hi > lo else np.zeros_like(w)
    big = np.kron(np.round(255 * w), np.ones((s, s, 1))).astype(np.uint8)
    y = PAD + r * cell
    x = t * (block_w + 4 * PAD) + PAD + q * cell
    out[y:y + k * s, x:x + k * s] = big
  return out


def filters(config, workdir: str, out: str, best: bool = False) -> str:
  run, _ = restore(config, workdir, best)
  state = nnx.to_pure_dict(run.model_state)
  kernel = np.asarray(state[layers.LAYERS[0].name]["kernel"], np.float32)
  towers = layers.resolve_config(config.model).towers
  write_png(out, filters_grid(kernel, towers))
  return out


# ---------------------------------------------------------------- Figure 4


def nearest(train_features: jax.Array, query_features: jax.Array, k: int,
            chunk: int = 8192):
  """(distances, indices), each (queries, k), nearest first: the Euclidean
  distance from each query to every training feature, in chunks.

  Candidates come from |q|^2 - 2 q.t + |t|^2 (one matmul per chunk), which
  loses digits to cancellation when two features are close relative to
  their norms. So the features are first moved by the queries' mean (fc7's
  ReLU outputs share a large positive part; distances do not change), and
  the distances of the best few candidates per chunk are computed directly
  from q - t, so the order and the distances returned are those of the
  float32 differences.
  """
  shift = jnp.mean(jnp.asarray(query_features, jnp.float32), axis=0)
  q = jnp.asarray(query_features, jnp.float32) - shift
  q2 = jnp.sum(q * q, axis=1, keepdims=True)
  best_d = jnp.full((q.shape[0], 0), jnp.inf)
  best_i = jnp.zeros((q.shape[0], 0), jnp.int32)
  for start in range(0, train_features.shape[0], chunk):
    t = jnp.asarray(train_features[start:start + chunk], jnp.float32) - shift
    # Full float32 matmul: TF32 or bfloat16 passes on an accelerator would
    # spoil the cancellation further.
    cross = jnp.matmul(q, t.T, precision=jax.lax.Precision.HIGHEST)
    d2 = q2 - 2 * cross + jnp.sum(t * t, axis=1)[None]
    _, cand = jax.lax.top_k(-d2, min(4 * k + 16, t.shape[0]))
    exact = jnp.sqrt(jnp.sum((q[:, None, :] - t[cand]) ** 2, axis=-1))
    d = jnp.concatenate([best_d, exact], axis=1)
    i = jnp.concatenate([best_i, (cand + start).astype(jnp.int32)], axis=1)
    neg, pos = jax.lax.top_k(-d, min(k, d.shape[1]))
    best_d, best_i = -neg, jnp.take_along_axis(i, pos, axis=1)
  return np.asarray(best_d), np.asarray(best_i)


def _rows(run, split: str):
  """(index, fc7 feature, label, image) of each image of a split's center
  crops, in its evaluation order, computed a batch at a time."""
  config = run.config.copy_and_resolve_references()
  with config.unlocked():
    config.data.eval_split, config.data.eval_crops = split, 1
  graph = run.eval_graph

  @jax.jit
  def fc7(state, x):
    _, acts = nnx.merge(graph, state)(x, return_activations=True)
    return acts["fc7"].astype(jnp.float32)

  _, batches = input_pipeline.eval_iterator(config,
                                            image_size=run.image_size)
  seen = 0
  with jax.set_mesh(run.mesh):
    for batch in batches:
      batch = preprocess.finished_batch(config.data, batch)  # uint8: float.
      keep = np.asarray(batch["mask"], bool)
      feats = np.asarray(fc7(run.model_state, batch["image"]))[keep]
      labels = np.asarray(batch["label"])[keep]
      images = np.asarray(batch["image"])[keep]
      for j in range(len(labels)):
        yield seen + j, feats[j], int(labels[j]), images[j]
      seen += len(labels)


def split_features(run, split: str, limit: int = 0, images_of=None):
  """(fc7 features, labels, images) of a split's center crops, in its
  evaluation order; `limit` > 0 stops after that many. images_of: the
  indices whose images to keep ({index: image}; None: all, for the few
  queries), so a pass over a large training split keeps only features."""
  feats, labels, images = [], [], {}
  for i, feat, label, image in _rows(run, split):
    if limit and i >= limit:
      break
    feats.append(feat)
    labels.append(label)
    if images_of is None or i in images_of:
      images[i] = image
  return np.stack(feats), np.asarray(labels), images


def pick_queries(run, split: str, n: int):
  """(indices, fc7 features, labels, images) of n query images: the first
  image of each class in the split's evaluation order until n classes are
  found (reading stops there), then, for a split with fewer classes, its
  first other images in order."""
  first, others = {}, []
  for i, feat, label, image in _rows(run, split):
    if label not in first and len(first) < n:
      first[label] = (i, feat, label, image)
      if len(first) == n:
        break
    elif len(others) < n:
      others.append((i, feat, label, image))
  chosen = sorted(list(first.values()) + others[:n - len(first)],
                  key=lambda row: row[0])
  if not chosen:
    return [], np.zeros((0, 0)), np.zeros(0, int), []
  idx, feats, labels, images = zip(*chosen)
  return list(idx), np.stack(feats), np.asarray(labels), list(images)


def displayable(config, images: np.ndarray) -> np.ndarray:
  """uint8 pixels from preprocessed images (std and mean put back)."""
  d = config.data
  x = images * (np.array(d.std) if len(d.std) else 1.0)
  x = x + (np.array(d.mean) if len(d.mean) else 0.0)
  return np.clip(np.round(x), 0, 255).astype(np.uint8)


def neighbours_grid(rows: list[list[np.ndarray]], scale: int) -> np.ndarray:
  """uint8 grid: one row per query (query, gap, neighbours), each image
  enlarged `scale` times, PAD white between images."""
  size = rows[0][0].shape[0] * scale
  n = len(rows[0])
  cell = size + PAD
  out = np.full((len(rows) * cell + PAD, n * cell + 4 * PAD, 3), 255,
                np.uint8)
  for r, row in enumerate(rows):
    for c, image in enumerate(row):
      x = PAD + c * cell + (3 * PAD if c else 0)  # A gap after the query.
      big = np.kron(image, np.ones((scale, scale, 1), np.uint8))
      out[PAD + r * cell:PAD + r * cell + size, x:x + size] = big
  return out


def neighbours(config, workdir: str, out: str, *, split: str | None,
               queries: int, k: int, max_train: int = 0,
               best: bool = False) -> dict:
  """Figure 4 into out (PNG) and its .json; returns what the JSON holds."""
  run, meta = restore(config, workdir, best)
  names = meta.get("class_names") or []
  split = split or config.data.eval_split
  train_split = config.data.train_split
  # The queries first: a bad --split fails before the long training pass.
  query_i, query_f, query_y, query_x = pick_queries(run, split, queries)
  train_f, train_y, _ = split_features(run, train_split, max_train, set())
  dist, idx = nearest(train_f, query_f, k)
  _, _, train_x = split_features(run, train_split, max_train,
                                 {int(i) for i in idx.ravel()})
  label = lambda y: names[y] if 0 <= y < len(names) else str(int(y))
  result = {"split": split, "train_split": train_split,
            "train_examples": int(len(train_f)), "k": k, "queries": []}
  rows = []
  for q in range(len(query_f)):
    result["queries"].append({
        "index": query_i[q], "label": label(query_y[q]),
        "neighbours": [{"index": int(i), "label": label(train_y[i]),
                        "distance": float(d)}
                       for i, d in zip(idx[q], dist[q])]})
    rows.append([displayable(config, query_x[q])] +
                [displayable(config, train_x[int(i)]) for i in idx[q]])
  write_png(out, neighbours_grid(rows, max(1, 96 // run.image_size)))
  with open(os.path.splitext(out)[0] + ".json", "w") as f:
    json.dump(result, f, indent=1)
  return result


# ---------------------------------------------------------------- main


def main(argv):
  if len(argv) != 2 or argv[1] not in ("filters", "neighbours"):
    print("error: give one command, filters or neighbours", file=sys.stderr)
    return 2
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax's INFO lines.
  command, workdir = argv[1], FLAGS.workdir
  try:
    config = load_config(workdir, FLAGS.config)
    out = FLAGS.out or os.path.join(workdir, "figures", f"{command}.png")
    if command == "filters":
      filters(config, workdir, out, FLAGS.best)
    else:
      neighbours(config, workdir, out, split=FLAGS.split,
                 queries=FLAGS.queries, k=FLAGS.k,
                 max_train=FLAGS.max_train, best=FLAGS.best)
  except (train.ConfigError, input_pipeline.DataError,
          sharding.MeshError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {out}")
  return 0


if __name__ == "__main__":
  flags.DEFINE_string("workdir", None, "A trained workdir.")
  flags.DEFINE_string("out", None, "The PNG (default WORKDIR/figures/"
                      "COMMAND.png; neighbours also writes its .json).")
  flags.DEFINE_bool("best", False, "The best checkpoint, not the latest.")
  flags.DEFINE_string("split", None, "neighbours: the queries' split "
                      "(default: the config's data.eval_split).")
  flags.DEFINE_integer("queries", 8, "neighbours: how many query images.")
  flags.DEFINE_integer("k", 6, "neighbours: neighbours per query.")
  flags.DEFINE_integer("max_train", 0, "neighbours: search only the first N "
                       "training images (0: all).")
  config_flags.DEFINE_config_file("config", None, "A config file (default: "
                                  "the workdir's config.json).")
  flags.mark_flags_as_required(["workdir"])
  app.run(main)
