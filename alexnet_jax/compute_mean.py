"""The training split's pixel statistics, for the data config, as a program:

  python -m alexnet_jax.compute_mean --config=configs/cifar10.py \
      [--mean_image=PATH.npy] [--json=PATH.json] [--max_images=N]

One pass over the training split's central squares, resized to
data.resize_size as preprocess.py does before cropping (every pixel
weighted alike; unreadable images skipped) gives:
  - the per-channel mean and std (0-255): data.mean, data.std;
  - the eigenvalues and eigenvectors (the columns, largest first) of the
    3x3 covariance of RGB pixel values in [0, 1], as the paper's PCA
    lighting uses ImageNet's: data.pca_eigval, data.pca_eigvec. An
    eigenvector's sign is arbitrary (the lighting draws +alpha and -alpha
    alike); each is printed with its largest component positive;
  - with --mean_image, the paper's per-pixel mean: the mean of the squares,
    float32 side x side x 3 on the 0-255 scale, saved as .npy for
    data.mean_image. The side is data.resize_size, or with resize_size=0
    the first image's (CIFAR: 32); other sizes are resized to it, as
    preprocess does when data.mean_image is set.
It prints them as config lines and as --config overrides; --json writes
them to a file too.
"""

from __future__ import annotations

import copy
import json
import sys

import numpy as np
from absl import app
from absl import flags
from ml_collections import config_flags

from alexnet_jax import input_pipeline
from alexnet_jax import model
from alexnet_jax import preprocess
from alexnet_jax import sources

FLAGS = flags.FLAGS


def _define_flags():
  """The command line's flags (defined only when run as a program, so that
  importing this module beside another program's flags defines none)."""
  config_flags.DEFINE_config_file("config", None, "A config file.")
  flags.DEFINE_integer("max_images", 0, "Average over the first N (0: all).")
  flags.DEFINE_string("mean_image", None, "Also write the per-pixel mean "
                      "image here (.npy), for data.mean_image.")
  flags.DEFINE_string("json", None, "Also write the statistics here (JSON).")
  flags.mark_flags_as_required(["config"])

# Moments are taken about mid-grey: float32 sums of squares lose less.
_CENTER = 127.5


def _first_side(d, records, ds, size: int) -> int:
  """The resized square's side of the first readable image."""
  tf = sources.lazy_tf()
  for element in ds.take(100):
    data = element["data"]
    data = tf.io.read_file(data) if records.read_files else data
    try:
      return int(preprocess.decoded_square(d, data, size).shape[0])
    except tf.errors.OpError:
      continue
  raise sources.DataError(f"no readable image among the first 100 of "
                          f"{records.where}")


def statistics(config, *, image_size: int, max_images: int = 0,
               mean_image: bool = False) -> dict:
  """{'mean', 'std' (0-255), 'eigval', 'eigvec' (pixels in [0, 1]),
  'image' (the mean image, or None), 'images' (the number used)}."""
  tf = sources.lazy_tf()
  config = copy.deepcopy(config)
  d = config.data
  if d.source == "synthetic":
    raise sources.DataError("data.source=synthetic has no images to average")
  d.mean_image = None  # The squares at resize_size, not at an old mean's.
  records = input_pipeline.split_records(config, d.train_split, 0, 1)
  ds = records.ordered
  if max_images:
    ds = ds.take(max_images)
  side = 0
  if mean_image:
    side = d.resize_size or _first_side(d, records, ds, image_size)
    d.resize_size = side = max(side, image_size)

  def stats(data, _):
    square = preprocess.decoded_square(d, data, image_size)
    x = tf.reshape(square, [-1, 3]) - _CENTER
    parts = [tf.reduce_sum(x, 0),
             tf.reshape(tf.matmul(x, x, transpose_a=True), [9]),
             tf.cast(tf.shape(x)[:1], tf.float32)]
    if side:
      parts.append(tf.reshape(square, [-1]))
    return tf.concat(parts, 0)

  width = 13 + 3 * side * side
  ds = input_pipeline.tf_options(input_pipeline.decode_batches(
      ds, records, stats, 32 if side else 256, (width,),
      drop_remainder=False), d)
  total = np.zeros(width)
  used = 0
  for batch in ds.as_numpy_iterator():
    good = batch["image"][batch["ok"]]
    total += good.astype(np.float64).sum(0)
    used += len(good)
  if not used:
    raise sources.DataError(f"no readable images in {records.where}")
  pixels = total[12]
  first = total[:3] / pixels
  cov = total[3:12].reshape(3, 3) / pixels - np.outer(first, first)
  eigval, eigvec = np.linalg.eigh(cov / 255.0 ** 2)
  order = np.argsort(eigval)[::-1]
  eigval, eigvec = np.maximum(eigval[order], 0.0), eigvec[:, order]
  rows = np.arange(3)
  eigvec *= np.sign(eigvec[np.abs(eigvec).argmax(0), rows])
  image = (total[13:].reshape(side, side, 3) / used).astype(np.float32) if (
      side) else None
  return {"mean": first + _CENTER,
          "std": np.sqrt(np.maximum(np.diag(cov), 0.0)),
          "eigval": eigval, "eigvec": eigvec, "image": image, "images": used}


def _tuple(values, fmt: str) -> str:
  return "(" + ", ".join(format(v, fmt) for v in values) + ")"


def _main(argv):
  if argv[1:]:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  config = FLAGS.config
  try:
    s = statistics(config, image_size=model.input_size(config.model),
                   max_images=FLAGS.max_images,
                   mean_image=bool(FLAGS.mean_image))
    if FLAGS.mean_image:
      np.save(FLAGS.mean_image, s["image"])
    if FLAGS.json:
      with open(FLAGS.json, "w") as f:
        json.dump({"split": config.data.train_split, "images": s["images"],
                   "mean": s["mean"].tolist(), "std": s["std"].tolist(),
                   "pca_eigval": s["eigval"].tolist(),
                   "pca_eigvec": s["eigvec"].tolist(),
                   "mean_image": FLAGS.mean_image}, f, indent=1)
  except (sources.DataError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  mean, std = _tuple(s["mean"], ".2f"), _tuple(s["std"], ".2f")
  eigval = _tuple(s["eigval"], ".4g")
  eigvec = "(" + ", ".join(_tuple(r, ".4f") for r in s["eigvec"]) + ")"
  print(f"data.mean = {mean}  # over {s['images']} images of "
        f"{config.data.train_split}")
  print(f"data.std = {std}  # per-channel pixel std, same images")
  print(f"data.pca_eigval = {eigval}  # RGB covariance, pixels in [0, 1]")
  print(f"data.pca_eigvec = {eigvec}  # eigenvectors are the columns")
  overrides = (f"--config.data.mean=\"{mean}\" --config.data.std=\"{std}\" "
               f"--config.data.pca_eigval=\"{eigval}\" "
               f"--config.data.pca_eigvec=\"{eigvec}\"")
  if FLAGS.mean_image:
    side = s["image"].shape[0]
    print(f"data.mean_image = {FLAGS.mean_image!r}  # {side}x{side} mean "
          f"image, same images")
    overrides += f" --config.data.mean_image={FLAGS.mean_image}"
  print(overrides)


if __name__ == "__main__":
  _define_flags()
  app.run(_main)
