"""Input pipelines: batches of NHWC float32 images, int32 labels and a mask.

Every source yields dicts {'image', 'label', 'mask'} holding this process's
rows of the global batch. Training iterators are infinite and start at a
given step (so a resumed run sees the batches it would have seen); evaluation
iterators make one pass in which every example appears exactly once, the last
batch padded with mask=False rows.

Sources (config.data.source):
  synthetic  learnable, deterministic images: one smooth random prototype per
             class plus Gaussian noise; the embedded default (no files).
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np

SOURCES = ("synthetic",)


class DataError(ValueError):
  """A data set that cannot be read as configured (a user error)."""


@dataclasses.dataclass(frozen=True)
class Split:
  """What the training loop needs to know about one split."""
  num_examples: int
  num_classes: int
  image_size: int


def process_rows(global_batch: int, process_index: int,
                 process_count: int) -> slice:
  """The rows of a global batch that one process loads."""
  if global_batch % process_count:
    raise DataError(f"batch_size {global_batch} is not divisible by the "
                    f"{process_count} processes")
  per = global_batch // process_count
  return slice(process_index * per, (process_index + 1) * per)


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


def train_iterator(config, *, image_size: int, start_step: int = 0,
                   process_index: int = 0,
                   process_count: int = 1) -> tuple[Split, Iterator[dict]]:
  """Split info and an infinite iterator of training batches from start_step."""
  if config.data.source not in SOURCES:
    raise DataError(f"data.source must be one of {SOURCES}, "
                    f"got {config.data.source!r}")
  data = _synthetic(config, "train", image_size)
  rows = process_rows(config.batch_size, process_index, process_count)

  def batches():
    step = start_step
    while True:
      first = step * config.batch_size
      idx = (first + np.arange(config.batch_size)[rows]) % data.num_examples
      images, labels = data.examples(idx)
      yield {"image": images, "label": labels,
             "mask": np.ones(len(idx), bool)}
      step += 1

  info = Split(data.num_examples, data.num_classes, image_size)
  return info, batches()


def eval_iterator(config, *, image_size: int, process_index: int = 0,
                  process_count: int = 1) -> tuple[Split, Iterator[dict]]:
  """Split info and one pass over the evaluation set, padded and masked."""
  if config.data.source not in SOURCES:
    raise DataError(f"data.source must be one of {SOURCES}, "
                    f"got {config.data.source!r}")
  data = _synthetic(config, "eval", image_size)
  rows = process_rows(config.batch_size, process_index, process_count)

  def batches():
    for first in range(0, data.num_examples, config.batch_size):
      idx = (first + np.arange(config.batch_size))[rows]
      mask = idx < data.num_examples
      images, labels = data.examples(np.where(mask, idx, 0))
      yield {"image": images, "label": labels, "mask": mask}

  info = Split(data.num_examples, data.num_classes, image_size)
  return info, batches()
