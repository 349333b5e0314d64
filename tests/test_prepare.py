"""prepare.py writes the 256x256 shards once (resumable, idempotent, bad
images listed); prepared.py reads them back as a source whose crops match
the raw pipeline's; the DALI option fails with one clear line on a CPU."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from alexnet_jax import input_pipeline as ip
from alexnet_jax import prepare
from alexnet_jax import prepared
from alexnet_jax import preprocess
from configs import default
from tests.test_input_pipeline import imagenet_manual_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Photo-like sizes, portrait and landscape, one smaller than 256 (enlarged).
SIZES = [(300, 400), (375, 500), (500, 333), (200, 240), (256, 256)]


def photo(rng, h, w):
  """A smooth random colour field with a little noise (compresses like a
  photograph, not like noise)."""
  coarse = rng.uniform(0, 255, (h // 16 + 2, w // 16 + 2, 3))
  image = tf.image.resize(coarse[None], [h, w], method="bicubic")[0]
  return np.clip(np.asarray(image) + rng.normal(0, 4, (h, w, 3)), 0,
                 255).astype(np.uint8)


def jpeg(image, quality=95):
  return tf.io.encode_jpeg(image, quality=quality).numpy()


def image_folder(root, counts, sizes=SIZES, seed=0):
  """root/<split>/c<k>/<i>.jpg, counts = {split: number of images}."""
  rng = np.random.default_rng(seed)
  for split, n in counts.items():
    for i in range(n):
      path = root / split / f"c{i % 3}" / f"{i:03d}.jpg"
      path.parent.mkdir(parents=True, exist_ok=True)
      path.write_bytes(jpeg(photo(rng, *sizes[i % len(sizes)])))


def folder_config(path, **data):
  config = default.get_config()
  config.batch_size = 4
  d = config.data
  d.source, d.path, d.eval_split = "folder", str(path), "val"
  for k, v in data.items():
    d[k] = v
  return config


def prepared_config(config, out):
  config = config.copy_and_resolve_references()
  config.data.source, config.data.path = "prepared", str(out)
  return config


def read_shard(path):
  spec = {"image": tf.io.FixedLenFeature([], tf.string),
          "label": tf.io.FixedLenFeature([], tf.int64),
          "name": tf.io.FixedLenFeature([], tf.string)}
  return [tf.io.parse_single_example(r, spec)
          for r in tf.data.TFRecordDataset(str(path))]


def test_folder_is_prepared_with_manifest_and_bad_images_listed(tmp_path):
  image_folder(tmp_path / "src", {"train": 10, "val": 4})
  (tmp_path / "src/train/c1/broken.jpg").write_bytes(b"not an image")
  cut = jpeg(photo(np.random.default_rng(1), 300, 400))
  (tmp_path / "src/train/c2/truncated.jpg").write_bytes(cut[:len(cut) // 3])
  config = folder_config(tmp_path / "src")
  out = tmp_path / "out"
  m = prepare.prepare(config, str(out), ["train", "val"], quality=90,
                      examples_per_shard=4, workers=1, log=lambda _: None)
  train = m["splits"]["train"]
  assert (train["num_source"], train["num_examples"], train["num_bad"]) == (
      12, 10, 2)
  assert sorted(os.path.basename(b["name"]) for b in train["bad"]) == [
      "broken.jpg", "truncated.jpg"]
  assert all(b["error"] for b in train["bad"])
  assert train["per_class"] == {"c0": 4, "c1": 3, "c2": 3}
  assert m["splits"]["val"]["per_class"] == {"c0": 2, "c1": 1, "c2": 1}
  assert [s["file"] for s in train["shards"]] == [
      f"train-0000{i}-of-00003.tfrecord" for i in range(3)]
  assert m["class_names"] == ["c0", "c1", "c2"] and m["quality"] == 90
  with open(out / "manifest.json") as f:
    assert json.load(f) == m
  names = []
  for split in ("train", "val"):
    for shard in m["splits"][split]["shards"]:
      path = out / shard["file"]
      assert prepared.sha256(str(path)) == shard["sha256"]
      examples = read_shard(path)
      assert len(examples) == shard["num_examples"]
      # DALI's index: one "offset length" line per record, covering the file.
      index = np.loadtxt(str(path)[:-len(".tfrecord")] + ".idx", ndmin=2)
      assert len(index) == len(examples)
      assert index[-1].sum() == os.path.getsize(path)
      for ex in examples:
        assert tf.image.decode_jpeg(ex["image"]).shape == (256, 256, 3)
        names.append(ex["name"].numpy().decode())
  # Every readable image once; the folder's class-sorted listing shuffled.
  assert len(set(names)) == len(names) == 14
  labels = [int(ex["label"]) for ex in read_shard(
      out / train["shards"][0]["file"])]
  assert len(set(labels)) > 1
  assert prepared.verify(str(out)) == []


def test_rerun_writes_only_what_is_missing(tmp_path):
  image_folder(tmp_path / "src", {"train": 12, "val": 2}, sizes=[(40, 50)])
  config = folder_config(tmp_path / "src")
  out = tmp_path / "out"
  kw = dict(size=32, examples_per_shard=3, workers=1, log=lambda _: None)
  first = prepare.prepare(config, str(out), ["train", "val"], **kw)
  shards = sorted(p.name for p in out.glob("*.tfrecord"))
  assert len(shards) == 5
  os.utime(out / "manifest.json", ns=(1, 1))
  for name in shards:
    os.utime(out / name, ns=(1, 1))  # Any rewrite shows as a new mtime.
  # Interrupted: one shard's temporary file left behind and its record not
  # written; another shard deleted.
  os.rename(out / shards[1], out / f"{shards[1]}.tmp.999")
  os.remove(out / "parts" / f"{shards[1]}.json")
  os.remove(out / shards[3])
  os.remove(out / "manifest.json")
  with pytest.raises(ip.DataError, match="interrupted: rerun"):
    ip.train_iterator(prepared_config(config, out), image_size=32)
  lines = []
  second = prepare.prepare(config, str(out), ["train", "val"],
                           **{**kw, "log": lines.append})
  assert "2 to write" in lines[0]
  assert second == first  # Same bytes: JPEG encoding is deterministic.
  rewritten = {n for n in shards if os.stat(out / n).st_mtime_ns != 1}
  assert rewritten == {shards[1], shards[3]}
  assert not list(out.glob("*.tmp.*"))
  # Idempotent: nothing to do, nothing touched.
  os.utime(out / "manifest.json", ns=(1, 1))
  lines = []
  assert prepare.prepare(config, str(out), ["train", "val"],
                         **{**kw, "log": lines.append}) == first
  assert "0 to write" in lines[0]
  assert os.stat(out / "manifest.json").st_mtime_ns == 1
  assert all(os.stat(out / n).st_mtime_ns != 1 or n not in rewritten
             for n in shards)
  with pytest.raises(ip.DataError, match="other settings"):
    prepare.prepare(config, str(out), ["train", "val"],
                    **{**kw, "quality": 80})


def test_prepared_source_reads_every_example_once_per_epoch(tmp_path):
  image_folder(tmp_path / "src", {"train": 10, "val": 3}, sizes=[(40, 48)])
  config = folder_config(tmp_path / "src", resize_size=32, random_crop=True)
  out = tmp_path / "out"
  prepare.prepare(config, str(out), ["train", "val"], size=32,
                  examples_per_shard=3, workers=1, log=lambda _: None)
  config = prepared_config(config, out)
  config.data.shuffle_buffer = 4

  def names(shard, num_shards, epoch=None):
    r = prepared.records(config, "train", shard, num_shards)
    ds = r.ordered if epoch is None else r.epoch(tf.constant(epoch,
                                                             tf.int64))
    return [e["name"] for e in ds.as_numpy_iterator()]

  everything = names(0, 1)
  assert len(set(everything)) == 10
  halves = names(0, 2), names(1, 2)
  assert len(halves[0]) == len(halves[1]) == 5
  assert sorted(halves[0] + halves[1]) == sorted(everything)
  e0, e1 = names(0, 1, 0), names(0, 1, 1)
  assert sorted(e0) == sorted(e1) == sorted(everything)
  assert e0 != e1 and e0 == names(0, 1, 0)  # Per epoch, deterministic.
  info, batches = ip.train_iterator(config, image_size=28)
  assert (info.num_examples, info.num_classes) == (10, 3)
  first = [next(batches) for _ in range(3)]
  _, again = ip.train_iterator(config, image_size=28, start_step=2)
  np.testing.assert_array_equal(next(again)["image"], first[2]["image"])
  _, batches = ip.eval_iterator(config, image_size=28)
  batches = list(batches)
  assert batches[0]["image"].shape == (4, 10, 28, 28, 3)
  assert sum(b["mask"].sum() for b in batches) == 3


def test_prepared_crops_match_the_raw_pipeline(tmp_path):
  """Same seed, same example: the same crops, up to the JPEG re-encoding.

  The sources are 256 on the short side, so prepare's square is the raw
  pipeline's square with no resize in either, and the only difference is
  the quality-90 re-encoding. Its own error, the prepared square against
  the raw one (mean absolute, about 2.7 levels of 255 on these noisy
  images), is the tolerance: a crop may differ by at most 1.5x it (it
  differs by about 1.0x: the same pixels), while the same image cut at
  another random crop differs by more than 5x it (13-27x here).
  """
  image_folder(tmp_path / "src", {"train": 4, "val": 2},
               sizes=[(256, 320), (341, 256), (256, 256)])
  config = folder_config(tmp_path / "src", resize_size=256)
  out = tmp_path / "out"
  prepare.prepare(config, str(out), ["train", "val"], quality=90,
                  workers=1, log=lambda _: None)
  raw = {e["name"].decode(): tf.io.read_file(e["data"]) for e in
         ip.split_records(config, "train").ordered.as_numpy_iterator()}
  ready = {e["name"].decode(): e["data"] for e in prepared.records(
      prepared_config(config, out), "train", 0, 1).ordered.as_numpy_iterator()}
  assert sorted(raw) == sorted(ready)
  d, errors = config.data, []
  for i, name in enumerate(sorted(raw)):
    key = tf.constant([7, i], tf.int64)
    a = preprocess.train_image(d, raw[name], key, 227).numpy()
    b = preprocess.train_image(d, ready[name], key, 227).numpy()
    other = preprocess.train_image(d, raw[name], tf.constant(
        [8, i], tf.int64), 227).numpy()
    # The re-encoding's own error: the prepared square against the raw one.
    square = tf.image.decode_jpeg(raw[name]).numpy().astype(float)
    h, w = square.shape[:2]
    y, x = (h - 256) // 2, (w - 256) // 2
    error = np.abs(tf.image.decode_jpeg(ready[name]).numpy() -
                   square[y:y + 256, x:x + 256]).mean()
    errors.append(error)
    assert 0 < np.abs(a - b).mean() < 1.5 * error
    assert np.abs(a - other).mean() > 5 * error
  # The eval pipelines' 10 crops, matched by label (one val image a class).
  config.data.eval_crops = 10
  by_label = {}
  for cfg in (config, prepared_config(config, out)):
    _, batches = ip.eval_iterator(cfg, image_size=227)
    rows = [(l, img) for b in batches for l, img, m in zip(
        b["label"], b["image"], b["mask"]) if m]
    by_label[cfg.data.source] = sorted(rows, key=lambda r: (r[0], r[1].sum()))
  for (la, a), (lb, b) in zip(by_label["folder"], by_label["prepared"]):
    assert la == lb and np.abs(a - b).mean() < 1.5 * max(errors)


def test_tfds_imagenet2012_manual_dir_is_prepared(tmp_path):
  """From ILSVRC-style tars in manual_dir (TFDS builds imagenet2012 first),
  with a pool of 2 processes writing the shards."""

  rng = np.random.default_rng(3)
  manual = imagenet_manual_dir(tmp_path / "manual",
                               lambda h, w: jpeg(photo(rng, h, w)))
  config = default.get_config()
  config.data.manual_dir = str(manual)
  config.data.data_dir = str(tmp_path / "tfds")
  out = tmp_path / "out"
  m = prepare.prepare(config, str(out), ["train", "validation"], size=64,
                      examples_per_shard=4, workers=2, log=lambda _: None)
  assert m["num_classes"] == 1000 and m["source"]["kind"] == "tfds"
  assert m["splits"]["train"]["per_class"] == {"n01440764": 3,
                                               "n01443537": 3}
  assert len(m["splits"]["train"]["shards"]) == 2
  # TFDS's validation labels of images 1-3: classes 65, 970 and 230.
  val = m["splits"]["validation"]
  assert val["num_examples"] == 3 and sum(val["per_class"].values()) == 3
  labels = sorted(int(e["label"]) for e in read_shard(
      out / val["shards"][0]["file"]))
  assert labels == [65, 230, 970]
  info = ip.describe_split(prepared_config(config, out), "validation", 56)
  assert (info.num_examples, info.num_classes) == (3, 1000)


def test_prepared_errors_are_one_line(tmp_path):
  image_folder(tmp_path / "src", {"train": 3}, sizes=[(40, 40)])
  config = folder_config(tmp_path / "src")
  out = tmp_path / "out"
  cfg = prepared_config(config, out)
  with pytest.raises(ip.DataError, match="no manifest.json in"):
    ip.train_iterator(cfg, image_size=32)
  prepare.prepare(config, str(out), ["train"], size=40, workers=1,
                  log=lambda _: None)
  with pytest.raises(ip.DataError, match="holds no split 'val'"):
    ip.eval_iterator(cfg, image_size=32)
  shard = next(out.glob("train-*.tfrecord"))
  shard.write_bytes(shard.read_bytes()[:100])
  with pytest.raises(ip.DataError, match="incomplete .100 of"):
    ip.train_iterator(cfg, image_size=32)
  cfg.data.decoder = "dali"
  with pytest.raises(ip.DataError, match=r"needs NVIDIA DALI: pip install"):
    ip.train_iterator(cfg, image_size=32)
  # And in the checks before a run writes to its workdir.
  from alexnet_jax import preflight  # pylint: disable=g-import-not-at-top
  with pytest.raises(ip.DataError, match=r"needs NVIDIA DALI: pip install"):
    preflight.check_data(cfg, train=True)
  # The command line: a checksum mismatch is one line and exit 1.
  r = subprocess.run([sys.executable, "-m", "alexnet_jax.prepare",
                      f"--out={out}", "--verify"], cwd=ROOT,
                     capture_output=True, text=True)
  assert r.returncode == 1, r.stderr
  assert r.stderr.startswith("error: 1 shard(s) differ") and r.stderr.count(
      "\n") == 1


def test_dali_lighting_is_the_pca_shift():
  """The shift DALI batches get is preprocess's lighting formula."""
  from alexnet_jax import dali  # pylint: disable=g-import-not-at-top
  d = default.get_config().data
  shift = dali.lighting_shift(d, 5, 0, 4)
  alpha = np.random.default_rng([5, 0]).normal(size=(4, 3)) * d.pca_std
  for row, a in zip(shift, alpha):
    np.testing.assert_allclose(
        row, preprocess.pca_shift(tf.constant(a, tf.float32)).numpy(),
        rtol=1e-5, atol=1e-4)
  assert not np.allclose(shift, dali.lighting_shift(d, 5, 1, 4))


def test_a_split_prepared_later_joins_the_manifest(tmp_path):
  image_folder(tmp_path / "src", {"train": 4, "val": 3, "test": 2},
               sizes=[(256, 300)])
  config = folder_config(tmp_path / "src")
  out = tmp_path / "out"
  prepare.prepare(config, str(out), ["train", "val"], workers=1,
                  log=lambda *_: None)
  before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tfrecord")}
  m = prepare.prepare(config, str(out), ["test"], workers=1,
                      log=lambda *_: None)
  assert {k: v["num_examples"] for k, v in m["splits"].items()} == {
      "train": 4, "val": 3, "test": 2}
  assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.tfrecord")
          if not p.name.startswith("test")} == before  # Not rewritten.
  # Other settings are still refused, naming what differs.
  with pytest.raises(prepared.DataError, match="quality differ"):
    prepare.prepare(config, str(out), ["test"], quality=80, workers=1,
                    log=lambda *_: None)
