"""Input pipelines: batches of NHWC float32 images, int32 labels and a mask.

Every source yields dicts {'image', 'label', 'mask'} holding this process's
rows of the global batch. Training iterators are infinite and start at a
given step (a resumed run sees exactly the batches it would have seen);
evaluation iterators make one pass in which every example appears exactly
once, the last batch padded with mask=False rows, and every process makes
the same number of steps.

Sources (config.data.source):
  synthetic  learnable, deterministic images: one smooth random prototype per
             class plus Gaussian noise; no files.
  tfds       any TFDS data set by name (data.name, data_dir, manual_dir); it
             is prepared from manual_dir when the builder needs manual files
             (imagenet2012) and downloaded only if data.download=True.
  folder     data.path/<split>/<class>/*.jpg|jpeg|png, labels from the class
             folder names of the training split, sorted.

Images (tfds and folder) are decoded and augmented with tf.data, as the
paper: the central square of the image, resized to data.resize_size (256),
a random image_size crop (227 or 224) and a horizontal flip for training,
PCA colour lighting, then the per-channel mean is subtracted. Pixels are on
the 0-255 scale minus data.mean (as the paper and Caffe); PCA eigenvalues are
given for pixels in [0, 1], so the lighting shift is scaled by 255. For
JPEGs the random crop is fused with the decode (decode_and_crop_jpeg): only
the crop window (333x333 of a 500x375 photo for 227 crops of the 256
square) is decoded, then resized to image_size; the pixels equal those of
resizing first up to interpolation (data.fused_crop=False resizes first).
Evaluation takes the center crop, or (eval_crops=10) the four corners and
the center of the resized square and their mirrors, giving images of shape
(batch, 10, size, size, 3).

Randomness is stateless: the shuffle order is a function of (seed, process,
epoch) and each example's crop, flip and lighting a function of (seed,
process, position in the stream), so a run restarted at step k yields the
batches an uninterrupted run yields from step k. Unreadable images are
counted, logged and masked out (mask=False), never a crash.

  python -m alexnet_jax.input_pipeline --config=configs/cifar10.py compute-mean
prints the per-channel mean and std of a training split, for data.mean
and data.std.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import re
import sys
from typing import Iterator

import numpy as np
from absl import logging

SOURCES = ("synthetic", "tfds", "folder")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")

# ImageNet RGB covariance for pixels in [0, 1] (the paper's "fancy PCA");
# eigenvectors are the columns.
PCA_EIGVAL = np.array([0.2175, 0.0188, 0.0045], np.float32)
PCA_EIGVEC = np.array([[-0.5675, 0.7192, 0.4009],
                       [-0.5808, -0.0045, -0.8140],
                       [-0.5836, -0.6948, 0.4203]], np.float32)


class DataError(ValueError):
  """A data set that cannot be read as configured (a user error)."""


@dataclasses.dataclass(frozen=True)
class Split:
  """What the training loop needs to know about one split."""
  num_examples: int  # In the whole split, over all processes.
  num_classes: int
  image_size: int
  class_names: tuple[str, ...] = ()


def process_rows(global_batch: int, process_index: int,
                 process_count: int) -> slice:
  """The rows of a global batch that one process loads."""
  if global_batch % process_count:
    raise DataError(f"batch_size {global_batch} is not divisible by the "
                    f"{process_count} processes")
  per = global_batch // process_count
  return slice(process_index * per, (process_index + 1) * per)


def _tf():
  """TensorFlow, imported on first use (synthetic runs never pay for it)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if not getattr(_tf, "done", False):
    _tf.done = True
    try:
      # tf.data only runs on the host; a GPU build of TF must leave the
      # accelerators to JAX.
      tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TF already started (then it is the caller's).
      pass
  return tf


def _plain(fn):
  """fn for tf.data without autograph: it has no Python control flow on
  tensors, and autograph cannot convert some closures (a noisy warning)."""
  return _tf().autograph.experimental.do_not_convert(fn)


def _seed(*parts: int) -> int:
  """A 31-bit integer mixing parts (seed, purpose, process)."""
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


def _synthetic(config, split: str, image_size: int) -> Synthetic:
  d = config.data
  n = d.num_train_examples if split == "train" else d.num_eval_examples
  if n <= 0:
    raise DataError(f"data.num_{split}_examples must be positive, got {n}")
  return Synthetic(num_examples=n, num_classes=config.model.num_classes,
                   image_size=image_size, noise=d.synthetic_noise,
                   seed=config.seed, split=split)


def _synthetic_train(config, data, rows, start_step):
  step = start_step
  while True:
    first = step * config.batch_size
    idx = (first + np.arange(config.batch_size)[rows]) % data.num_examples
    images, labels = data.examples(idx)
    yield {"image": images, "label": labels, "mask": np.ones(len(idx), bool)}
    step += 1


def _synthetic_eval(config, data, rows):
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
  """One process's disjoint slice of a split, as tf.data elements.

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


def _missing(d, what: str) -> DataError:
  hint = f"; {d.hint}" if d.hint else ""
  return DataError(what + hint)


# A folder split may be named either way: `validation` (TFDS's name, the
# default eval_split) also finds val/, and val also finds validation/.
SPLIT_ALIASES = {"validation": ("validation", "val"),
                 "val": ("val", "validation")}
_warned_empty: set[str] = set()


def _split_dir(root: str, split: str, d) -> str:
  """root/<split>, or the first existing alias of split."""
  names = SPLIT_ALIASES.get(split, (split,))
  for name in names:
    if os.path.isdir(os.path.join(root, name)):
      return os.path.join(root, name)
  tried = " or ".join(os.path.join(root, n) for n in names)
  have = sorted(e.name for e in os.scandir(root) if e.is_dir()) if (
      os.path.isdir(root)) else []
  which = "data.train_split" if split == d.train_split else "data.eval_split"
  found = (f"; {root} holds {', '.join(have)}: set {which} to one of them"
           if have else "")
  raise _missing(d, f"no folder {tried} (data.path={d.path!r}, split "
                    f"{split!r}): put images in "
                    f"{os.path.join(root, names[0])}/<class>/*.jpg{found}")


def _class_dirs(split_dir: str) -> list[str]:
  return sorted(e.name for e in os.scandir(split_dir) if e.is_dir())


def list_folder(d, split: str):
  """(paths, labels, class names) of data.path/<split>/<class>/*.jpg|png.

  Labels index the sorted class folders of the training split (of this
  split, when it is the training split or there is none). Empty class
  folders are named in a warning (once); a split without images is an error.
  """
  if not d.path:
    raise DataError("data.source=folder needs data.path, a folder holding "
                    "train/<class>/*.jpg and val/ or test/")
  root = os.path.expanduser(d.path)
  split_dir = _split_dir(root, split, d)
  own = _class_dirs(split_dir)
  names = own
  if split != d.train_split:
    try:
      names = _class_dirs(_split_dir(root, d.train_split, d))
    except DataError:
      pass  # No training split: an eval-only folder labels by its own.
  index = {c: i for i, c in enumerate(names)}
  paths, labels, empty = [], [], []
  for c in own:
    if c not in index:
      raise DataError(f"class folder {os.path.join(split_dir, c)} is not a "
                      f"class of the training split ({len(names)} classes)")
    files = sorted(e.name for e in os.scandir(os.path.join(split_dir, c))
                   if e.name.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
      empty.append(c)
    paths += [os.path.join(split_dir, c, f) for f in files]
    labels += [index[c]] * len(files)
  if not paths:
    raise _missing(d, f"no images in {split_dir}/<class>/ (looked for "
                      f"{', '.join(IMAGE_EXTENSIONS)})")
  if empty and split_dir not in _warned_empty:
    _warned_empty.add(split_dir)
    logging.warning("%d class folder(s) of %s hold no images: %s", len(empty),
                    split_dir, ", ".join(empty))
  return paths, np.asarray(labels, np.int32), tuple(names)


def _folder_records(config, split: str, process_index: int,
                    process_count: int) -> Records:
  tf = _tf()
  d = config.data
  paths, labels, names = list_folder(d, split)
  total = len(paths)
  # A strided slice: each process sees every class, and the slices are
  # disjoint with sizes differing by at most one.
  paths = paths[process_index::process_count]
  labels = labels[process_index::process_count]
  n = len(paths)
  paths_t, labels_t = tf.constant(paths or [""]), tf.constant(
      labels if n else np.zeros(1, np.int32))
  ordered = tf.data.Dataset.from_tensor_slices(
      {"data": paths_t, "label": labels_t, "name": paths_t}).take(n)
  shuffle_seed = _seed(config.seed, 1, process_index)

  def epoch(e):
    # A full permutation of the slice, a function of (seed, process, epoch).
    key = tf.stack([tf.constant(shuffle_seed, tf.int64), e])
    order = tf.random.experimental.stateless_shuffle(
        tf.range(n, dtype=tf.int64), seed=key)
    # One gather per epoch: a map gathering one path per element is the
    # slowest stage of the pipeline on small images.
    paths = tf.gather(paths_t, order)
    return tf.data.Dataset.from_tensor_slices(
        {"data": paths, "label": tf.gather(labels_t, order), "name": paths})

  return Records(ordered, epoch, n, total, len(names), names, True,
                 _split_dir(os.path.expanduser(d.path), split, d))


def _one_line(text: str) -> str:
  text = " ".join(str(text).split())
  first = re.split(r"(?<=\.)\s", text, maxsplit=1)[0]
  return first[:300]


def _tfds_builder(d, process_count: int):
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
  if process_count > 1:
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


def _tfds_records(config, split: str, process_index: int,
                  process_count: int) -> Records:
  tf = _tf()
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  d = config.data
  builder = _tfds_builder(d, process_count)
  features = builder.info.features
  if "image" not in features or "label" not in features:
    raise DataError(f"TFDS {d.name} has no 'image' and 'label' features "
                    f"(it has {sorted(features.keys())})")
  local_split = (split if process_count == 1 else
                 tfds.even_splits(split, n=process_count)[process_index])

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
  total = n if process_count == 1 else count(load(split))
  ordered = raw.map(lambda ex: {"data": ex["image"],
                                "label": tf.cast(ex["label"], tf.int32),
                                "name": ex["tfds_id"]})
  shuffle_seed = _seed(config.seed, 1, process_index)
  buffer = max(1, min(d.shuffle_buffer, n))

  def epoch(e):
    # TFDS files are shuffled when prepared; a buffer reshuffles per epoch
    # with a seed that is a function of (seed, process, epoch).
    return ordered.shuffle(buffer, seed=shuffle_seed * 1_000_003 + e,
                           reshuffle_each_iteration=False)

  label = features["label"]
  names = tuple(getattr(label, "names", None) or ())
  return Records(ordered, epoch, n, total, int(label.num_classes), names,
                 False, f"TFDS {d.name} {split}")


def describe_split(config, split: str, image_size: int,
                   process_count: int = 1) -> Split:
  """Size and class count of a split, found without decoding any image.

  Raises DataError when the split cannot be found (every split a run reads
  is described before its first step; see preflight.py).
  """
  d = config.data
  if d.source == "synthetic":
    data = _synthetic(config, "train" if split == d.train_split else "eval",
                      image_size)
    return Split(data.num_examples, data.num_classes, image_size)
  if d.source == "folder":
    paths, _, names = list_folder(d, split)
    return Split(len(paths), len(names), image_size, names)
  records = _tfds_records(config, split, 0, process_count)
  return Split(records.num_examples, records.num_classes, image_size,
               records.class_names)


def split_records(config, split: str, process_index: int = 0,
                  process_count: int = 1) -> Records:
  """One process's slice of a split of a tfds or folder source."""
  if config.data.source == "folder":
    return _folder_records(config, split, process_index, process_count)
  return _tfds_records(config, split, process_index, process_count)


# ---------------------------------------------------------------- images


def check_options(config, image_size: int):
  """The data options (source, crops, mean, std, sizes) are usable."""
  d = config.data
  if d.source not in SOURCES:
    raise DataError(f"data.source must be one of {SOURCES}, "
                    f"got {d.source!r}")
  if d.eval_crops not in (1, 10):
    raise DataError(f"data.eval_crops must be 1 or 10, got {d.eval_crops}")
  if len(d.mean) not in (0, 3):
    raise DataError(f"data.mean must hold 3 numbers (RGB, 0-255) or none, "
                    f"got {tuple(d.mean)}")
  if len(d.std) not in (0, 3) or any(not s > 0 for s in d.std):
    raise DataError(f"data.std must hold 3 positive numbers (RGB, 0-255) or "
                    f"none, got {tuple(d.std)}")
  if d.resize_size and d.resize_size < image_size:
    raise DataError(f"data.resize_size {d.resize_size} is smaller than the "
                    f"{image_size} model input")
  if d.crop_padding < 0:
    raise DataError(f"data.crop_padding must be >= 0, got {d.crop_padding}")


def augment_params(key, pca_std: float) -> dict:
  """The random draws for one training example, from a stateless key.

  u: 2 uniforms in [0, 1) placing the crop (see crop_offset); flip: whether
  to mirror; alpha: the 3 PCA lighting coefficients, N(0, pca_std^2).
  """
  tf = _tf()
  k_crop, k_flip, k_pca = tf.unstack(
      tf.random.experimental.stateless_split(key, 3))
  return {"u": tf.random.stateless_uniform([2], k_crop),
          "flip": tf.random.stateless_uniform([], k_flip) < 0.5,
          "alpha": tf.random.stateless_normal([3], k_pca) * pca_std}


def crop_offset(u, side, size: int):
  """(y, x) of a size x size crop in a square of `side`, uniform over all."""
  tf = _tf()
  room = tf.cast(side - size, tf.float32)
  return tf.minimum(tf.cast(tf.floor(u * (room + 1)), tf.int32),
                    tf.cast(room, tf.int32))


def pca_shift(alpha):
  """The lighting shift of every pixel (0-255 scale): V @ (alpha * lambda)."""
  tf = _tf()
  return 255.0 * tf.linalg.matvec(tf.constant(PCA_EIGVEC),
                                  alpha * tf.constant(PCA_EIGVAL))


def _square_window(h, w):
  s = _tf().minimum(h, w)
  return (h - s) // 2, (w - s) // 2, s, s


def _decode(data, window_of_shape, fused: bool):
  """The decoded window (y, x, h, w) = window_of_shape(height, width).

  JPEGs (fused=True) decode only the window; other formats decode whole.
  """
  tf = _tf()

  def jpeg():
    shape = tf.image.extract_jpeg_shape(data)
    window = tf.stack(window_of_shape(shape[0], shape[1]))
    return tf.image.decode_and_crop_jpeg(data, window, channels=3)

  def other():
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    shape = tf.shape(image)
    y, x, h, w = window_of_shape(shape[0], shape[1])
    return image[y:y + h, x:x + w]

  if not fused:
    return other()
  return tf.cond(tf.io.is_jpeg(data), jpeg, other)


def _square_side(d, s, size: int):
  """Side of the resized square: resize_size, or the image's (0), >= size."""
  tf = _tf()
  side = tf.constant(d.resize_size) if d.resize_size else s
  return tf.maximum(side, size)


def _resize(image, side):
  return _tf().image.resize(image, [side, side], method="bilinear",
                            antialias=False)


def _decoded_square(d, data, size: int):
  """The central square, decoded and resized: float32 (side, side, 3)."""
  tf = _tf()
  square = _decode(data, _square_window, d.fused_crop)
  s = tf.shape(square)[0]
  side = _square_side(d, s, size)
  # Small images (CIFAR) are usually kept as they are: skip the resize.
  return tf.cond(tf.equal(s, side), lambda: tf.cast(square, tf.float32),
                 lambda: _resize(square, side))


def _finish(d, image, shift=None):
  """(image + shift - mean) / std, per channel (bias_add, then a scale)."""
  tf = _tf()
  if len(d.mean):
    mean = tf.constant(d.mean, tf.float32)
    shift = -mean if shift is None else shift - mean
  image = image if shift is None else tf.nn.bias_add(image, shift)
  return _scaled(d, image)


def _scaled(d, x):
  """x / data.std per channel (no-op when data.std is empty)."""
  if not len(d.std):
    return x
  tf = _tf()
  return x * tf.constant([1.0 / s for s in d.std], tf.float32)


def train_image(d, data, key, size: int):
  """One training image (float32 size x size x 3) from encoded bytes."""
  tf = _tf()
  draws = augment_params(key, d.pca_std)
  pad = d.crop_padding if d.random_crop else 0
  if d.random_crop and d.fused_crop and not pad:

    def window(h, w):
      # The crop of the resized square, mapped back to the original image:
      # decode only it, then resize it to size x size.
      sy, sx, s, _ = _square_window(h, w)
      side = _square_side(d, s, size)
      scale = tf.cast(s, tf.float32) / tf.cast(side, tf.float32)
      crop = tf.clip_by_value(
          tf.cast(tf.round(size * scale), tf.int32), 1, s)
      offset = crop_offset(draws["u"], side, size)
      oy, ox = tf.unstack(tf.minimum(
          tf.cast(tf.round(tf.cast(offset, tf.float32) * scale), tf.int32),
          s - crop))
      return sy + oy, sx + ox, crop, crop

    image = _resize(_decode(data, window, True), size)
  else:
    square = _decoded_square(d, data, size)
    side = tf.shape(square)[0]
    if pad:
      # The crop of the square padded by `pad` mean-colour pixels: subtract
      # the mean first, then pad the crop with zeros where it overhangs.
      square = _finish(d, square)
      y, x = tf.unstack(crop_offset(draws["u"], side + 2 * pad, size) - pad)
      y0, x0 = tf.maximum(y, 0), tf.maximum(x, 0)
      y1, x1 = tf.minimum(y + size, side), tf.minimum(x + size, side)
      image = tf.pad(square[y0:y1, x0:x1],
                     [[y0 - y, y + size - y1], [x0 - x, x + size - x1],
                      [0, 0]])
    else:
      if d.random_crop:
        y, x = tf.unstack(crop_offset(draws["u"], side, size))
      else:
        y = x = (side - size) // 2
      image = square[y:y + size, x:x + size]
  if d.flip:
    # tf.reverse: a negative-stride slice is several times slower.
    image = tf.cond(draws["flip"], lambda: tf.reverse(image, [1]),
                    lambda: image)
  # Lighting and mean are one constant per channel: a single pass, since
  # each float pass over the image costs about as much as a resize here.
  shift = pca_shift(draws["alpha"]) if d.pca_lighting else None
  if pad:  # Mean already subtracted (and the std divided).
    image = image if shift is None else tf.nn.bias_add(image,
                                                       _scaled(d, shift))
  else:
    image = _finish(d, image, shift)
  return tf.ensure_shape(image, [size, size, 3])


def eval_image(d, data, size: int, crops: int):
  """The center crop (size, size, 3) or the 10 crops (10, size, size, 3)."""
  tf = _tf()
  square = _decoded_square(d, data, size)
  side = tf.shape(square)[0]
  c = (side - size) // 2
  if crops == 1:
    image = square[c:c + size, c:c + size]
    return tf.ensure_shape(_finish(d, image), [size, size, 3])
  far = side - size
  corners = [(0, 0), (0, far), (far, 0), (far, far), (c, c)]
  five = tf.stack([square[y:y + size, x:x + size] for y, x in corners])
  image = tf.concat([five, tf.reverse(five, [2])], 0)
  return tf.ensure_shape(_finish(d, image), [10, size, size, 3])


def _decode_batches(ds, records: Records, image_fn, b: int, shape,
                    drop_remainder: bool):
  """Batches of b examples decoded by image_fn(data, element).

  An image that fails to decode (corrupt, unreadable) keeps its row with
  ok=False and zeros, so batches stay aligned with stream positions (exact
  resume) and the failure is counted, not silently lost. The error handling
  is per batch: a dataset per example would cost more than a CIFAR decode.
  """
  tf = _tf()

  def decode(element):
    data = element["data"]
    data = tf.io.read_file(data) if records.read_files else data
    return {"row": element["row"], "image": image_fn(data, element)}

  def one_batch(batch):
    n = tf.shape(batch["label"])[0]
    rows = tf.data.Dataset.from_tensor_slices({**batch, "row": tf.range(n)})
    good = rows.map(_plain(decode), num_parallel_calls=tf.data.AUTOTUNE,
                    deterministic=True).ignore_errors().batch(b)

    def place(decoded):
      ok = tf.scatter_nd(decoded["row"][:, None],
                         tf.ones_like(decoded["row"], tf.bool), [n])
      image = tf.cond(
          tf.reduce_all(ok), lambda: decoded["image"],
          lambda: tf.scatter_nd(decoded["row"][:, None], decoded["image"],
                                tf.concat([[n], shape], 0)))
      return {"image": image, "label": batch["label"], "ok": ok,
              "name": batch["name"], "mask": tf.ones([n], tf.bool)}

    none = {"image": tf.zeros(tf.concat([[n], shape], 0), tf.float32),
            "label": batch["label"], "ok": tf.zeros([n], tf.bool),
            "name": batch["name"], "mask": tf.ones([n], tf.bool)}
    # `good` is empty when every image of the batch failed.
    return good.map(_plain(place)).concatenate(
        tf.data.Dataset.from_tensors(none)).take(1)

  ds = ds.batch(b, drop_remainder=drop_remainder)
  return ds.interleave(_plain(one_batch), num_parallel_calls=tf.data.AUTOTUNE,
                       deterministic=True)


def _options(ds, d):
  """Deterministic order; tf.data's autotuner only if data.autotune.

  With the autotuner on, deleting the iterator (the end of a run, a stop)
  waits for its model thread, which sleeps for a period that grows to 60 s:
  a stopped CIFAR-10 run exited 7-60 s after its last checkpoint. Off,
  AUTOTUNE parallelism is the number of cores and prefetch buffers grow
  when the consumer waits (README, Data: the input benchmark compares).
  """
  tf = _tf()
  options = tf.data.Options()
  options.deterministic = True  # Resume and multi-process slices rely on it.
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
        for k in ("image", "label"):
          batch[k] = batch[k].copy()  # tf.data's arrays are read-only.
          batch[k][bad] = batch[k][good]
    return batch


# ---------------------------------------------------------------- iterators


def train_iterator(config, *, image_size: int, start_step: int = 0,
                   process_index: int = 0,
                   process_count: int = 1) -> tuple[Split, Batches]:
  """Split info and an infinite iterator of training batches from start_step.

  Each process reads its own disjoint slice of the split and returns its
  batch_size / process_count rows of each global batch.
  """
  check_options(config, image_size)
  d = config.data
  rows = process_rows(config.batch_size, process_index, process_count)
  if d.source == "synthetic":
    data = _synthetic(config, "train", image_size)
    info = Split(data.num_examples, data.num_classes, image_size)
    return info, Batches(_synthetic_train(config, data, rows, start_step),
                         where="synthetic train", fill=True)

  tf = _tf()
  records = split_records(config, d.train_split, process_index, process_count)
  n, b = records.num_local, rows.stop - rows.start
  if n == 0:
    raise DataError(f"process {process_index} of {process_count} has no "
                    f"training examples in {records.where}")
  first = start_step * b  # Position of this step's first row in the stream.
  start_epoch, skip = divmod(first, n)
  aug_seed = _seed(config.seed, 2, process_index)

  def image_fn(data, element):
    key = tf.stack([tf.constant(aug_seed, tf.int64), element["pos"]])
    return train_image(d, data, key, image_size)

  ds = tf.data.Dataset.counter(start_epoch).flat_map(records.epoch)
  ds = ds.enumerate(start=start_epoch * n).skip(skip)
  ds = ds.map(lambda pos, e: {**e, "pos": pos})
  ds = _decode_batches(ds, records, image_fn, b, (image_size, image_size, 3),
                       drop_remainder=True)
  ds = _options(ds.prefetch(tf.data.AUTOTUNE), d)
  info = Split(records.num_examples, records.num_classes, image_size,
               records.class_names)
  return info, Batches(ds.as_numpy_iterator(), where=records.where, fill=True)


def eval_iterator(config, *, image_size: int, process_index: int = 0,
                  process_count: int = 1) -> tuple[Split, Batches]:
  """Split info and one pass over the evaluation set, padded and masked.

  Every process makes ceil(ceil(N / processes) / local batch) steps, so
  collective eval steps line up; padding rows have mask=False.
  """
  check_options(config, image_size)
  d = config.data
  rows = process_rows(config.batch_size, process_index, process_count)
  if d.source == "synthetic":
    data = _synthetic(config, "eval", image_size)
    info = Split(data.num_examples, data.num_classes, image_size)
    return info, Batches(_synthetic_eval(config, data, rows),
                         where="synthetic eval", fill=False)

  tf = _tf()
  records = split_records(config, d.eval_split, process_index, process_count)
  b, crops = rows.stop - rows.start, d.eval_crops
  shape = ((image_size,) * 2 + (3,) if crops == 1 else
           (10,) + (image_size,) * 2 + (3,))
  ds = _decode_batches(
      records.ordered, records,
      lambda data, _: eval_image(d, data, image_size, crops), b, shape,
      drop_remainder=False)
  ds = _options(ds.prefetch(tf.data.AUTOTUNE), d)
  most = -(-records.num_examples // process_count)
  if records.num_local > most:
    raise DataError(f"process slice of {records.where} holds "
                    f"{records.num_local} > {most} examples")
  steps = -(-most // b)
  info = Split(records.num_examples, records.num_classes, image_size,
               records.class_names)
  return info, Batches(_padded(ds.as_numpy_iterator(), steps, b, shape),
                       where=records.where, fill=False)


def _padded(batches, steps: int, b: int, shape):
  """Exactly `steps` batches of b rows; missing rows have mask=False."""
  for _ in range(steps):
    batch = next(batches, None)
    n = 0 if batch is None else len(batch["label"])
    out = {"image": np.zeros((b,) + shape, np.float32),
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
  tf = _tf()
  d = config.data
  if d.source == "synthetic":
    raise DataError("data.source=synthetic has no images to average")
  records = split_records(config, d.train_split, 0, 1)
  ds = records.ordered
  if max_images:
    ds = ds.take(max_images)

  def stats(data, _):
    square = _decoded_square(d, data, image_size)
    pixels = tf.cast(tf.shape(square)[0] ** 2, tf.float32)
    return tf.concat([tf.reduce_sum(square, [0, 1]),
                      tf.reduce_sum(tf.square(square), [0, 1]), [pixels]], 0)

  ds = _options(_decode_batches(ds, records, stats, 256, (7,),
                                drop_remainder=False), d)
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


def _main(argv):
  from alexnet_jax import model  # pylint: disable=g-import-not-at-top
  if argv[1:] != ["compute-mean"]:
    raise SystemExit("usage: python -m alexnet_jax.input_pipeline "
                     "--config=configs/X.py compute-mean [--max_images=N]")
  config = FLAGS.config
  try:
    mean, std, used = compute_mean(config,
                                   image_size=model.input_size(config.model),
                                   max_images=FLAGS.max_images)
  except DataError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  text = ", ".join(f"{m:.2f}" for m in mean)
  std_text = ", ".join(f"{m:.2f}" for m in std)
  print(f"data.mean = ({text})  # over {used} images of "
        f"{config.data.train_split}")
  print(f"data.std = ({std_text})  # per-channel pixel std, same images")
  print(f"--config.data.mean=\"({text})\" --config.data.std=\"({std_text})\"")


if __name__ == "__main__":
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  FLAGS = flags.FLAGS
  config_flags.DEFINE_config_file("config", None, "A config file.")
  flags.DEFINE_integer("max_images", 0, "Average over the first N (0: all).")
  flags.mark_flags_as_required(["config"])
  app.run(_main)
