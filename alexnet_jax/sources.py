"""Data sources: where the examples of a split come from.

  synthetic  learnable, deterministic images: one smooth random prototype per
             class plus Gaussian noise; no files.
  tfds       any TFDS data set by name (data.name, data_dir, manual_dir); it
             is prepared from manual_dir when the builder needs manual files
             (imagenet2012) and downloaded only if data.download=True.
  folder     data.path/<split>/<class>/*.jpg|jpeg|png, labels from the class
             folder names of the training split, sorted (or only the
             folders data.classes names, labelled in its order).
  prepared   data.path holds the 256x256 TFRecord shards and manifest that
             `python -m alexnet_jax.prepare` wrote (reader: prepared.py).

A tfds, folder or prepared split becomes `Records`: one data shard's
disjoint slice of the split as tf.data elements (encoded image bytes or a
file name, the label), shuffled per epoch as a function of (seed, shard, epoch). A run has
as many data shards as distinct row slices of the global batch (usually one
per process; the processes of a tower pair read the same shard).
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys

import numpy as np
from absl import logging

# The folder source's listing (and DataError) live in folders.py.
from alexnet_jax.folders import DataError, IMAGE_EXTENSIONS  # noqa: F401
from alexnet_jax.folders import _missing, list_folder, split_where

SOURCES = ("synthetic", "tfds", "folder", "prepared")


@dataclasses.dataclass(frozen=True)
class Split:
  """What the training loop needs to know about one split."""
  num_examples: int  # In the whole split, over all processes.
  num_classes: int
  image_size: int
  class_names: tuple[str, ...] = ()


def _import_tf_quietly():
  """import tensorflow, with what its C++ side prints while loading kept
  off stderr: on some CPUs (AVX-512) absl's "All log messages before
  absl::InitializeLog() ..." and INFO lines (oneDNN's notice, the CPU
  feature guard), which TF_CPP_MIN_LOG_LEVEL does not silence and which
  would stand before a command's one-line error. An import that fails still
  raises its Python error."""
  if "tensorflow" in sys.modules or os.environ.get(
      "TF_CPP_MIN_LOG_LEVEL") == "0":  # Loaded, or the user wants it all.
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    return tf
  sys.stderr.flush()
  saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
  try:
    os.dup2(devnull, 2)
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
  finally:
    os.dup2(saved, 2)
    os.close(saved)
    os.close(devnull)
  return tf


def lazy_tf():
  """TensorFlow, imported on first use (synthetic runs never pay for it)."""
  tf = _import_tf_quietly()
  if not getattr(lazy_tf, "done", False):
    lazy_tf.done = True
    try:
      # tf.data only runs on the host; a GPU build of TF must leave the
      # accelerators to JAX.
      tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TF already started (then it is the caller's).
      pass
  return tf


def plain_fn(fn):
  """fn for tf.data without autograph: it has no Python control flow on
  tensors, and autograph cannot convert some closures (a noisy warning)."""
  return lazy_tf().autograph.experimental.do_not_convert(fn)


def mix_seed(*parts: int) -> int:
  """A 31-bit integer mixing parts (seed, purpose, data shard)."""
  state = np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts])
  return int(state.generate_state(1, np.uint32)[0] >> 1)


# ---------------------------------------------------------------- synthetic


class Synthetic:
  """Deterministic, learnable images: example i is a function of (seed, i).

  Each class has a prototype (a random 4x4 colour pattern, upsampled); an
  example is its class's prototype plus N(0, noise^2) pixel noise, so a
  network can learn the task but not from the label alone.
  """

  def __init__(self, *, num_examples: int, num_classes: int, image_size: int,
               noise: float, seed: int, split: str):
    self.num_examples, self.num_classes = num_examples, num_classes
    self.image_size, self.noise = image_size, noise
    self.seed = [seed, {"train": 0, "eval": 1}[split]]
    protos = np.random.default_rng(seed).normal(
        size=(num_classes, 4, 4, 3)).astype(np.float32)
    idx = np.arange(image_size) * 4 // image_size
    self.prototypes = protos[:, idx][:, :, idx]

  def examples(self, indices: np.ndarray):
    """Images and labels of the examples with these indices."""
    labels = np.empty(len(indices), np.int32)
    images = np.empty((len(indices), self.image_size, self.image_size, 3),
                      np.float32)
    for row, i in enumerate(indices):
      rng = np.random.default_rng(self.seed + [int(i)])
      labels[row] = rng.integers(self.num_classes)
      images[row] = self.prototypes[labels[row]] + self.noise * rng.normal(
          size=images.shape[1:])
    return images, labels


def synthetic_source(config, split: str, image_size: int) -> Synthetic:
  d = config.data
  n = d.num_train_examples if split == "train" else d.num_eval_examples
  if n <= 0:
    raise DataError(f"data.num_{split}_examples must be positive, got {n}")
  return Synthetic(num_examples=n, num_classes=config.model.num_classes,
                   image_size=image_size, noise=d.synthetic_noise,
                   seed=config.seed, split=split)


def synthetic_train(config, data, rows, start_step):
  step = start_step
  while True:
    first = step * config.batch_size
    idx = (first + np.arange(config.batch_size)[rows]) % data.num_examples
    images, labels = data.examples(idx)
    yield {"image": images, "label": labels, "mask": np.ones(len(idx), bool)}
    step += 1


def synthetic_eval(config, data, rows):
  for first in range(0, data.num_examples, config.batch_size):
    idx = (first + np.arange(config.batch_size))[rows]
    mask = idx < data.num_examples
    images, labels = data.examples(np.where(mask, idx, 0))
    if config.data.eval_crops == 10:
      # The image is already image_size square: its 5 crops are itself.
      images = np.stack([images] * 5 + [images[:, :, ::-1]] * 5, axis=1)
    yield {"image": images, "label": labels, "mask": mask}


# ---------------------------------------------------------------- records


@dataclasses.dataclass
class Records:
  """One data shard's disjoint slice of a split, as tf.data elements.

  Elements are {'data': encoded image, or a file path if read_files,
  'label': int32, 'name': str (for reports)}.
  """
  ordered: object  # tf.data.Dataset in a fixed order.
  epoch: object  # epoch (int64 tensor) -> the slice in that epoch's order.
  num_local: int
  num_examples: int  # Whole split.
  num_classes: int
  class_names: tuple[str, ...]
  read_files: bool
  where: str  # For messages.


def _folder_records(config, split: str, shard: int,
                    num_shards: int) -> Records:
  tf = lazy_tf()
  d = config.data
  paths, labels, names = list_folder(d, split)
  total = len(paths)
  # A strided slice: each shard sees every class, and the slices are
  # disjoint with sizes differing by at most one.
  paths = paths[shard::num_shards]
  labels = labels[shard::num_shards]
  n = len(paths)
  paths_t, labels_t = tf.constant(paths or [""]), tf.constant(
      labels if n else np.zeros(1, np.int32))
  ordered = tf.data.Dataset.from_tensor_slices(
      {"data": paths_t, "label": labels_t, "name": paths_t}).take(n)
  shuffle_seed = mix_seed(config.seed, 1, shard)

  def epoch(e):
    # A full permutation of the slice, a function of (seed, shard, epoch).
    key = tf.stack([tf.constant(shuffle_seed, tf.int64), e])
    order = tf.random.experimental.stateless_shuffle(
        tf.range(n, dtype=tf.int64), seed=key)
    # One gather per epoch: a map gathering one path per element is the
    # slowest stage of the pipeline on small images.
    paths = tf.gather(paths_t, order)
    return tf.data.Dataset.from_tensor_slices(
        {"data": paths, "label": tf.gather(labels_t, order), "name": paths})

  return Records(ordered, epoch, n, total, len(names), names, True,
                 split_where(d, split))


def _one_line(text: str) -> str:
  text = " ".join(str(text).split())
  first = re.split(r"(?<=\.)\s", text, maxsplit=1)[0]
  return first[:300]


def _tfds_builder(d, num_shards: int):
  """The TFDS builder, prepared; DataError when it cannot be without asking."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  data_dir = os.path.expanduser(d.data_dir) if d.data_dir else None
  try:
    builder = tfds.builder(d.name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise DataError(f"no TFDS data set named {d.name!r} (data.name)") from None
  if builder.is_prepared():
    return builder
  where = builder.data_dir
  instructions = getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None)
  if num_shards > 1:
    raise _missing(d, f"TFDS {d.name} is not prepared in {where}; prepare it "
                      "once before a multi-process run (run this config on "
                      "one process first)")
  if instructions:
    manual = os.path.expanduser(d.manual_dir) if d.manual_dir else None
    if not manual or not os.path.isdir(manual) or not os.listdir(manual):
      raise _missing(d, f"TFDS {d.name} is not prepared in {where} and "
                        f"data.manual_dir ({d.manual_dir or 'unset'}) does "
                        f"not hold its files: {_one_line(instructions)}")
    config = tfds.download.DownloadConfig(manual_dir=manual)
  elif d.download:
    config = None
  else:
    raise _missing(d, f"TFDS {d.name} is not prepared in {where}; set "
                      "--config.data.download=True to download it, or "
                      "data.data_dir to where it is prepared")
  logging.warning("preparing TFDS %s in %s (once)", d.name, where)
  try:
    builder.download_and_prepare(download_config=config)
  except Exception as e:  # pylint: disable=broad-except
    # Missing or broken manual files surface as assorted exceptions.
    raise DataError(f"cannot prepare TFDS {d.name}: {_one_line(e)}") from None
  return builder


def _tfds_records(config, split: str, shard: int,
                  num_shards: int) -> Records:
  tf = lazy_tf()
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  d = config.data
  builder = _tfds_builder(d, num_shards)
  features = builder.info.features
  if "image" not in features or "label" not in features:
    raise DataError(f"TFDS {d.name} has no 'image' and 'label' features "
                    f"(it has {sorted(features.keys())})")
  local_split = (split if num_shards == 1 else
                 tfds.even_splits(split, n=num_shards)[shard])

  def load(s):
    try:
      return builder.as_dataset(
          split=s, shuffle_files=False,
          decoders={"image": tfds.decode.SkipDecoding()},
          read_config=tfds.ReadConfig(add_tfds_id=True))
    except (KeyError, ValueError, AssertionError) as e:
      raise DataError(f"TFDS {d.name} has no split {split!r} "
                      f"({_one_line(e)})") from None

  def count(ds):
    n = int(ds.cardinality())
    if n < 0:  # Unknown: count the records (no decoding).
      n = int(ds.reduce(0, lambda c, _: c + 1))
    return n

  raw = load(local_split)
  n = count(raw)
  total = n if num_shards == 1 else count(load(split))
  ordered = raw.map(lambda ex: {"data": ex["image"],
                                "label": tf.cast(ex["label"], tf.int32),
                                "name": ex["tfds_id"]})
  shuffle_seed = mix_seed(config.seed, 1, shard)
  buffer = max(1, min(d.shuffle_buffer, n))

  def epoch(e):
    # TFDS files are shuffled when prepared; a buffer reshuffles per epoch
    # with a seed that is a function of (seed, shard, epoch).
    return ordered.shuffle(buffer, seed=shuffle_seed * 1_000_003 + e,
                           reshuffle_each_iteration=False)

  label = features["label"]
  names = tuple(getattr(label, "names", None) or ())
  return Records(ordered, epoch, n, total, int(label.num_classes), names,
                 False, f"TFDS {d.name} {split}")


def describe_split(config, split: str, image_size: int,
                   num_shards: int = 1) -> Split:
  """Size and class count of a split, found without decoding any image.

  Raises DataError when the split cannot be found (every split a run reads
  is described before its first step; see preflight.py).
  """
  d = config.data
  if d.source == "synthetic":
    data = synthetic_source(config, "train" if split == d.train_split else "eval",
                      image_size)
    return Split(data.num_examples, data.num_classes, image_size)
  if d.source == "folder":
    paths, _, names = list_folder(d, split)
    return Split(len(paths), len(names), image_size, names)
  if d.source == "prepared":
    from alexnet_jax import prepared  # pylint: disable=g-import-not-at-top
    manifest, entry = prepared.split_info(d, split)
    names = tuple(manifest["class_names"])
    return Split(int(entry["num_examples"]),
                 int(manifest.get("num_classes", len(names))), image_size,
                 names)
  records = _tfds_records(config, split, 0, num_shards)
  return Split(records.num_examples, records.num_classes, image_size,
               records.class_names)


def split_records(config, split: str, shard: int = 0,
                  num_shards: int = 1) -> Records:
  """One data shard's slice of a split of a tfds, folder or prepared
  source."""
  if config.data.source == "folder":
    return _folder_records(config, split, shard, num_shards)
  if config.data.source == "prepared":
    from alexnet_jax import prepared  # pylint: disable=g-import-not-at-top
    return prepared.records(config, split, shard, num_shards)
  return _tfds_records(config, split, shard, num_shards)
