"""Input pipeline throughput: the training pipeline next to a bare decode loop.

  python -m alexnet_jax.input_benchmark [--config=configs/default.py] \
      [--batch_size=128] [--num_batches=20] [--json] [--photos=DIR]

Rows, each measured in the same run:
  photos         with --photos=DIR (its *.jpg, e.g. the real photographs
                 that experiments/get_photos.py writes, cycled to
                 --num_images files): the paper's training pipeline on the
                 full-size photos, and on the 256x256 shards that
                 `python -m alexnet_jax.prepare` writes from them in the
                 same run (quality 90); the rows' per-core rates and their
                 ratio (prepared / full-size) are printed below the table;
  imagenet-like  500x375 JPEGs generated into a temporary folder, the paper's
                 training preprocessing (256 square, random 227 crop fused with
                 the decode, flip, PCA lighting, mean), and the same with the
                 crop after a full decode (fused_crop=False);
  cifar10        the extracted archive (~/.cache/alexnet_jax/cifar10), else a
                 subset of ../shared/data/cifar10-jpg.tar.gz, else generated
                 32x32 JPEGs; padded random crops, flip, mean;
  configured     the config's own data set when it is a tfds, folder or
                 prepared source that is present (data.decoder=dali: decoded
                 on the GPU); --configured_only measures only this row.
"bare decode" reads and decodes the same files one at a time in a Python
loop (tf.io.decode_image, no augmentation, no parallelism): what a naive
loader gets on one core. ratio = pipeline / bare. "per core" = pipeline
images/s divided by the CPUs this process may use. The CPU model, that
count and the load average before and after are printed with the table.
"""

from __future__ import annotations

import copy
import json
import os
import pathlib
import sys
import tarfile
import tempfile
import time

import numpy as np

from alexnet_jax import input_pipeline as ip
from alexnet_jax import model as model_lib
from alexnet_jax import sources

# TensorFlow comes from sources.lazy_tf(), which keeps it off the accelerators.
# pylint: disable=protected-access

IMAGENET_MEAN = (123.68, 116.78, 103.94)
CIFAR_MEAN = (124.14, 122.96, 112.57)
ARCHIVE = (pathlib.Path(__file__).resolve().parent.parent.parent / "shared" /
           "data" / "cifar10-jpg.tar.gz")
CIFAR_DIR = pathlib.Path("~/.cache/alexnet_jax/cifar10").expanduser()


def _photo(rng, height: int, width: int) -> np.ndarray:
  """A photo-like image: smooth colour fields, edges and sensor noise.

  Pure noise would compress badly and decode slowly; this lands near the
  100-150 KB of an average ImageNet JPEG at quality 90.
  """
  tf = sources.lazy_tf()
  coarse = rng.uniform(0, 255, (height // 24 + 2, width // 24 + 2, 3))
  image = tf.image.resize(coarse[None], [height, width], method="bicubic")[0]
  image = np.asarray(image) + rng.normal(0, 12, (height, width, 3))
  return np.clip(image, 0, 255).astype(np.uint8)


def _write_jpegs(root: pathlib.Path, n: int, height: int, width: int,
                 seed: int = 0):
  tf = sources.lazy_tf()
  rng = np.random.default_rng(seed)
  for i in range(n):
    path = root / "train" / f"c{i % 4}" / f"{i:05d}.jpg"
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (height, width) if i % 3 else (width, height)  # Some portraits.
    path.write_bytes(tf.io.encode_jpeg(_photo(rng, *shape),
                                       quality=90).numpy())


def _cifar_folder(tmp: pathlib.Path, n: int) -> tuple[str, str]:
  """(folder, where it came from) holding CIFAR-10 train/<class>/*.jpg."""
  if (CIFAR_DIR / "train").is_dir():
    return str(CIFAR_DIR), "extracted archive"
  root = tmp / "cifar10"
  if ARCHIVE.is_file():
    # The first n training images, streamed out of the archive.
    with tarfile.open(ARCHIVE, "r:gz") as tar:
      count = 0
      for member in tar:
        parts = pathlib.PurePosixPath(member.name).parts
        if member.isfile() and "train" in parts and member.name.endswith(
            ".jpg"):
          path = root / "train" / parts[-2] / parts[-1]
          path.parent.mkdir(parents=True, exist_ok=True)
          path.write_bytes(tar.extractfile(member).read())
          count += 1
          if count == n:
            break
    return str(root), f"{count} images of the archive"
  _write_jpegs(root, n, 32, 32)
  return str(root), "generated"


def _photo_folder(photos: str, root: pathlib.Path, n: int) -> list[str]:
  """root/train/c<k>/ holding n links cycling over photos/*.jpg; the names
  of the photos."""
  names = sorted(f for f in os.listdir(photos)
                 if f.lower().endswith((".jpg", ".jpeg")))
  if not names:
    raise ip.DataError(f"--photos={photos} holds no .jpg files (see "
                       f"experiments/get_photos.py)")
  for i in range(n):
    path = root / "train" / f"c{i % 4}" / f"{i:05d}.jpg"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(os.path.abspath(os.path.join(photos, names[i % len(
        names)])))
  return names


def _cores() -> int:
  return len(os.sched_getaffinity(0))


def _machine() -> str:
  model = "unknown CPU"
  try:
    with open("/proc/cpuinfo") as f:
      model = next((line.split(":", 1)[1].strip() for line in f
                    if line.startswith("model name")), model)
  except OSError:
    pass
  load = " ".join(f"{x:.2f}" for x in os.getloadavg())
  return f"{model}, {_cores()} usable cores, load average {load}"


def _data_config(config, **data):
  config = copy.deepcopy(config)
  d = config.data
  d.source, d.train_split, d.hint = "folder", "train", ""
  d.random_crop = d.flip = True
  for k, v in data.items():
    d[k] = v
  return config


def _pipeline_rate(config, size: int, batch_size: int,
                   num_batches: int) -> float:
  config = copy.deepcopy(config)
  config.batch_size = batch_size
  _, batches = ip.train_iterator(config, image_size=size)
  for _ in range(2):  # Warm-up: tracing, thread pools, first file reads.
    next(batches)
  start = time.perf_counter()
  for _ in range(num_batches):
    batch = next(batches)
  if hasattr(batch["image"], "block_until_ready"):  # DALI: a jax.Array.
    batch["image"].block_until_ready()
  rate = num_batches * batch_size / (time.perf_counter() - start)
  del batches  # Stops its threads before the next measurement.
  return rate


def _bare_rate(config, num_images: int) -> tuple[float, float]:
  """(images/s, mean KB per file) of a one-at-a-time read + decode loop."""
  tf = sources.lazy_tf()
  records = sources.split_records(config, config.data.train_split)
  elements = list(records.ordered.take(num_images).as_numpy_iterator())
  if records.read_files:
    files = [e["data"].decode() for e in elements]
    kb = np.mean([os.path.getsize(f) for f in files]) / 1024
  else:
    kb = np.mean([len(e["data"]) for e in elements]) / 1024
  decoded, start = 0, time.perf_counter()
  while decoded < num_images:
    for e in elements[:num_images - decoded]:
      data = tf.io.read_file(e["data"]) if records.read_files else e["data"]
      tf.io.decode_image(data, channels=3, expand_animations=False).numpy()
      decoded += 1
  return decoded / (time.perf_counter() - start), float(kb)


def run(config, *, batch_size: int | None = None,
        num_batches: int | None = None, as_json: bool = False,
        num_images: int | None = None, rounds: int = 3,
        photos: str | None = None, configured_only: bool = False
        ) -> list[dict]:
  """Measures every row, prints a table (or JSON) and returns the rows.

  num_images: how many ImageNet-sized JPEGs to generate (CIFAR gets 4x)
  and photo files to cycle over; the pipeline cycles over them. Each row is
  the median of `rounds` alternating measurements of the bare loop and the
  pipeline. photos: a folder of real photographs (rows "photos ...").
  """
  from alexnet_jax import prepare  # pylint: disable=g-import-not-at-top
  batch_size = batch_size or config.batch_size
  num_batches = num_batches or 20
  num_images = num_images or 256
  bare_images = max(batch_size, min(num_batches * batch_size, 1000))
  rows, machine = [], _machine()
  say = (lambda text: print(text, file=sys.stderr, flush=True)) if (
      as_json) else (lambda text: print(text, flush=True))
  say(f"machine: {machine}")
  with tempfile.TemporaryDirectory(prefix="alexnet_input_") as tmp:
    tmp = pathlib.Path(tmp)
    cases = []
    if photos:
      names = _photo_folder(photos, tmp / "photos", num_images)
      say(f"photos: {len(names)} from {photos} ({', '.join(names)}), "
          f"cycled to {num_images} files")
      full = _data_config(config, path=str(tmp / "photos"), resize_size=256,
                          crop_padding=0, pca_lighting=True,
                          mean=IMAGENET_MEAN, fused_crop=True)
      prepare.prepare(full, str(tmp / "prepared"), ["train"], quality=90,
                      log=lambda _: None)
      ready = copy.deepcopy(full)
      ready.data.source, ready.data.path = "prepared", str(tmp / "prepared")
      cases += [("photos full-size, fused crop", photos, full, 227),
                ("photos prepared 256x256 q90", photos, ready, 227)]
      for name, cfg in (("full-size", full), ("prepared 256x256 q90",
                                               ready)):
        cfg = copy.deepcopy(cfg)  # uint8 out, float work on the device.
        cfg.data.normalize_on_device = True
        cases.append((f"photos {name}, normalize_on_device", photos, cfg,
                      227))
    if not configured_only:
      _write_jpegs(tmp / "imagenet", num_images, 375, 500)
      cifar, cifar_from = _cifar_folder(tmp, 4 * num_images)
      paper = dict(path=str(tmp / "imagenet"), resize_size=256,
                   crop_padding=0, pca_lighting=True, mean=IMAGENET_MEAN)
    cases += [] if configured_only else [
        ("imagenet-like 500x375, fused crop", "generated",
         _data_config(config, fused_crop=True, **paper), 227),
        ("imagenet-like 500x375, full decode", "generated",
         _data_config(config, fused_crop=False, **paper), 227),
        ("cifar10 32x32", cifar_from,
         _data_config(config, path=cifar, resize_size=0, crop_padding=4,
                      pca_lighting=False, mean=CIFAR_MEAN), 32),
    ]
    if config.data.source in ("tfds", "folder", "prepared"):
      cases.append((f"configured ({config.data.source})", "config", config,
                    model_lib.input_size(config.model)))
    for name, source, cfg, size in cases:
      # Alternating rounds, medians: a shared machine's load drifts.
      bares, rates = [], []
      try:
        for _ in range(rounds):
          bare_rate, kb = _bare_rate(cfg, bare_images)
          bares.append(bare_rate)
          rates.append(_pipeline_rate(cfg, size, batch_size, num_batches))
      except ip.DataError as e:
        print(f"skipped {name}: {e}")
        continue
      rate, bare_rate = float(np.median(rates)), float(np.median(bares))
      rows.append({"data": name, "source": source, "image_size": size,
                   "batch_size": batch_size, "kb_per_file": round(kb, 1),
                   "pipeline_images_per_sec": round(rate, 1),
                   "bare_decode_images_per_sec": round(bare_rate, 1),
                   "ratio": round(rate / bare_rate, 2),
                   "pipeline_images_per_sec_per_core": round(
                       rate / _cores(), 1),
                   "cpu_cores": _cores()})
  after = _machine().split("load average ")[1]
  for r in rows:
    r["machine"] = f"{machine}; after the run {after}"
  if as_json:  # A list of rows (gpu_table.py reads it).
    print(json.dumps(rows, indent=1))
  else:
    print(format_table(rows))
    print(f"machine: {machine}; after the run {after}")
  return rows


def format_table(rows: list[dict]) -> str:
  head = (f"{'data':48s} {'size':>4s} {'KB':>6s} {'pipeline img/s':>15s} "
          f"{'per core':>9s} {'bare decode img/s':>18s} {'ratio':>6s}")
  lines = [head, "-" * len(head)]
  for r in rows:
    lines.append(f"{r['data']:48s} {r['image_size']:4d} "
                 f"{r['kb_per_file']:6.1f} "
                 f"{r['pipeline_images_per_sec']:15.1f} "
                 f"{r['pipeline_images_per_sec_per_core']:9.1f} "
                 f"{r['bare_decode_images_per_sec']:18.1f} "
                 f"{r['ratio']:6.2f}")
  by_name = {r["data"]: r for r in rows}
  for how in ("", ", normalize_on_device"):
    full = by_name.get("photos full-size" + (how or ", fused crop"))
    ready = by_name.get("photos prepared 256x256 q90" + how)
    if full and ready:
      rate, core, bare = ("pipeline_images_per_sec",
                          "pipeline_images_per_sec_per_core",
                          "bare_decode_images_per_sec")
      lines.append(
          f"prepared / full-size photos{how}: pipeline "
          f"{ready[rate] / full[rate]:.2f}x ({ready[core]:.1f} vs "
          f"{full[core]:.1f} img/s per core), bare decode "
          f"{ready[bare] / full[bare]:.2f}x")
  if rows:
    lines.append(f"batch {rows[0]['batch_size']}, {rows[0]['cpu_cores']} "
                 "CPU cores, medians of alternating rounds;\nbare decode = "
                 "read + decode one image at a time in Python, no resize.")
  return "\n".join(lines)


def _main(argv):
  del argv
  try:
    run(FLAGS.config, batch_size=FLAGS.batch_size or None,
        num_batches=FLAGS.num_batches or None, as_json=FLAGS.json,
        num_images=FLAGS.num_images or None, rounds=FLAGS.rounds,
        photos=FLAGS.photos, configured_only=FLAGS.configured_only)
  except (ip.DataError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  FLAGS = flags.FLAGS
  config_flags.DEFINE_config_file("config", "configs/default.py",
                                  "A config file (batch size, seed, data).")
  flags.DEFINE_integer("batch_size", 0, "Batch size (0: the config's).")
  flags.DEFINE_integer("num_batches", 0, "Batches timed per row (0: 20).")
  flags.DEFINE_integer("num_images", 0, "ImageNet-sized JPEGs to generate "
                       "(0: 256).")
  flags.DEFINE_integer("rounds", 3, "Alternating measurements per row.")
  flags.DEFINE_bool("json", False, "Print JSON instead of a table.")
  flags.DEFINE_bool("configured_only", False, "Measure only the config's "
                    "own data set.")
  flags.DEFINE_string("photos", None, "A folder of real photographs (*.jpg, "
                      "experiments/get_photos.py): full-size vs prepared "
                      "rows.")
  app.run(_main)
