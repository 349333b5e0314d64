"""The input pipeline against NumPy references, on tiny generated data sets."""

import io
import pathlib
import subprocess
import sys
import tarfile
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from alexnet_jax import input_pipeline as ip
from alexnet_jax import preprocess
from alexnet_jax import sources
from configs import cifar10, default, smoke

CIFAR = pathlib.Path("~/.cache/alexnet_jax/cifar10").expanduser()


# ---------------------------------------------------------------- helpers


def config_for(path, *, batch_size=4, **data):
  """The default config on a folder, augmentation off unless asked."""
  config = default.get_config()
  config.batch_size = batch_size
  d = config.data
  d.source, d.path, d.eval_split = "folder", str(path), "val"
  d.resize_size, d.random_crop, d.flip, d.pca_lighting = 0, False, False, False
  d.mean, d.eval_crops = (), 1
  for k, v in data.items():
    d[k] = v
  return config


def write_image(path, image, fmt="png"):
  path.parent.mkdir(parents=True, exist_ok=True)
  if fmt == "png":
    data = tf.io.encode_png(image)
  else:  # 4:4:4 JPEG: decoding a window gives exactly the full decode's pixels.
    data = tf.io.encode_jpeg(image, quality=95, chroma_downsampling=False)
  path.write_bytes(data.numpy())


def id_folder(root, n, *, split="train", classes=3, size=4):
  """n constant PNGs whose colour encodes their id: R + 256 G = id."""
  ids, labels = [], []
  for i in range(n):
    label = i % classes
    colour = np.array([i % 256, i // 256, 40 * label], np.uint8)
    write_image(root / split / f"c{label}" / f"{i:05d}.png",
                np.broadcast_to(colour, (size, size, 3)).copy())
    ids.append(i)
    labels.append(label)
  return np.array(ids), np.array(labels)


def ids_of(images):
  """The ids encoded by id_folder, from images with no mean subtracted."""
  pixel = np.rint(images[:, 0, 0]).astype(int)
  return pixel[:, 0] + 256 * pixel[:, 1]


def smooth_image(rng, h, w):
  """A photo-like random image: a coarse colour field, upsampled."""
  coarse = rng.uniform(0, 255, (h // 4 + 2, w // 4 + 2, 3))
  image = tf.image.resize(coarse[None], [h, w], method="bicubic")[0]
  return np.clip(np.asarray(image) + rng.normal(0, 8, (h, w, 3)), 0,
                 255).astype(np.uint8)


def np_resize(image, size):
  """Bilinear resize with half-pixel centers (TF's, no antialias), NumPy."""
  image = image.astype(np.float64)

  def axis(out, n):
    x = (np.arange(out) + 0.5) * (n / out) - 0.5
    lo = np.clip(np.floor(x), 0, n - 1).astype(int)
    hi = np.clip(np.ceil(x), 0, n - 1).astype(int)
    return lo, hi, x - np.floor(x)

  y0, y1, fy = axis(size, image.shape[0])
  x0, x1, fx = axis(size, image.shape[1])
  top = image[y0][:, x0] + (image[y0][:, x1] - image[y0][:, x0]) * fx[:, None]
  bot = image[y1][:, x0] + (image[y1][:, x1] - image[y1][:, x0]) * fx[:, None]
  return top + (bot - top) * fy[:, None, None]


def np_square(image):
  h, w = image.shape[:2]
  s = min(h, w)
  return image[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]


def draws_at(config, position, shard=0):
  """The augmentation draws the pipeline makes at a stream position."""
  key = tf.constant([sources.mix_seed(config.seed, 2, shard), position],
                    tf.int64)
  draws = preprocess.augment_params(key, config.data.pca_std)
  return {k: v.numpy() for k, v in draws.items()}


def offset_of(u, side, size):
  return tuple(preprocess.crop_offset(tf.constant(u), side, size).numpy())


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def imagenet_manual_dir(manual, jpeg):
  """ILSVRC2012's two tars in `manual`, as TFDS's manual_dir reads them:
  train holds 3 images of each of classes 0 and 1, val the validation
  images 1-3: the bytes jpeg(h, w) returns for (h, w) = (60, 80) and
  (80, 60), the sizes asked for (a caller may ignore them)."""

  def add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))

  manual.mkdir(parents=True)
  with tarfile.open(manual / "ILSVRC2012_img_train.tar", "w") as outer:
    for synset in ("n01440764", "n01443537"):  # Classes 0 and 1.
      inner = io.BytesIO()
      with tarfile.open(fileobj=inner, mode="w") as tar:
        for i in range(3):
          add(tar, f"{synset}_{i}.JPEG", jpeg(60, 80))
      add(outer, f"{synset}.tar", inner.getvalue())
  with tarfile.open(manual / "ILSVRC2012_img_val.tar", "w") as tar:
    for i in range(1, 4):
      add(tar, f"ILSVRC2012_val_{i:08d}.JPEG", jpeg(80, 60))
  return manual


# ---------------------------------------------------------------- pixels


@pytest.mark.parametrize("fmt,fused", [("png", False), ("jpeg", True),
                                       ("jpeg", False)])
def test_train_crops_and_flips_equal_numpy(tmp_path, fmt, fused):
  rng = np.random.default_rng(0)
  originals = [smooth_image(rng, 30, 40), smooth_image(rng, 44, 36),
               smooth_image(rng, 32, 32)]
  for label, image in enumerate(originals):  # One image per class.
    write_image(tmp_path / "train" / f"c{label}" / f"x.{fmt}", image, fmt)
  size, side = 16, 24
  config = config_for(tmp_path, batch_size=3, resize_size=side,
                      random_crop=True, flip=True, fused_crop=fused)
  _, batches = ip.train_iterator(config, image_size=size)
  flips = set()
  for step, batch in enumerate(take(batches, 4)):
    for row in range(3):
      label = batch["label"][row]
      decoded = tf.io.decode_image(
          (tmp_path / "train" / f"c{label}" / f"x.{fmt}").read_bytes(),
          channels=3).numpy()
      draws = draws_at(config, step * 3 + row)
      oy, ox = offset_of(draws["u"], side, size)
      h, w = decoded.shape[:2]
      s = min(h, w)
      if fused:
        # The crop of the resized square, mapped back to the original image.
        crop = int(np.clip(np.round(size * s / side), 1, s))
        y = (h - s) // 2 + min(int(np.round(oy * s / side)), s - crop)
        x = (w - s) // 2 + min(int(np.round(ox * s / side)), s - crop)
        want = np_resize(decoded[y:y + crop, x:x + crop], size)
      else:
        want = np_resize(np_square(decoded), side)[oy:oy + size,
                                                   ox:ox + size]
      if draws["flip"]:
        want = want[:, ::-1]
      flips.add(bool(draws["flip"]))
      np.testing.assert_allclose(batch["image"][row], want, atol=2e-3)
  assert flips == {True, False}


def test_eval_center_and_ten_crops_equal_numpy(tmp_path):
  rng = np.random.default_rng(1)
  image = smooth_image(rng, 30, 40)
  write_image(tmp_path / "val" / "c0" / "x.png", image)
  write_image(tmp_path / "train" / "c0" / "x.png", image)
  mean = (10.0, 20.0, 30.0)
  config = config_for(tmp_path, batch_size=2, resize_size=24, mean=mean,
                      eval_crops=10)
  _, batches = ip.eval_iterator(config, image_size=16)
  batch = next(batches)
  assert batch["image"].shape == (2, 10, 16, 16, 3)
  np.testing.assert_array_equal(batch["mask"], [True, False])
  square = np_resize(np_square(image), 24) - np.array(mean)
  five = [square[y:y + 16, x:x + 16]
          for y, x in [(0, 0), (0, 8), (8, 0), (8, 8), (4, 4)]]
  want = np.stack(five + [f[:, ::-1] for f in five])
  np.testing.assert_allclose(batch["image"][0], want, atol=2e-3)
  assert next(batches, None) is None

  config.data.eval_crops = 1
  _, batches = ip.eval_iterator(config, image_size=16)
  np.testing.assert_allclose(next(batches)["image"][0], five[4], atol=2e-3)


def test_pca_lighting_shift_per_image_and_covariance(tmp_path):
  id_folder(tmp_path, 6, size=8)
  config = config_for(tmp_path, batch_size=6, flip=True, random_crop=True,
                      resize_size=10)
  _, plain = ip.train_iterator(config, image_size=8)
  config.data.pca_lighting = True
  _, lit = ip.train_iterator(config, image_size=8)
  for step in range(2):
    shift = next(lit)["image"] - next(plain)["image"]
    for row in range(6):
      alpha = draws_at(config, step * 6 + row)["alpha"]
      want = 255.0 * preprocess.PCA_EIGVEC @ (alpha * preprocess.PCA_EIGVAL)
      np.testing.assert_allclose(shift[row], np.broadcast_to(want, (8, 8, 3)),
                                 atol=1e-3)

  # Over many draws the shifts have covariance 255^2 V diag((0.1 l)^2) V^T.
  n, seed = 20_000, sources.mix_seed(config.seed, 2, 0)
  draws = tf.data.Dataset.range(n).map(
      lambda i: preprocess.pca_shift(preprocess.augment_params(
          tf.stack([tf.constant(seed, tf.int64), i]), 0.1)["alpha"]))
  shifts = next(iter(draws.batch(n))).numpy().astype(np.float64)
  v, lam = (preprocess.PCA_EIGVEC.astype(np.float64),
            preprocess.PCA_EIGVAL.astype(np.float64))
  want = 255.0 ** 2 * v @ np.diag((0.1 * lam) ** 2) @ v.T
  np.testing.assert_allclose(np.cov(shifts.T), want, atol=0.03 * want.max())
  np.testing.assert_allclose(shifts.mean(0), 0, atol=0.03 * 255 * 0.1 * lam[0])


@pytest.mark.parametrize("pad", [0, 2])
def test_std_divides_the_mean_subtracted_pixels(tmp_path, pad):
  id_folder(tmp_path, 6, size=8)
  (tmp_path / "val").symlink_to(tmp_path / "train")
  config = config_for(tmp_path, batch_size=6, flip=True, random_crop=True,
                      resize_size=10, crop_padding=pad, pca_lighting=True,
                      mean=(100.0, 110.0, 120.0))
  _, plain = ip.train_iterator(config, image_size=8)
  _, plain_eval = ip.eval_iterator(config, image_size=8)
  std = np.array([2.0, 4.0, 8.0], np.float32)
  config.data.std = tuple(std)
  _, scaled = ip.train_iterator(config, image_size=8)
  _, scaled_eval = ip.eval_iterator(config, image_size=8)
  for _ in range(2):  # Same crops, flips and lighting: only the scale differs.
    np.testing.assert_allclose(next(scaled)["image"],
                               next(plain)["image"] / std, rtol=1e-5,
                               atol=1e-5)
  np.testing.assert_allclose(next(scaled_eval)["image"],
                             next(plain_eval)["image"] / std, rtol=1e-5,
                             atol=1e-5)
  config.data.std = (1.0, 0.0, 1.0)
  with pytest.raises(ip.DataError, match="data.std"):
    ip.train_iterator(config, image_size=8)


# ---------------------------------------------------------------- exactness


def test_exact_eval_of_1003_examples_on_8_devices(tmp_path):
  ids, labels = id_folder(tmp_path, 1003, split="val")
  id_folder(tmp_path, 3)  # The training split names the classes.
  config = config_for(tmp_path, batch_size=64)
  mesh = jax.make_mesh((8,), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))
  sharding = jax.sharding.NamedSharding(mesh,
                                        jax.sharding.PartitionSpec("data"))

  @jax.jit
  def tally(batch):
    seen = jnp.rint(batch["image"][:, 0, 0, 0] + 256 * batch["image"][:, 0, 0,
                                                                        1])
    mask = batch["mask"].astype(jnp.float32)
    return {"count": jax.nn.one_hot(seen.astype(jnp.int32), 1003).T @ mask,
            "labels": jnp.sum(batch["label"] * mask)}

  info, batches = ip.eval_iterator(config, image_size=4)
  assert info.num_examples == 1003 and info.num_classes == 3
  totals, steps = None, 0
  for batch in ip.prefetch_to_device(batches, sharding):
    out = tally(batch)
    totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
    steps += 1
  assert steps == 16  # ceil(1003 / 64): the last one holds 43 + 21 padding.
  np.testing.assert_array_equal(totals["count"], np.ones(1003))
  assert float(totals["labels"]) == labels.sum()  # A single NumPy pass.

  # Two processes: the same number of steps, disjoint rows, union = all.
  seen = []
  parts = [list(ip.eval_iterator(config, image_size=4, rows=ip.shard_rows(
      config.batch_size, p, 2))[1]) for p in (0, 1)]
  assert len(parts[0]) == len(parts[1]) == 16  # ceil(502 / 32).
  for part in parts:
    for batch in part:
      assert batch["image"].shape[0] == 32
      seen += list(ids_of(batch["image"][batch["mask"]]))
  assert sorted(seen) == list(ids)


def test_two_processes_train_on_disjoint_slices(tmp_path):
  ids, _ = id_folder(tmp_path, 11)
  config = config_for(tmp_path, batch_size=2)
  seen = []
  for p in (0, 1):
    info, batches = ip.train_iterator(
        config, image_size=4, rows=ip.shard_rows(config.batch_size, p, 2))
    assert info.num_examples == 11
    n = 6 - p  # Strided slices of 11: 6 and 5 examples.
    epoch = np.concatenate([ids_of(b["image"]) for b in take(batches, n)])
    assert sorted(epoch[:n]) == sorted(set(epoch[:n]))  # One epoch, no repeat.
    seen.append(set(epoch[:n]))
  assert not seen[0] & seen[1]
  assert seen[0] | seen[1] == set(ids)


def test_train_resume_is_exact_and_epochs_are_permutations(tmp_path):
  ids, _ = id_folder(tmp_path, 10, size=12)
  config = config_for(tmp_path, batch_size=4, resize_size=14, random_crop=True,
                      flip=True, pca_lighting=True, mean=(1.0, 2.0, 3.0))
  _, batches = ip.train_iterator(config, image_size=12)
  run = take(batches, 8)
  for start in (3, 5):
    _, resumed = ip.train_iterator(config, image_size=12, start_step=start)
    for want, got in zip(run[start:], take(resumed, 8 - start)):
      for k in want:
        np.testing.assert_array_equal(got[k], want[k])

  config.data.random_crop = config.data.pca_lighting = False
  config.data.mean = ()
  _, batches = ip.train_iterator(config, image_size=12)
  order = np.concatenate([ids_of(b["image"]) for b in take(batches, 5)])
  assert sorted(order[:10]) == list(ids) and sorted(order[10:]) == list(ids)
  assert list(order[:10]) != list(order[10:])  # Reshuffled per epoch.


# ---------------------------------------------------------------- sources


def test_tfds_source_with_mock_data():
  config = default.get_config()
  config.batch_size = 8
  d = config.data
  d.name, d.eval_split, d.resize_size, d.eval_crops = "cifar10", "test", 0, 1
  d.random_crop, d.crop_padding, d.pca_lighting = True, 4, False
  d.download = True  # mock_data replaces download_and_prepare by a no-op.
  with tfds.testing.mock_data(num_examples=10):
    info, batches = ip.train_iterator(config, image_size=32)
    batch = next(batches)
    assert (info.num_examples, info.num_classes) == (10, 10)
    assert len(info.class_names) == 10
    assert batch["image"].shape == (8, 32, 32, 3)
    assert batch["image"].dtype == np.float32 and batch["mask"].all()
    assert ((0 <= batch["label"]) & (batch["label"] < 10)).all()
    _, batches = ip.eval_iterator(config, image_size=32)
    masks = [b["mask"] for b in batches]
  assert [m.sum() for m in masks] == [8, 2]


def test_imagenet2012_is_prepared_offline_from_manual_tars(tmp_path):
  """TFDS builds imagenet2012 from tiny ILSVRC-style tars in manual_dir."""

  rng = np.random.default_rng(4)
  manual = imagenet_manual_dir(
      tmp_path / "manual",
      lambda h, w: tf.io.encode_jpeg(smooth_image(rng, 30, 40)).numpy())
  config = default.get_config()  # The paper's data settings, 10 crops.
  config.batch_size = 4
  config.data.manual_dir, config.data.data_dir = str(manual), str(
      tmp_path / "tfds")
  config.data.resize_size = 36
  info, batches = ip.train_iterator(config, image_size=32)
  assert (info.num_examples, info.num_classes) == (6, 1000)
  batch = next(batches)
  assert batch["image"].shape == (4, 32, 32, 3)
  assert set(batch["label"]) <= {0, 1}
  info, batches = ip.eval_iterator(config, image_size=32)
  (batch,) = list(batches)
  assert batch["image"].shape == (4, 10, 32, 32, 3)
  # TFDS's validation labels: images 1-3 are classes 65, 970 and 230
  # (TFDS stores examples in a hashed order).
  assert sorted(batch["label"][:3]) == [65, 230, 970]
  np.testing.assert_array_equal(batch["mask"], [True, True, True, False])


def test_folder_source_on_generated_folder(tmp_path):
  id_folder(tmp_path, 7, classes=2, size=6)
  id_folder(tmp_path, 5, classes=2, size=6, split="val")
  config = config_for(tmp_path, batch_size=4, resize_size=8, random_crop=True,
                      flip=True, pca_lighting=True)
  info, batches = ip.train_iterator(config, image_size=6)
  assert (info.num_examples, info.num_classes) == (7, 2)
  assert info.class_names == ("c0", "c1")
  batch = next(batches)
  assert batch["image"].shape == (4, 6, 6, 3) and batch["mask"].all()
  info, batches = ip.eval_iterator(config, image_size=6)
  batches = list(batches)
  assert info.num_examples == 5
  assert [b["mask"].sum() for b in batches] == [4, 1]
  np.testing.assert_array_equal(batches[1]["label"], [1, 0, 0, 0])


def test_data_classes_keeps_the_named_folders_labelled_in_its_order(
    tmp_path):
  ids, labels = id_folder(tmp_path, 12, classes=3, size=4)
  id_folder(tmp_path, 6, classes=3, size=4, split="val")
  config = config_for(tmp_path, batch_size=4, classes=("c2", "c0"))
  info = ip.describe_split(config, "train", 4)
  assert (info.num_examples, info.class_names) == (8, ("c2", "c0"))
  _, batches = ip.eval_iterator(config, image_size=4)
  got = {}
  for b in batches:
    for image_id, label, ok in zip(ids_of(b["image"]), b["label"], b["mask"]):
      if ok:
        got[int(image_id)] = int(label)
  # val ids 0-5: classes c0, c1, c2, c0, c1, c2; c2 -> 0, c0 -> 1, no c1.
  assert got == {0: 1, 2: 0, 3: 1, 5: 0}
  with pytest.raises(ip.DataError, match=r"names no class folder .*\(c7\)"):
    ip.describe_split(config_for(tmp_path, classes=("c0", "c7")), "train", 4)
  with pytest.raises(ip.DataError, match="names a class twice"):
    ip.describe_split(config_for(tmp_path, classes=("c0", "c0")), "train", 4)
  synthetic = smoke.get_config()
  synthetic.data.classes = ("c0",)
  with pytest.raises(ip.DataError, match="leave it empty"):
    ip.check_options(synthetic, 32)


def test_corrupt_images_are_skipped_and_counted(tmp_path):
  rng = np.random.default_rng(2)
  for i in range(6):
    write_image(tmp_path / "train" / "c0" / f"{i}.jpg", smooth_image(rng, 9, 9),
                "jpeg")
  good = (tmp_path / "train" / "c0" / "0.jpg").read_bytes()
  (tmp_path / "train" / "c0" / "bad1.jpg").write_bytes(good[:len(good) // 2])
  (tmp_path / "train" / "c0" / "bad2.jpg").write_bytes(b"not an image")
  config = config_for(tmp_path, batch_size=8, eval_split="train",
                      random_crop=True, resize_size=9, flip=True)
  _, batches = ip.train_iterator(config, image_size=8)
  batch = next(batches)
  assert batch["mask"].sum() == 6 and batches.num_skipped == 2
  assert sorted(pathlib.Path(p).name for p in batches.skipped) == [
      "bad1.jpg", "bad2.jpg"]
  bad = np.flatnonzero(~batch["mask"])
  assert np.abs(batch["image"][bad]).sum() > 0  # Copies of readable rows.

  _, batches = ip.eval_iterator(config, image_size=8)
  batches_ = list(batches)
  assert sum(b["mask"].sum() for b in batches_) == 6
  assert batches.num_skipped == 2


def test_synthetic_source_ten_crops_and_exact_eval():
  config = smoke.get_config()
  config.data.num_eval_examples = 37
  config.data.eval_crops = 10
  _, batches = ip.eval_iterator(config, image_size=8)
  batches = list(batches)
  assert batches[0]["image"].shape == (32, 10, 8, 8, 3)
  np.testing.assert_array_equal(batches[0]["image"][:, 5],
                                batches[0]["image"][:, 0, :, ::-1])
  assert sum(b["mask"].sum() for b in batches) == 37
  _, a = ip.train_iterator(config, image_size=8)
  _, b = ip.train_iterator(config, image_size=8, start_step=2)
  np.testing.assert_array_equal(take(a, 3)[2]["image"], next(b)["image"])


def test_compute_mean_matches_numpy(tmp_path):
  rng = np.random.default_rng(3)
  images = [smooth_image(rng, 6, 8), smooth_image(rng, 10, 10)]
  for i, image in enumerate(images):
    write_image(tmp_path / "train" / "c0" / f"{i}.png", image)
  config = config_for(tmp_path)
  mean, std, used = ip.compute_mean(config, image_size=4)
  squares = np.concatenate([np_square(im).reshape(-1, 3) for im in images])
  assert used == 2
  np.testing.assert_allclose(mean, squares.mean(0), rtol=1e-6)
  np.testing.assert_allclose(std, squares.std(0), rtol=1e-4)


def test_compute_mean_program_prints_overrides_and_refuses_bad_input(
    tmp_path):
  image = np.full((8, 8, 3), (10, 20, 30), np.uint8)
  for i in range(2):
    write_image(tmp_path / "train" / "c0" / f"{i}.png", image)
  command = [sys.executable, "-m", "alexnet_jax.compute_mean",
             "--config=configs/smoke.py", "--config.data.source=folder",
             f"--config.data.path={tmp_path}"]
  root = pathlib.Path(__file__).resolve().parent.parent
  proc = subprocess.run(command, cwd=root, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert '--config.data.mean="(10.00, 20.00, 30.00)"' in proc.stdout
  assert "over 2 images of train" in proc.stdout
  proc = subprocess.run(command[:4], cwd=root, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 2
  assert "error: data.source=synthetic has no images" in proc.stderr


# ---------------------------------------------------------------- errors


def test_missing_data_gives_one_line(tmp_path):
  config = cifar10.get_config()
  config.data.path = str(tmp_path / "cifar10")
  with pytest.raises(ip.DataError) as e:
    ip.train_iterator(config, image_size=32)
  assert "tar xzf ../shared/data/cifar10-jpg.tar.gz" in str(e.value)
  assert "\n" not in str(e.value)

  config = default.get_config()
  config.data.data_dir = str(tmp_path / "tfds")
  with pytest.raises(ip.DataError, match="ILSVRC2012_img_train.tar") as e:
    ip.train_iterator(config, image_size=227)
  assert "\n" not in str(e.value)
  config.data.name = "cifar10"
  with pytest.raises(ip.DataError, match="download=True"):
    ip.train_iterator(config, image_size=32)
  config.data.name = "no_such_data_set"
  with pytest.raises(ip.DataError, match="no TFDS data set"):
    ip.train_iterator(config, image_size=32)


@pytest.mark.skipif(not (CIFAR / "train").is_dir(),
                    reason="CIFAR-10 archive not extracted to ~/.cache")
def test_cifar10_config_reads_the_extracted_archive():
  config = cifar10.get_config()
  config.batch_size = 16
  info, batches = ip.train_iterator(config, image_size=32)
  # 5,000 of the 50,000 are held out for decisions (data.holdout).
  assert (info.num_examples, info.num_classes) == (45_000, 10)
  batch = next(batches)
  assert batch["image"].shape == (16, 32, 32, 3) and batch["mask"].all()
  # Mean subtracted and divided by the per-channel std: about unit scale.
  assert abs(batch["image"].mean()) < 0.3 and 0.7 < batch["image"].std() < 1.3
