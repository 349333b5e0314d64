"""Input pipelines: batches of NHWC float32 images, int32 labels and a mask.

(With data.normalize_on_device the images are uint8 and training batches
also carry each image's lighting "shift": the train and eval steps finish
them, preprocess.device_finish; tools reading images outside the steps use
preprocess.finished_batch.)

Every iterator yields dicts {'image', 'label', 'mask'} holding this data
shard's rows of the global batch (`rows`, a slice: the process's rows, from
the mesh). Training iterators are infinite and start at a given step (a
resumed run sees exactly the batches it would have seen); evaluation
iterators make one pass in which every example appears exactly once, the
last batch padded with mask=False rows, and every shard makes the same
number of steps.

Where the examples come from is sources.py (synthetic, tfds, folder,
prepared); how an image is decoded, augmented and cropped is preprocess.py
(or, with data.decoder=dali, dali.py on the GPU). This module
batches them, keeps unreadable images as masked rows (counted and logged,
never a crash) and prefetches to the devices. Randomness is stateless: the
shuffle order is a function of (seed, shard, epoch) and each example's
augmentation of (seed, shard, position in the stream), so a run restarted at
step k yields the batches an uninterrupted run yields from step k.
"""

from __future__ import annotations

import collections
from typing import Iterator

import numpy as np
from absl import logging

from alexnet_jax.preprocess import check_options  # noqa: F401  (re-exported)
from alexnet_jax.preprocess import decoded_square
from alexnet_jax.preprocess import eval_image
from alexnet_jax.preprocess import train_image
from alexnet_jax.sources import DataError
from alexnet_jax.sources import Records
from alexnet_jax.sources import SOURCES  # noqa: F401  (re-exported)
from alexnet_jax.sources import Split
from alexnet_jax.sources import describe_split  # noqa: F401  (re-exported)
from alexnet_jax.sources import lazy_tf
from alexnet_jax.sources import mix_seed
from alexnet_jax.sources import plain_fn
from alexnet_jax.sources import split_records
from alexnet_jax.sources import synthetic_eval
from alexnet_jax.sources import synthetic_source
from alexnet_jax.sources import synthetic_train


def shard_rows(global_batch: int, shard: int, num_shards: int) -> slice:
  """The rows of a global batch that data shard `shard` of num_shards loads
  (tests and single-purpose tools; training takes its rows from the mesh)."""
  if global_batch % num_shards:
    raise DataError(f"batch_size {global_batch} is not divisible by the "
                    f"{num_shards} data shards")
  per = global_batch // num_shards
  return slice(shard * per, (shard + 1) * per)


def _shard_of(rows: slice | None, global_batch: int) -> tuple[slice, int, int]:
  """(rows, shard index, number of shards): a slice of the global batch is
  one data shard, the one that loads those rows."""
  if rows is None:
    rows = slice(0, global_batch)
  per = rows.stop - rows.start
  if per <= 0 or global_batch % per or rows.start % per:
    raise DataError(f"rows {rows.start}:{rows.stop} are not one of equal "
                    f"slices of batch_size {global_batch}")
  return rows, rows.start // per, global_batch // per


def decode_batches(ds, records: Records, image_fn, b: int, shape,
                    drop_remainder: bool):
  """Batches of b examples decoded by image_fn(data, element): an image, or
  a dict of an "image" and per-example extras (data.normalize_on_device:
  a uint8 image and its lighting "shift").

  An image that fails to decode (corrupt, unreadable) keeps its row with
  ok=False and zeros, so batches stay aligned with stream positions (exact
  resume) and the failure is counted, not silently lost. The error handling
  is per batch: a dataset per example would cost more than a CIFAR decode.
  """
  tf = lazy_tf()

  def decode(element):
    data = element["data"]
    data = tf.io.read_file(data) if records.read_files else data
    out = image_fn(data, element)
    return {"row": element["row"],
            **(out if isinstance(out, dict) else {"image": out})}

  def one_batch(batch):
    n = tf.shape(batch["label"])[0]
    rows = tf.data.Dataset.from_tensor_slices({**batch, "row": tf.range(n)})
    good = rows.map(plain_fn(decode), num_parallel_calls=tf.data.AUTOTUNE,
                    deterministic=True).ignore_errors().batch(b)

    def place(decoded):
      row = decoded.pop("row")[:, None]
      ok = tf.scatter_nd(row, tf.ones_like(row[:, 0], tf.bool), [n])
      out = {k: tf.cond(  # Rows of failed images stay zero.
          tf.reduce_all(ok), lambda v=v: v,
          lambda v=v: tf.scatter_nd(row, v, tf.concat(
              [[n], tf.shape(v)[1:]], 0))) for k, v in decoded.items()}
      return {**out, "label": batch["label"], "ok": ok,
              "name": batch["name"], "mask": tf.ones([n], tf.bool)}

    none = {**{k: tf.zeros(tf.concat([[n], shape if k == "image" else
                                      spec.shape[1:]], 0), spec.dtype)
               for k, spec in good.element_spec.items() if k != "row"},
            "label": batch["label"], "ok": tf.zeros([n], tf.bool),
            "name": batch["name"], "mask": tf.ones([n], tf.bool)}
    # `good` is empty when every image of the batch failed.
    return good.map(plain_fn(place)).concatenate(
        tf.data.Dataset.from_tensors(none)).take(1)

  ds = ds.batch(b, drop_remainder=drop_remainder)
  return ds.interleave(plain_fn(one_batch), num_parallel_calls=tf.data.AUTOTUNE,
                       deterministic=True)


def tf_options(ds, d):
  """Deterministic order; tf.data's autotuner only if data.autotune.

  With the autotuner on, deleting the iterator (the end of a run, a stop)
  waits for its model thread, which sleeps for a period that grows to 60 s:
  a stopped CIFAR-10 run exited 7-60 s after its last checkpoint. Off,
  AUTOTUNE parallelism is the number of cores and prefetch buffers grow
  when the consumer waits (README, Data: the input benchmark compares).
  """
  tf = lazy_tf()
  options = tf.data.Options()
  options.deterministic = True  # Resume and data shards rely on it.
  options.autotune.enabled = bool(d.autotune)
  return ds.with_options(options)


class Batches:
  """An iterator of batches (dicts of NumPy arrays).

  num_skipped counts the images that could not be decoded; their rows have
  mask=False (training rows also get a copy of a readable row, so a loss
  that ignores the mask still sees a real example).
  """

  def __init__(self, batches: Iterator[dict], *, where: str, fill: bool):
    self._batches, self._where, self._fill = batches, where, fill
    self.num_skipped = 0
    self.skipped: list[str] = []  # The first 100 names.

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    batch = next(self._batches)
    ok, names = batch.pop("ok", None), batch.pop("name", None)
    if ok is not None and not ok.all():
      bad = np.flatnonzero(~ok)
      for name in names[bad]:
        self.num_skipped += 1
        name = name.decode() if isinstance(name, bytes) else str(name)
        if len(self.skipped) < 100:
          self.skipped.append(name)
        logging.warning("skipped unreadable image %s in %s (%d so far)",
                        name, self._where, self.num_skipped)
      batch["mask"] = batch["mask"] & ok
      if self._fill and ok.any():
        good = np.flatnonzero(ok)[0]
        for k in [k for k in batch if k != "mask"]:  # image, label, shift.
          batch[k] = batch[k].copy()  # tf.data's arrays are read-only.
          batch[k][bad] = batch[k][good]
    return batch


# ---------------------------------------------------------------- iterators


def train_iterator(config, *, image_size: int, start_step: int = 0,
                   rows: slice | None = None) -> tuple[Split, Batches]:
  """Split info and an infinite iterator of training batches from start_step.

  `rows` of each global batch (all of them by default); each data shard
  reads its own disjoint slice of the split.
  """
  check_options(config, image_size)
  d = config.data
  rows, shard, num_shards = _shard_of(rows, config.batch_size)
  if d.source == "synthetic":
    data = synthetic_source(config, "train", image_size)
    info = Split(data.num_examples, data.num_classes, image_size)
    return info, Batches(synthetic_train(config, data, rows, start_step),
                         where="synthetic train", fill=True)

  if d.get("decoder", "tf") == "dali":  # On the GPU (dali.py).
    from alexnet_jax import dali  # pylint: disable=g-import-not-at-top
    (total, classes, names), batches = dali.train_batches(
        config, image_size=image_size, start_step=start_step,
        b=rows.stop - rows.start, shard=shard, num_shards=num_shards)
    return Split(total, classes, image_size, names), Batches(
        batches, where=f"DALI {d.path}", fill=True)
  tf = lazy_tf()
  records = split_records(config, d.train_split, shard, num_shards)
  n, b = records.num_local, rows.stop - rows.start
  if n == 0:
    raise DataError(f"data shard {shard} of {num_shards} has no "
                    f"training examples in {records.where}")
  first = start_step * b  # Position of this step's first row in the stream.
  start_epoch, skip = divmod(first, n)
  aug_seed = mix_seed(config.seed, 2, shard)

  def image_fn(data, element):
    key = tf.stack([tf.constant(aug_seed, tf.int64), element["pos"]])
    return train_image(d, data, key, image_size)

  ds = tf.data.Dataset.counter(start_epoch).flat_map(records.epoch)
  ds = ds.enumerate(start=start_epoch * n).skip(skip)
  ds = ds.map(lambda pos, e: {**e, "pos": pos})
  ds = decode_batches(ds, records, image_fn, b, (image_size, image_size, 3),
                       drop_remainder=True)
  ds = tf_options(ds.prefetch(tf.data.AUTOTUNE), d)
  info = Split(records.num_examples, records.num_classes, image_size,
               records.class_names)
  return info, Batches(ds.as_numpy_iterator(), where=records.where, fill=True)


def eval_iterator(config, *, image_size: int, rows: slice | None = None,
                  split: str | None = None) -> tuple[Split, Batches]:
  """Split info and one pass over `split` (default data.eval_split), padded
  and masked.

  Every shard makes ceil(ceil(N / shards) / local batch) steps, so
  collective eval steps line up; padding rows have mask=False.
  """
  check_options(config, image_size)
  d = config.data
  rows, shard, num_shards = _shard_of(rows, config.batch_size)
  if d.source == "synthetic":
    data = synthetic_source(config, "eval", image_size)
    info = Split(data.num_examples, data.num_classes, image_size)
    return info, Batches(synthetic_eval(config, data, rows),
                         where="synthetic eval", fill=False)

  tf = lazy_tf()
  records = split_records(config, split or d.eval_split, shard, num_shards)
  b, crops = rows.stop - rows.start, d.eval_crops
  shape = ((image_size,) * 2 + (3,) if crops == 1 else
           (10,) + (image_size,) * 2 + (3,))
  ds = decode_batches(
      records.ordered, records,
      lambda data, _: eval_image(d, data, image_size, crops), b, shape,
      drop_remainder=False)
  ds = tf_options(ds.prefetch(tf.data.AUTOTUNE), d)
  most = -(-records.num_examples // num_shards)
  if records.num_local > most:
    raise DataError(f"data shard slice of {records.where} holds "
                    f"{records.num_local} > {most} examples")
  steps = -(-most // b)
  info = Split(records.num_examples, records.num_classes, image_size,
               records.class_names)
  dtype = np.uint8 if d.get("normalize_on_device") else np.float32
  return info, Batches(_padded(ds.as_numpy_iterator(), steps, b, shape,
                               dtype),
                       where=records.where, fill=False)


def _padded(batches, steps: int, b: int, shape, dtype=np.float32):
  """Exactly `steps` batches of b rows; missing rows have mask=False."""
  for _ in range(steps):
    batch = next(batches, None)
    n = 0 if batch is None else len(batch["label"])
    out = {"image": np.zeros((b,) + shape, dtype),
           "label": np.zeros(b, np.int32), "mask": np.arange(b) < n,
           "ok": np.ones(b, bool), "name": np.array([b""] * b, object)}
    if batch is None:
      yield out
      continue
    if n == b:
      yield {**batch, "mask": np.ones(b, bool)}
      continue
    for k in ("image", "label", "ok", "name"):
      out[k][:n] = batch[k]
    yield out


def prefetch_to_device(batches, sharding, size: int = 2):
  """Batches as global jax.Arrays placed with `sharding`, `size` ahead.

  Each process passes its own rows; the copies run while the previous step
  computes.
  """
  import jax  # pylint: disable=g-import-not-at-top
  queue = collections.deque()

  def put(batch):
    return {k: jax.make_array_from_process_local_data(sharding, v)
            for k, v in batch.items()}

  for batch in batches:
    queue.append(put(batch))
    if len(queue) > size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


# ---------------------------------------------------------------- mean


def compute_mean(config, *, image_size: int = 0,
                 max_images: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
  """Per-channel mean and std (RGB, 0-255) of the training split, and the
  number of images used.

  Over the resized central squares (what crops are taken from), every pixel
  weighted alike; unreadable images are skipped.
  """
  tf = lazy_tf()
  d = config.data
  if d.source == "synthetic":
    raise DataError("data.source=synthetic has no images to average")
  records = split_records(config, d.train_split, 0, 1)
  ds = records.ordered
  if max_images:
    ds = ds.take(max_images)

  def stats(data, _):
    square = decoded_square(d, data, image_size)
    pixels = tf.cast(tf.shape(square)[0] ** 2, tf.float32)
    return tf.concat([tf.reduce_sum(square, [0, 1]),
                      tf.reduce_sum(tf.square(square), [0, 1]), [pixels]], 0)

  ds = tf_options(decode_batches(
      ds, records, stats, 256, (7,), drop_remainder=False), d)
  total, squares, pixels, used = np.zeros(3), np.zeros(3), 0.0, 0
  for batch in ds.as_numpy_iterator():
    good = batch["image"][batch["ok"]].astype(np.float64)
    total += good[:, :3].sum(0)
    squares += good[:, 3:6].sum(0)
    pixels += good[:, 6].sum()
    used += len(good)
  if not used:
    raise DataError(f"no readable images in {records.where}")
  mean = total / pixels
  return mean, np.sqrt(np.maximum(squares / pixels - mean ** 2, 0.0)), used
