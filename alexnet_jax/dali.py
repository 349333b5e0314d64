"""Training batches decoded on the GPU by NVIDIA DALI (data.decoder=dali).

For hosts whose CPUs cannot decode even the prepared 256x256 JPEGs as fast
as the GPU trains. DALI's TFRecord reader reads the shards that
`python -m alexnet_jax.prepare` wrote (with the .idx index written beside
each), nvJPEG decodes them on the GPU (fn.decoders.image, device='mixed'),
and fn.crop_mirror_normalize cuts the random image_size crop, mirrors half
of them and subtracts data.mean (divides by data.std) in one kernel; the
PCA lighting shift (preprocess.pca_shift's V @ (alpha * lambda), alpha ~
N(0, pca_std^2) per image) is added by JAX on the device. The batches are
jax.Arrays on the process's first GPU, with this data shard's rows.

The same augmentation as the tf.data path, not the same draws: DALI's
reader shuffles through a buffer (data.shuffle_buffer) and draws crops and
flips from its own generator, seeded from (seed, data shard, start step), so
a run is reproducible from a given start, but a resumed run does not replay
the batches an uninterrupted one would have seen (the tf.data path does).
Evaluation keeps the tf.data path (10 crops, exact counts; uint8 with
data.normalize_on_device, finished in the step, while DALI's training
batches are float32 whatever that option says). Not supported
here: data.mean_image, data.crop_padding, a data.resize_size other than the
prepared size.

Install: `pip install -e '.[dali]'` (nvidia-dali-cuda120; never a runtime
dependency). Without DALI or without a GPU this stops with one line.
"""

from __future__ import annotations

import numpy as np

from alexnet_jax import prepared
from alexnet_jax.folders import DataError
from alexnet_jax.preprocess import eigen, per_pixel
from alexnet_jax.sources import mix_seed


def require():
  """The GPU DALI runs on; DataError when DALI or a GPU is missing."""
  try:
    import nvidia.dali  # pylint: disable=g-import-not-at-top,unused-import
    from nvidia.dali.plugin import jax as _  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise DataError("data.decoder=dali needs NVIDIA DALI: pip install -e "
                    "'.[dali]' (nvidia-dali-cuda120), or set "
                    "data.decoder=tf") from None
  import jax  # pylint: disable=g-import-not-at-top
  gpus = [dev for dev in jax.local_devices() if dev.platform == "gpu"]
  if not gpus:
    raise DataError(f"data.decoder=dali decodes on a GPU and JAX has none "
                    f"(backend {jax.default_backend()}); set "
                    f"data.decoder=tf")
  return gpus[0]


def check(d, manifest: dict):
  if per_pixel(d) or d.crop_padding:
    raise DataError("data.decoder=dali does not do data.mean_image or "
                    "data.crop_padding; set data.decoder=tf")
  if d.resize_size not in (0, manifest["size"]):
    raise DataError(f"data.decoder=dali crops the prepared "
                    f"{manifest['size']}x{manifest['size']} squares as they "
                    f"are: set data.resize_size={manifest['size']} (or 0)")


def lighting_shift(d, seed: int, step: int, n: int) -> np.ndarray:
  """(n, 3) PCA lighting shifts (0-255 scale, divided by data.std) of the
  batch at `step`: a function of (seed, step)."""
  if not d.pca_lighting:
    return np.zeros((n, 3), np.float32)
  val, vec = eigen(d)
  alpha = np.random.default_rng([seed, step]).normal(size=(n, 3)) * d.pca_std
  shift = 255.0 * (alpha * val) @ vec.T
  if len(d.std):
    shift = shift / np.asarray(d.std)
  return shift.astype(np.float32)


def train_batches(config, *, image_size: int, start_step: int, b: int,
                  shard: int, num_shards: int):
  """(Split fields, an infinite iterator of {'image', 'label', 'mask'})."""
  device = require()
  import jax  # pylint: disable=g-import-not-at-top
  from nvidia.dali import fn, pipeline_def, types  # pylint: disable=g-import-not-at-top
  import nvidia.dali.tfrecord as tfrec  # pylint: disable=g-import-not-at-top
  from nvidia.dali.plugin.jax import DALIGenericIterator  # pylint: disable=g-import-not-at-top

  d = config.data
  files, index, manifest, entry = prepared.shard_files(d, d.train_split)
  check(d, manifest)
  seed = mix_seed(config.seed, 3, shard, start_step)
  mean = list(d.mean) if len(d.mean) else [0.0] * 3
  std = list(d.std) if len(d.std) else [1.0] * 3

  @pipeline_def(batch_size=b, num_threads=4, device_id=device.local_hardware_id,
                seed=seed % (2 ** 31), prefetch_queue_depth=2)
  def pipeline():
    inputs = fn.readers.tfrecord(
        path=files, index_path=index, name="reader",
        features={"image": tfrec.FixedLenFeature((), tfrec.string, ""),
                  "label": tfrec.FixedLenFeature([1], tfrec.int64, -1)},
        random_shuffle=True, initial_fill=max(1, min(d.shuffle_buffer,
                                                     1 << 16)),
        shard_id=shard, num_shards=num_shards)
    images = fn.decoders.image(inputs["image"], device="mixed",
                               output_type=types.RGB)
    kw = {}
    if d.random_crop:
      kw["crop_pos_x"] = fn.random.uniform(range=(0.0, 1.0))
      kw["crop_pos_y"] = fn.random.uniform(range=(0.0, 1.0))
    if d.flip:
      kw["mirror"] = fn.random.coin_flip(probability=0.5)
    images = fn.crop_mirror_normalize(
        images, crop=(image_size, image_size), mean=mean, std=std,
        dtype=types.FLOAT, output_layout="HWC", **kw)
    labels = fn.cast(inputs["label"], dtype=types.INT32)
    return images, labels

  iterator = DALIGenericIterator([pipeline()], ["image", "label"])
  add = jax.jit(lambda image, shift: image + shift[:, None, None, :])
  mask = jax.device_put(np.ones(b, bool), device)

  def batches():
    step = start_step
    for batch in iterator:
      shift = jax.device_put(lighting_shift(d, seed, step, b), device)
      yield {"image": add(batch["image"], shift),
             "label": batch["label"].reshape(-1), "mask": mask}
      step += 1

  names = tuple(manifest["class_names"])
  return (int(entry["num_examples"]),
          int(manifest.get("num_classes", len(names))), names), batches()
