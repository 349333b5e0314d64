"""Prepare once: the paper's 256x256 version of a data set, in TFRecord shards.

  python -m alexnet_jax.prepare --config=configs/default.py \
      --config.data.manual_dir=DIR --out=DIR [--splits=train,validation] \
      [--quality=90] [--size=256] [--workers=N] [--examples_per_shard=1024]

Reads the config's source as training does (data.source tfds, e.g.
imagenet2012 from data.manual_dir, or folder), and writes each image as the
paper describes its preprocessing: the shorter side rescaled to 256 and the
central 256x256 cut out (done as: the central square, resized to 256 with
antialiasing; a smaller square is enlarged, as the training pipeline
would), re-encoded as a JPEG of --quality. Training reads the shards with
data.source=prepared, data.path=DIR (prepared.py): it decodes a 256x256
JPEG instead of a full-size one, and augments it the same way.

Why TFRecord (not ArrayRecord read by grain): it needs no new dependency
(TensorFlow is already here for TFDS and tf.data), and tf.data already gives
the parallel, deterministic interleave over shards that the reader needs;
NVIDIA DALI reads the same files on a GPU (dali.py; the .idx files written
beside each shard are DALI's record index).

DIR holds plan.json (the settings and source; a rerun with others is
refused), <split>-NNNNN-of-MMMMM.tfrecord (tf.train.Examples: image = JPEG
bytes, label = int64, name = bytes) with a DALI record index .idx beside
each, parts/<shard>.json (written last for each shard: its counts, sha256
and bad images) and, once every shard is there, manifest.json: counts per
split and class, every shard's sha256, the bad images and their errors.

A shard is written under a temporary name and renamed when complete, and its
parts/ record comes last: an interrupted run leaves at most temporary files,
which the next run removes, and a rerun writes only the shards that are
missing (a finished one is never rewritten; --verify checks them all).
Examples of a folder source are put in a fixed pseudo-random order first (a
class-sorted listing would give shards of one class each); TFDS splits are
kept in their order, already shuffled when TFDS prepared them. Images that
cannot be decoded are counted and listed in the manifest, never fatal.
Shards are written in parallel by --workers processes (default: the CPUs).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time

import numpy as np

from alexnet_jax import folders
from alexnet_jax import prepared
from alexnet_jax import sources

FORMAT = "alexnet_jax prepared v1"
ORDER_SEED = 20120000  # The fixed order of a folder split's examples.


def _atomic_write(path: str, text: str):
  tmp = f"{path}.tmp.{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


# ---------------------------------------------------------------- one shard


def _examples(task):
  """(encoded bytes or None, label, name, error) of a task's examples."""
  tf = sources.lazy_tf()
  if task["kind"] == "folder":
    for path, label in task["items"]:
      try:
        with open(path, "rb") as f:
          yield f.read(), label, path, None
      except OSError as e:
        yield None, label, path, f"{type(e).__name__}: {e.strerror}"
    return
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder(task["name"], data_dir=task["data_dir"])
  ds = builder.as_dataset(
      split=f"{task['split']}[{task['start']}:{task['stop']}]",
      shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()},
      read_config=tfds.ReadConfig(add_tfds_id=True))
  for ex in ds.as_numpy_iterator():
    yield ex["image"], int(ex["label"]), ex["tfds_id"].decode(), None


def _square_fn(size: int, quality: int):
  """encoded image -> JPEG of its central square resized to size."""
  tf = sources.lazy_tf()

  @tf.function(input_signature=[tf.TensorSpec([], tf.string)],
               autograph=False)
  def square(data):
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    s = tf.minimum(h, w)
    image = image[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    # Antialiased bilinear (a triangle filter as wide as the scale): the
    # shrink averages, where plain bilinear would alias fine texture.
    image = tf.cond(
        tf.equal(s, size), lambda: image,
        lambda: tf.cast(tf.clip_by_value(tf.round(tf.image.resize(
            image, [size, size], antialias=True)), 0, 255), tf.uint8))
    return tf.io.encode_jpeg(image, quality=quality)

  return square


def _reason(error: Exception) -> str:
  """The cause in a graph error's message (not where the graph was built)."""
  lines = [line.strip() for line in str(getattr(error, "message", error))
           .splitlines()]
  lines = [line for line in lines if line and not line.startswith(
      ("Graph execution", "Detected at", "File ", "[["))]
  return (lines[-1] if lines else type(error).__name__)[:300]


def write_shard(task) -> dict:
  """Writes one shard (temporary name, then renamed) and its parts/ record;
  returns the record."""
  tf = sources.lazy_tf()
  out, name = task["out"], task["file"]
  path, pid = os.path.join(out, name), os.getpid()
  square = _square_fn(task["size"], task["quality"])
  counts, bad, written = {}, [], 0
  tmp = f"{path}.tmp.{pid}"
  with tf.io.TFRecordWriter(tmp) as writer:
    for data, label, ex_name, error in _examples(task):
      if error is None:
        try:
          jpeg = square(tf.constant(data)).numpy()
        except (tf.errors.OpError, ValueError) as e:
          error = _reason(e)
      if error is not None:
        bad.append({"name": ex_name, "error": error})
        continue
      b, i = tf.train.BytesList, tf.train.Int64List
      feature = {"image": tf.train.Feature(bytes_list=b(value=[jpeg])),
                 "label": tf.train.Feature(int64_list=i(value=[label])),
                 "name": tf.train.Feature(bytes_list=b(value=[
                     ex_name.encode()]))}
      writer.write(tf.train.Example(features=tf.train.Features(
          feature=feature)).SerializeToString())
      counts[label] = counts.get(label, 0) + 1
      written += 1
  _atomic_write(path[:-len(".tfrecord")] + ".idx",
                "".join(f"{o} {n}\n" for o, n in prepared.record_index(tmp)))
  os.replace(tmp, path)
  record = {"file": name, "split": task["split"], "num_examples": written,
            "num_source": task["num_source"], "bytes": os.path.getsize(path),
            "sha256": prepared.sha256(path),
            "per_class": {str(k): v for k, v in sorted(counts.items())},
            "bad": bad}
  _atomic_write(os.path.join(out, "parts", name + ".json"),
                json.dumps(record, indent=1))
  return record


def _worker_init():
  # One thread per op and per process: the pool is the parallelism.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # Bad images: listed.
  tf = sources.lazy_tf()
  tf.config.threading.set_intra_op_parallelism_threads(1)
  tf.config.threading.set_inter_op_parallelism_threads(1)


# ---------------------------------------------------------------- the plan


def _source_tasks(config, split: str):
  """(description, class names, per-shard task template function, number
  of examples) of one split of the config's source."""
  d = config.data
  if d.source == "folder":
    paths, labels, names = folders.list_folder(d, split)
    order = np.random.default_rng(ORDER_SEED).permutation(len(paths))
    items = [(paths[i], int(labels[i])) for i in order]
    source = {"kind": "folder", "path": os.path.abspath(
        os.path.expanduser(d.path)), "classes": list(d.get("classes", ()))}
    return source, names, (lambda a, b: {"kind": "folder",
                                         "items": items[a:b]}), len(items)
  if d.source == "tfds":
    records = sources._tfds_records(config, split, 0, 1)  # pylint: disable=protected-access
    data_dir = os.path.expanduser(d.data_dir) if d.data_dir else None
    source = {"kind": "tfds", "name": d.name, "data_dir": data_dir}
    return source, records.class_names or tuple(
        str(i) for i in range(records.num_classes)), (
            lambda a, b: {"kind": "tfds", "name": d.name,
                          "data_dir": data_dir, "split": split,
                          "start": a, "stop": b}), records.num_examples
  raise sources.DataError(f"prepare reads data.source=tfds or folder, not "
                          f"{d.source!r}")


def plan(config, out: str, splits, *, size: int, quality: int,
         examples_per_shard: int):
  """(plan dict, tasks) for the splits; DataError on bad settings or a
  folder prepared with other settings."""
  if not 1 <= quality <= 100:
    raise sources.DataError(f"--quality must be 1-100, got {quality}")
  if size < 1 or examples_per_shard < 1:
    raise sources.DataError("--size and --examples_per_shard must be >= 1")
  if not splits:
    raise sources.DataError("--splits names no split")
  settings = {"format": FORMAT, "size": size, "quality": quality,
              "examples_per_shard": examples_per_shard, "splits": {}}
  tasks, names = [], None
  for split in splits:
    source, split_names, template, n = _source_tasks(config, split)
    if n == 0:
      raise sources.DataError(f"split {split!r} of the source is empty")
    if names is not None and tuple(split_names) != tuple(names):
      raise sources.DataError(f"split {split!r} has other classes than "
                              f"{splits[0]!r}")
    names = split_names
    num_shards = -(-n // examples_per_shard)
    settings["source"] = source
    settings["splits"][split] = {"num_source": n, "num_shards": num_shards}
    for i in range(num_shards):
      name = f"{split}-{i:05d}-of-{num_shards:05d}.tfrecord"
      a, b = i * examples_per_shard, min(n, (i + 1) * examples_per_shard)
      tasks.append({**template(a, b), "out": out, "file": name,
                    "split": split, "num_source": b - a, "size": size,
                    "quality": quality})
  settings["class_names"] = list(names)
  return settings, tasks


def _check_plan(out: str, settings: dict) -> dict:
  """plan.json: the settings of every run into `out`, which must agree but
  for the splits each prepares (a split added later joins the plan)."""
  path = os.path.join(out, "plan.json")
  merged, old = settings, None
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    diff = sorted(k for k in {**old, **settings} if k != "splits" and
                  old.get(k) != settings.get(k)) + [
                      f"splits.{k}" for k in settings["splits"]
                      if old["splits"].get(k, settings["splits"][k]) !=
                      settings["splits"][k]]
    if diff:
      raise sources.DataError(f"{out} was prepared with other settings "
                              f"({', '.join(diff)} differ): use another "
                              f"--out, or delete it")
    merged = {**old, "splits": {**old["splits"], **settings["splits"]}}
  if merged != old:
    _atomic_write(path, json.dumps(merged, indent=1))
  return merged


def done_part(out: str, name: str) -> dict | None:
  """The parts/ record of a finished shard, or None if it is not complete."""
  try:
    with open(os.path.join(out, "parts", name + ".json")) as f:
      record = json.load(f)
    if os.path.getsize(os.path.join(out, name)) == record["bytes"]:
      return record
  except (OSError, ValueError, KeyError):
    pass
  return None


def manifest(settings: dict, records: list[dict]) -> dict:
  names = settings["class_names"]
  out = {k: settings[k] for k in ("format", "size", "quality", "source",
                                  "examples_per_shard")}
  out["num_classes"], out["class_names"], out["splits"] = len(names), names, {}
  for split in settings["splits"]:
    mine = sorted((r for r in records if r["split"] == split),
                  key=lambda r: r["file"])
    per_class = {}
    for r in mine:
      for k, v in r["per_class"].items():
        per_class[names[int(k)]] = per_class.get(names[int(k)], 0) + v
    out["splits"][split] = {
        "num_examples": sum(r["num_examples"] for r in mine),
        "num_source": sum(r["num_source"] for r in mine),
        "num_bad": sum(len(r["bad"]) for r in mine),
        "bad": [b for r in mine for b in r["bad"]],
        "per_class": {c: per_class[c] for c in names if c in per_class},
        "shards": [{k: r[k] for k in ("file", "num_examples", "bytes",
                                      "sha256")} for r in mine]}
  return out


def prepare(config, out: str, splits, *, size: int = 256, quality: int = 90,
            examples_per_shard: int = 1024, workers: int = 0,
            log=print) -> dict:
  """Writes the missing shards of `splits` and the manifest; returns it."""
  from alexnet_jax.progress import eta  # pylint: disable=g-import-not-at-top
  out = os.path.abspath(os.path.expanduser(out))
  os.makedirs(os.path.join(out, "parts"), exist_ok=True)
  kw = dict(size=size, quality=quality, examples_per_shard=examples_per_shard)
  settings, tasks = plan(config, out, list(splits), **kw)
  earlier = [k for k in _check_plan(out, settings)["splits"]
             if k not in splits]
  if earlier:  # The manifest lists them too: their missing shards are written.
    settings, tasks = plan(config, out, list(splits) + earlier, **kw)
  for d in (out, os.path.join(out, "parts")):  # An interrupted run's leftovers.
    for entry in os.scandir(d):
      if ".tmp." in entry.name:
        os.remove(entry.path)
  records = [r for r in (done_part(out, t["file"]) for t in tasks) if r]
  have = {r["file"] for r in records}
  todo = [t for t in tasks if t["file"] not in have]
  total = sum(t["num_source"] for t in todo)
  workers = min(workers or os.cpu_count() or 1, max(len(todo), 1))
  log(f"{out}: {len(tasks)} shards, {len(have)} already written, "
      f"{len(todo)} to write ({total} images) with {workers} process(es)")
  start, images = time.perf_counter(), 0

  def finished(record):
    nonlocal images
    records.append(record)
    images += record["num_source"]
    rate = images / max(time.perf_counter() - start, 1e-9)
    log(f"  {record['file']}: {record['num_examples']} images"
        f"{', %d bad' % len(record['bad']) if record['bad'] else ''}  "
        f"[{len(records) - len(have)}/{len(todo)} shards, {rate:.0f} img/s, "
        f"ETA {eta((total - images) / max(rate, 1e-9))}]")

  if workers <= 1:
    for task in todo:
      finished(write_shard(task))
  elif todo:
    ctx = multiprocessing.get_context("spawn")  # TF is not fork-safe.
    with ctx.Pool(workers, initializer=_worker_init) as pool:
      for record in pool.imap_unordered(write_shard, todo):
        finished(record)
  result = manifest(settings, records)
  path, text = os.path.join(out, "manifest.json"), json.dumps(result, indent=1)
  if not os.path.exists(path) or open(path).read() != text:
    _atomic_write(path, text)
  for split, s in result["splits"].items():
    log(f"{split}: {s['num_examples']} images in {len(s['shards'])} shards, "
        f"{s['num_bad']} bad, {sum(x['bytes'] for x in s['shards']) / 1e6:.1f}"
        f" MB")
  return result


def _main(argv):
  from absl import app  # pylint: disable=g-import-not-at-top
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # Bad images: listed.
  if argv[1:]:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  config, d = FLAGS.config, FLAGS.config.data
  splits = FLAGS.splits or [d.train_split, d.eval_split] + (
      [d.test_split] if d.get("test_split") else [])
  try:
    if FLAGS.verify:
      wrong = prepared.verify(FLAGS.out)
      if wrong:
        print(f"error: {len(wrong)} shard(s) differ from "
              f"{FLAGS.out}/manifest.json: {', '.join(wrong[:10])}; delete "
              f"them and their parts/ records and rerun prepare",
              file=sys.stderr)
        return 1
      print(f"{FLAGS.out}: every shard matches its sha256")
      return 0
    prepare(config, FLAGS.out, list(dict.fromkeys(splits)), size=FLAGS.size,
            quality=FLAGS.quality,
            examples_per_shard=FLAGS.examples_per_shard,
            workers=FLAGS.workers)
  except (sources.DataError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except sources.lazy_tf().errors.OpError as e:  # A worker's read or write.
    print(f"error: {_reason(e)}", file=sys.stderr)
    return 2
  return 0


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file("config", "configs/default.py",
                                  "The data config to read (data.source "
                                  "tfds or folder).")
  flags.DEFINE_string("out", None, "Where the shards go.", required=True)
  flags.DEFINE_list("splits", [], "Splits to write (default: the config's "
                    "train, eval and test splits).")
  flags.DEFINE_integer("size", 256, "Side of the central square written.")
  flags.DEFINE_integer("quality", 90, "JPEG quality of the written images.")
  flags.DEFINE_integer("examples_per_shard", 1024, "Images per shard.")
  flags.DEFINE_integer("workers", 0, "Processes writing shards (0: one per "
                       "CPU).")
  flags.DEFINE_bool("verify", False, "Only check every shard's sha256 "
                    "against the manifest.")
  return flags.FLAGS


if __name__ == "__main__":
  from absl import app as _app  # pylint: disable=g-import-not-at-top
  FLAGS = _define_flags()
  _app.run(_main)
