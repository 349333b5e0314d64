"""Real CIFAR-10 images for tests: the shared archive, or its extraction.

Tests that use it skip when neither is on the machine.
"""

from __future__ import annotations

import os
import pathlib
import re
import tarfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
ARCHIVE = pathlib.Path(os.environ.get(
    "ALEXNET_CIFAR10_ARCHIVE", ROOT.parent / "shared" / "data" /
    "cifar10-jpg.tar.gz"))
EXTRACTED = pathlib.Path("~/.cache/alexnet_jax/cifar10").expanduser()
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
           "horse", "ship", "truck")
_MEMBER = re.compile(r"(?:\./)?cifar10/(train|test)/([a-z]+)/(\d+)\.jpg$")


def available() -> bool:
  return ARCHIVE.is_file() or (EXTRACTED / "train").is_dir()


skip_unless_available = pytest.mark.skipif(
    not available(), reason=f"CIFAR-10 archive not found ({ARCHIVE}) and "
    f"not extracted to {EXTRACTED}")


def subset(dest: pathlib.Path, *, classes=CLASSES, train_per_class=5000,
           test_per_class=1000) -> pathlib.Path:
  """dest/{train,test}/<class>/NNNN.jpg: the first images of each class."""
  want = {"train": train_per_class, "test": test_per_class}
  if (EXTRACTED / "train").is_dir():
    for split, n in want.items():
      for c in classes:
        out = dest / split / c
        out.mkdir(parents=True)
        for name in sorted(os.listdir(EXTRACTED / split / c))[:n]:
          os.symlink(EXTRACTED / split / c / name, out / name)
    return dest
  with tarfile.open(ARCHIVE, "r:gz") as tar:
    for member in tar:
      m = _MEMBER.match(member.name)
      if not m or m.group(2) not in classes:
        continue
      split, c, i = m.group(1), m.group(2), int(m.group(3))
      if i < want[split]:
        out = dest / split / c / f"{i:04d}.jpg"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(tar.extractfile(member).read())
  return dest
