"""Images: decoding and the paper's augmentation and test crops, in tf.data.

The central square of the image, resized to data.resize_size (256), a
random image_size crop (227 or 224) and a horizontal flip for training, PCA
colour lighting, then the mean is subtracted. Pixels are on the 0-255 scale
minus the mean (as the paper and Caffe), divided by data.std when given.
The mean is data.mean, one value per channel, or, when data.mean_image
names a file (written by `python -m alexnet_jax.compute_mean`), the
paper's per-pixel mean of the training set: then data.mean is not used,
and each crop has the window of the mean image it was cut from subtracted
(before any mirroring), in every path below. The lighting's eigenvalues
and eigenvectors (data.pca_eigval, data.pca_eigvec; ImageNet's by default)
are for pixels in [0, 1], so the shift is scaled by 255. For JPEGs the
random crop is fused with the decode
(decode_and_crop_jpeg): only the crop window (333x333 of a 500x375 photo for
227 crops of the 256 square) is decoded, then resized to image_size; the
pixels equal those of resizing first up to interpolation
(data.fused_crop=False resizes first). Evaluation takes the center crop,
or (eval_crops=10) the four corners and the center of the resized square
and their mirrors, giving images of shape (10, size, size, 3).

Each example's crop, flip and lighting are a function of a key (seed,
shard, position in the stream): stateless, so a resumed run draws the same.

data.normalize_on_device: the host stops after the crop and flip and yields
uint8 images, plus each training image's lighting shift as "shift" (3
floats); `device_finish` adds the shift, subtracts the mean and divides by
the std on the accelerator, in the same order as `_finish`. That removes
every float pass from the host (a resize, where one is needed, is rounded
back to uint8) and a quarter of the bytes it batches and copies.
"""

from __future__ import annotations

import functools
import os

import numpy as np

from alexnet_jax.sources import SOURCES
from alexnet_jax.sources import DataError
from alexnet_jax.sources import lazy_tf

# ImageNet RGB covariance for pixels in [0, 1] (the paper's "fancy PCA");
# eigenvectors are the columns. data.pca_eigval/pca_eigvec default to them.
PCA_EIGVAL = np.array([0.2175, 0.0188, 0.0045], np.float32)
PCA_EIGVEC = np.array([[-0.5675, 0.7192, 0.4009],
                       [-0.5808, -0.0045, -0.8140],
                       [-0.5836, -0.6948, 0.4203]], np.float32)


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
  if d.get("decoder", "tf") not in ("tf", "dali"):
    raise DataError(f"data.decoder must be tf or dali, got {d.decoder!r}")
  if d.get("decoder", "tf") == "dali" and d.source != "prepared":
    raise DataError(f"data.decoder=dali reads prepared shards: set "
                    f"data.source=prepared (got {d.source!r})")
  if d.get("classes") and d.source != "folder":
    raise DataError(f"data.classes picks class folders of source=folder; "
                    f"with source={d.source} leave it empty")
  _check_pca(d)
  if d.get("normalize_on_device") and (
      (d.crop_padding and d.random_crop) or per_pixel(d)):
    raise DataError("data.normalize_on_device ships uint8 crops and adds "
                    "a per-channel shift on the device: set "
                    "data.crop_padding=0 and leave data.mean_image unset")
  if per_pixel(d):
    mean = mean_image(d)
    if mean.ndim != 3 or mean.shape[2] != 3 or mean.shape[0] != mean.shape[1]:
      raise DataError(f"data.mean_image {d.mean_image} must be a square "
                      f"HxWx3 image, got shape {mean.shape}")
    k = mean.shape[0]
    if d.resize_size and k != d.resize_size:
      raise DataError(f"data.mean_image {d.mean_image} is {k}x{k}, "
                      f"data.resize_size {d.resize_size}: compute it at "
                      f"the same resize_size")
    if k < image_size:
      raise DataError(f"data.mean_image {d.mean_image} is {k}x{k}, smaller "
                      f"than the {image_size} model input")
    if not np.isfinite(mean).all():
      raise DataError(f"data.mean_image {d.mean_image} holds non-finite "
                      f"values")


def _check_pca(d):
  """data.pca_eigval (3 numbers >= 0) and pca_eigvec (3x3, columns)."""
  val, vec = eigen(d)
  if val.shape != (3,) or not np.isfinite(val).all() or (val < 0).any():
    raise DataError(f"data.pca_eigval must hold 3 numbers >= 0, got "
                    f"{d.get('pca_eigval')}")
  if vec.shape != (3, 3) or not np.isfinite(vec).all():
    raise DataError(f"data.pca_eigvec must be 3 rows of 3 numbers (the "
                    f"eigenvectors are its columns), got "
                    f"{d.get('pca_eigvec')}")


def eigen(d) -> tuple[np.ndarray, np.ndarray]:
  """(eigenvalues, eigenvectors as columns) of the lighting, float32."""
  try:
    return (np.asarray(d.get("pca_eigval", PCA_EIGVAL), np.float32),
            np.asarray(d.get("pca_eigvec", PCA_EIGVEC), np.float32))
  except (TypeError, ValueError):
    raise DataError(f"data.pca_eigval and data.pca_eigvec must be numbers, "
                    f"got {d.get('pca_eigval')} and "
                    f"{d.get('pca_eigvec')}") from None


def per_pixel(d) -> bool:
  """Whether a mean image (data.mean_image) replaces data.mean."""
  return bool(d.get("mean_image"))


def mean_image(d) -> np.ndarray:
  """data.mean_image, loaded (float32, side x side x 3, 0-255 scale)."""
  path = os.path.expanduser(d.mean_image)
  try:
    return _load(path, os.path.getmtime(path))
  except (OSError, ValueError) as e:
    raise DataError(f"data.mean_image: cannot read {d.mean_image} ({e}); "
                    f"write it with python -m alexnet_jax.compute_mean "
                    f"--config=... --mean_image={d.mean_image}") from None


@functools.lru_cache(maxsize=4)
def _load(path: str, mtime: float) -> np.ndarray:
  del mtime  # Part of the cache key: a rewritten file is read again.
  return np.asarray(np.load(path, allow_pickle=False), np.float32)


def augment_params(key, pca_std: float) -> dict:
  """The random draws for one training example, from a stateless key.

  u: 2 uniforms in [0, 1) placing the crop (see crop_offset); flip: whether
  to mirror; alpha: the 3 PCA lighting coefficients, N(0, pca_std^2).
  """
  tf = lazy_tf()
  k_crop, k_flip, k_pca = tf.unstack(
      tf.random.experimental.stateless_split(key, 3))
  return {"u": tf.random.stateless_uniform([2], k_crop),
          "flip": tf.random.stateless_uniform([], k_flip) < 0.5,
          "alpha": tf.random.stateless_normal([3], k_pca) * pca_std}


def crop_offset(u, side, size: int):
  """(y, x) of a size x size crop in a square of `side`, uniform over all."""
  tf = lazy_tf()
  room = tf.cast(side - size, tf.float32)
  return tf.minimum(tf.cast(tf.floor(u * (room + 1)), tf.int32),
                    tf.cast(room, tf.int32))


def pca_shift(alpha, eigval=PCA_EIGVAL, eigvec=PCA_EIGVEC):
  """The lighting shift of every pixel (0-255 scale): V @ (alpha * lambda)."""
  tf = lazy_tf()
  return 255.0 * tf.linalg.matvec(tf.constant(eigvec, tf.float32),
                                  alpha * tf.constant(eigval, tf.float32))


def _square_window(h, w):
  s = lazy_tf().minimum(h, w)
  return (h - s) // 2, (w - s) // 2, s, s


def _decode(data, window_of_shape, fused: bool):
  """The decoded window (y, x, h, w) = window_of_shape(height, width).

  JPEGs (fused=True) decode only the window; other formats decode whole.
  """
  tf = lazy_tf()

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


def _fixed_side(d) -> int:
  """resize_size, else the mean image's side (0: each image's own)."""
  return d.resize_size or (mean_image(d).shape[0] if per_pixel(d) else 0)


def _square_side(d, s, size: int):
  """Side of the resized square: resize_size, else the mean image's, else
  the image's own (s); at least size."""
  tf = lazy_tf()
  side = _fixed_side(d)
  return tf.maximum(tf.constant(side) if side else s, size)


def _resize(image, side, dtype=None):
  """Bilinear to side x side, float32 (uint8, rounded: dtype=tf.uint8); an
  image of that size is kept (the resize would return it exactly, at the
  cost of a float pass: prepared 256x256 squares and their 1:1 crop
  windows)."""
  tf = lazy_tf()
  dtype = dtype or tf.float32
  shape = tf.shape(image)

  def resized():
    out = tf.image.resize(image, [side, side], method="bilinear",
                          antialias=False)
    return out if dtype == tf.float32 else tf.saturate_cast(tf.round(out),
                                                            dtype)

  return tf.cond(
      tf.logical_and(tf.equal(shape[0], side), tf.equal(shape[1], side)),
      lambda: tf.cast(image, dtype), resized)


def _dtype(d):
  """uint8 with data.normalize_on_device (device_finish), else float32."""
  tf = lazy_tf()
  return tf.uint8 if d.get("normalize_on_device") else tf.float32


def decoded_square(d, data, size: int, dtype=None):
  """The central square, decoded and resized: float32 (side, side, 3), or
  dtype."""
  tf = lazy_tf()
  dtype = dtype or tf.float32
  square = _decode(data, _square_window, d.fused_crop)
  s = tf.shape(square)[0]
  side = _square_side(d, s, size)
  # Small images (CIFAR) are usually kept as they are: skip the resize.
  return tf.cond(tf.equal(s, side), lambda: tf.cast(square, dtype),
                 lambda: _resize(square, side, dtype))


def _minus_mean_image(d, image, y, x):
  """image - the window of data.mean_image at (y, x) of the square, where
  the image was cut; the image itself with no mean image."""
  if not per_pixel(d):
    return image
  tf = lazy_tf()
  return image - tf.slice(tf.constant(mean_image(d)), tf.stack([y, x, 0]),
                          tf.shape(image))


def _finish(d, image, shift=None):
  """(image + shift - mean) / std, per channel (bias_add, then a scale);
  data.mean only without a mean image (subtracted where the crop is cut)."""
  tf = lazy_tf()
  if len(d.mean) and not per_pixel(d):
    mean = tf.constant(d.mean, tf.float32)
    shift = -mean if shift is None else shift - mean
  image = image if shift is None else tf.nn.bias_add(image, shift)
  return _scaled(d, image)


def _scaled(d, x):
  """x / data.std per channel (no-op when data.std is empty)."""
  if not len(d.std):
    return x
  tf = lazy_tf()
  return x * tf.constant([1.0 / s for s in d.std], tf.float32)


def train_image(d, data, key, size: int):
  """One training image (float32 size x size x 3) from encoded bytes; with
  data.normalize_on_device {"image": uint8, "shift": the lighting shift}."""
  tf = lazy_tf()
  dtype = _dtype(d)
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

    image = _resize(_decode(data, window, True), size, dtype)
    if per_pixel(d):  # The side is the mean image's: the same offset.
      y, x = tf.unstack(crop_offset(draws["u"],
                                    max(_fixed_side(d), size), size))
      image = _minus_mean_image(d, image, y, x)
  else:
    square = decoded_square(d, data, size, dtype)
    side = tf.shape(square)[0]
    if pad:
      # The crop of the square padded by `pad` mean-colour pixels: subtract
      # the mean first, then pad the crop with zeros where it overhangs.
      square = _finish(d, _minus_mean_image(d, square, 0, 0))
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
      image = _minus_mean_image(d, square[y:y + size, x:x + size], y, x)
  if d.flip:
    # tf.reverse: a negative-stride slice is several times slower.
    image = tf.cond(draws["flip"], lambda: tf.reverse(image, [1]),
                    lambda: image)
  # Lighting and a per-channel mean are one constant per channel: a single
  # pass, since each float pass over the image costs about as much as a
  # resize here.
  shift = pca_shift(draws["alpha"], *eigen(d)) if d.pca_lighting else None
  if dtype == tf.uint8:  # The rest is device_finish's.
    return {"image": tf.ensure_shape(image, [size, size, 3]),
            "shift": tf.zeros([3]) if shift is None else shift}
  if pad:  # Mean already subtracted (and the std divided).
    image = image if shift is None else tf.nn.bias_add(image,
                                                       _scaled(d, shift))
  else:
    image = _finish(d, image, shift)
  return tf.ensure_shape(image, [size, size, 3])


def eval_image(d, data, size: int, crops: int):
  """The center crop (size, size, 3) or the 10 crops (10, size, size, 3)."""
  tf = lazy_tf()
  dtype = _dtype(d)
  finish = (lambda x: x) if dtype == tf.uint8 else functools.partial(
      _finish, d)  # uint8: device_finish's.
  # A mean image is subtracted from the whole square: each crop its window.
  square = _minus_mean_image(d, decoded_square(d, data, size, dtype), 0, 0)
  side = tf.shape(square)[0]
  c = (side - size) // 2
  if crops == 1:
    image = square[c:c + size, c:c + size]
    return tf.ensure_shape(finish(image), [size, size, 3])
  far = side - size
  corners = [(0, 0), (0, far), (far, 0), (far, far), (c, c)]
  five = tf.stack([square[y:y + size, x:x + size] for y, x in corners])
  image = tf.concat([five, tf.reverse(five, [2])], 0)
  return tf.ensure_shape(finish(image), [10, size, size, 3])


def device_finish(d):
  """f(image, shift=None) for the accelerator: a uint8 batch (B, [crops,]
  H, W, 3) becomes (image + shift - mean) / std in float32, as `_finish`
  does on the host; a float batch is returned as it is."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  mean = np.asarray(d.mean if len(d.mean) else (0.0,) * 3, np.float32)
  scale = np.asarray([1.0 / s for s in d.std] if len(d.std) else (1.0,) * 3,
                     np.float32)

  def finish(image, shift=None):
    if image.dtype != jnp.uint8:
      return image
    bias = -mean if shift is None else shift - mean
    bias = bias.reshape(bias.shape[:-1] + (1,) * (image.ndim - bias.ndim)
                        + bias.shape[-1:])
    return (image.astype(jnp.float32) + bias) * scale

  return finish


def finished_batch(d, batch: dict) -> dict:
  """The batch with float32 images (device_finish, on the host) and no
  "shift": for tools that read a batch's images outside the train step."""
  out = {k: v for k, v in batch.items() if k != "shift"}
  out["image"] = np.asarray(device_finish(d)(batch["image"],
                                             batch.get("shift")))
  return out
