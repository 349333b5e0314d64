"""The folder source's listing: data.path/<split>/<class>/*.jpg|jpeg|png,
and the held-out validation split carved from the training folder.

data.holdout = N > 0 sets aside a fixed, stratified N of the training
split's images (each class in proportion to its size, largest remainders
first; within a class, a permutation of its sorted file names by a fixed
generator, the same for every seed and run): the training split is the rest,
and the split named "holdout" is those N. A run evaluates on it
(data.eval_split="holdout") to make its decisions and reads the test folder
once, at the end (data.test_split).
"""

from __future__ import annotations

import os

import numpy as np
from absl import logging

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
HOLDOUT = "holdout"  # The split name of the held-out part of train/.
HOLDOUT_SEED = 20121203  # Fixed: one holdout for every run (NIPS 2012).


class DataError(ValueError):
  """A data set that cannot be read as configured (a user error)."""


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


def _chosen_classes(d, names, root: str) -> tuple[str, ...]:
  """data.classes: the class folders a run uses, labelled in that order."""
  chosen = tuple(d.classes)
  missing = [c for c in chosen if c not in names]
  if missing or len(set(chosen)) != len(chosen):
    what = (f"names no class folder of {root} ({', '.join(missing)})"
            if missing else "names a class twice")
    raise DataError(f"data.classes {what}; the classes are "
                    f"{', '.join(names)}")
  return chosen


def list_folder(d, split: str):
  """(paths, labels, class names) of a split, the holdout applied."""
  holdout = int(d.get("holdout", 0) or 0)
  if split == HOLDOUT and not holdout:
    raise DataError(f"data.eval_split/test_split {HOLDOUT!r} needs "
                    f"data.holdout > 0 (how many training images to hold "
                    f"out)")
  if not holdout or split not in (HOLDOUT, d.train_split):
    return _list_split(d, split)
  paths, labels, names = _list_split(d, d.train_split)
  held = holdout_indices(labels, holdout, len(names))
  keep = np.zeros(len(paths), bool)
  keep[held] = True
  if split != HOLDOUT:
    keep = ~keep
  return [p for p, k in zip(paths, keep) if k], labels[keep], names


def holdout_indices(labels: np.ndarray, n: int, num_classes: int
                    ) -> np.ndarray:
  """Sorted indices of a stratified, fixed sample of n of `labels`."""
  if not 0 < n < len(labels):
    raise DataError(f"data.holdout must be between 0 and the training "
                    f"split's {len(labels)} images, got {n}")
  counts = np.bincount(labels, minlength=num_classes)
  share = counts * n / len(labels)
  take = np.floor(share).astype(int)
  rest = np.argsort(-(share - take), kind="stable")[:n - take.sum()]
  take[rest] += 1
  rng = np.random.default_rng(HOLDOUT_SEED)
  out = []
  for c in range(num_classes):
    members = np.flatnonzero(labels == c)
    out.append(members[rng.permutation(len(members))[:take[c]]])
  return np.sort(np.concatenate(out))


def split_where(d, split: str) -> str:
  """The folder a split is read from, for messages."""
  root = os.path.expanduser(d.path)
  if split == HOLDOUT:
    return f"{_split_dir(root, d.train_split, d)} (held out)"
  return _split_dir(root, split, d)


def _list_split(d, split: str):
  """(paths, labels, class names) of data.path/<split>/<class>/*.jpg|png.

  Labels index the sorted class folders of the training split (of this
  split, when it is the training split or there is none), or the folders
  data.classes names, in its order (the others are left out). Empty class
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
  if d.get("classes"):
    names = _chosen_classes(d, names, root)
    own = [c for c in own if c in names]
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


