"""The prepared source: the 256x256 TFRecord shards of prepare.py.

data.source=prepared, data.path=DIR (what `python -m alexnet_jax.prepare
--out=DIR` wrote). A split becomes `Records` like the tfds and folder
sources, so preprocess.py's augmentation (random crops, flips, PCA lighting,
mean) and 10-crop evaluation apply unchanged; the images are already the
256x256 central squares, so with data.resize_size=256 nothing is resized
before cropping.

Each data shard (process) reads a contiguous, even slice of the split
(sizes differ by at most one; the shards were written in a fixed shuffled
order, so every slice holds every class). An epoch reads its pieces of the
shard files in an order that is a function of (seed, data shard, epoch),
interleaved 16 at a time by tf.data (parallel and deterministic), then
through a shuffle buffer (data.shuffle_buffer) seeded the same way.
The manifest is read, and every shard's size checked against it, before the
first step: a missing manifest or a missing or incomplete shard is an error
that says to rerun prepare.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct

from alexnet_jax.folders import DataError, SPLIT_ALIASES, _missing
from alexnet_jax.sources import Records, lazy_tf, mix_seed, plain_fn

CYCLE = 16  # Shard files read at once.


def _root(d) -> str:
  if not d.path:
    raise DataError("data.source=prepared needs data.path, the folder "
                    "written by python -m alexnet_jax.prepare --out=DIR")
  return os.path.expanduser(d.path)


def load_manifest(d) -> dict:
  """DIR/manifest.json; DataError when it is missing or unreadable."""
  root = _root(d)
  path = os.path.join(root, "manifest.json")
  if not os.path.isfile(path):
    more = (" (prepare was interrupted: rerun it with the same --out to "
            "finish)" if os.path.isfile(os.path.join(root, "plan.json"))
            else "")
    raise _missing(d, f"no manifest.json in {root}{more}: write it with "
                      f"python -m alexnet_jax.prepare --config=... "
                      f"--out={root}")
  try:
    with open(path) as f:
      manifest = json.load(f)
    manifest["splits"], manifest["class_names"]  # pylint: disable=pointless-statement
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise DataError(f"cannot read {path} ({e}); rerun python -m "
                    f"alexnet_jax.prepare with --out={root}") from None
  return manifest


def split_info(d, split: str) -> tuple[dict, dict]:
  """(manifest, its entry for split), every shard checked to be complete."""
  manifest = load_manifest(d)
  root = _root(d)
  entry = None
  for name in SPLIT_ALIASES.get(split, (split,)):
    entry = entry or manifest["splits"].get(name)
  if entry is None:
    raise DataError(f"{root} holds no split {split!r} (it has "
                    f"{', '.join(manifest['splits'])}): prepare it with "
                    f"--splits={split}")
  for shard in entry["shards"]:
    path = os.path.join(root, shard["file"])
    size = os.path.getsize(path) if os.path.exists(path) else None
    if size != shard["bytes"]:
      what = "missing" if size is None else (
          f"incomplete ({size} of {shard['bytes']} bytes)")
      raise DataError(f"shard {path} is {what}; rerun python -m "
                      f"alexnet_jax.prepare with --out={root} to rewrite it")
  return manifest, entry


def pieces(entry: dict, shard: int, num_shards: int):
  """(files, skips, takes) covering data shard `shard`'s even slice."""
  n = entry["num_examples"]
  a, b = shard * n // num_shards, (shard + 1) * n // num_shards
  files, skips, takes, first = [], [], [], 0
  for s in entry["shards"]:
    last = first + s["num_examples"]
    lo, hi = max(a, first), min(b, last)
    if lo < hi:
      files.append(s["file"])
      skips.append(lo - first)
      takes.append(hi - lo)
    first = last
  return files, skips, takes


def _parse(record):
  tf = lazy_tf()
  spec = {"image": tf.io.FixedLenFeature([], tf.string),
          "label": tf.io.FixedLenFeature([], tf.int64),
          "name": tf.io.FixedLenFeature([], tf.string)}
  ex = tf.io.parse_single_example(record, spec)
  return {"data": ex["image"], "label": tf.cast(ex["label"], tf.int32),
          "name": ex["name"]}


def records(config, split: str, shard: int, num_shards: int) -> Records:
  """One data shard's slice of a prepared split."""
  tf = lazy_tf()
  d = config.data
  manifest, entry = split_info(d, split)
  root = _root(d)
  files, skips, takes = pieces(entry, shard, num_shards)
  n = int(sum(takes))
  paths = [os.path.join(root, f) for f in files] or [""]
  table = {"file": tf.constant(paths),
           "skip": tf.constant(skips or [0], tf.int64),
           "take": tf.constant(takes or [0], tf.int64)}

  def read(piece):
    return tf.data.TFRecordDataset(piece["file"]).skip(piece["skip"]).take(
        piece["take"])

  ordered = tf.data.Dataset.from_tensor_slices(table).take(len(files))
  ordered = ordered.flat_map(plain_fn(read)).map(
      plain_fn(_parse), num_parallel_calls=tf.data.AUTOTUNE,
      deterministic=True)
  shuffle_seed = mix_seed(config.seed, 1, shard)
  buffer = max(1, min(d.shuffle_buffer, n))

  def epoch(e):
    key = tf.stack([tf.constant(shuffle_seed, tf.int64), e])
    order = tf.random.experimental.stateless_shuffle(
        tf.range(len(files), dtype=tf.int64), seed=key)
    these = tf.data.Dataset.from_tensor_slices(
        {k: tf.gather(v, order) for k, v in table.items()}).take(len(files))
    ds = these.interleave(plain_fn(read), cycle_length=CYCLE,
                          num_parallel_calls=tf.data.AUTOTUNE,
                          deterministic=True)
    ds = ds.shuffle(buffer, seed=shuffle_seed * 1_000_003 + e,
                    reshuffle_each_iteration=False)
    return ds.map(plain_fn(_parse), num_parallel_calls=tf.data.AUTOTUNE,
                  deterministic=True)

  names = tuple(manifest["class_names"])
  return Records(ordered, epoch, n, int(entry["num_examples"]),
                 int(manifest.get("num_classes", len(names))), names, False,
                 f"prepared {root} {split}")


def shard_files(d, split: str):
  """(TFRecord paths, their .idx paths, manifest, split entry) (DALI)."""
  manifest, entry = split_info(d, split)
  root = _root(d)
  files = [os.path.join(root, s["file"]) for s in entry["shards"]]
  index = [f[:-len(".tfrecord")] + ".idx" for f in files]
  missing = [i for i in index if not os.path.isfile(i)]
  if missing:
    raise DataError(f"index {missing[0]} is missing; rerun python -m "
                    f"alexnet_jax.prepare with --out={root}")
  return files, index, manifest, entry



def sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def verify(out: str) -> list[str]:
  """The shards of out/manifest.json that are missing or whose sha256
  differs from the manifest's (DataError without a manifest)."""
  manifest = load_manifest(_Path(out))
  wrong = []
  for entry in manifest["splits"].values():
    for shard in entry["shards"]:
      path = os.path.join(os.path.expanduser(out), shard["file"])
      if not os.path.isfile(path) or sha256(path) != shard["sha256"]:
        wrong.append(shard["file"])
  return wrong


class _Path:
  """The data config fields load_manifest reads, for a bare folder."""

  def __init__(self, path: str):
    self.path, self.hint = path, ""


def record_index(path: str) -> list[tuple[int, int]]:
  """(offset, length) of each record of a TFRecord file (DALI's index)."""
  out, offset = [], 0
  with open(path, "rb") as f:
    while header := f.read(8):
      (n,) = struct.unpack("<q", header)
      f.seek(4 + n + 4, 1)
      out.append((offset, 8 + 4 + n + 4))
      offset += 8 + 4 + n + 4
  return out
