"""The paper's ablations on CIFAR-10 as a sweep: LRN vs a fixed scale vs
none x overlapping vs non-overlapping pooling, five seeds per cell.

  python -m experiments.ablation --config=configs/ablation_cifar10.py \
      --workdir=workdirs/abl2 --results=experiments/results/cifar10_ablation2

Every cell x seed is an ordinary run of `python -m alexnet_jax.main` with
this config and the cell's overrides (the runner prints each command). The
base is configs/cifar10.py (decisions on 5,000 held-out training images,
the test folder read once at the end) with LRN's alpha scaled by the
pixels' std squared, so that it normalises, made to measure what the paper
claims:

- norm: lrn | scale | none. `scale` replaces each LRN by a fixed factor,
  LRN's mean factor measured at initialisation on held-out images
  (NORM_SCALE, from experiments/lrn_scale.py), so that "lrn vs none"
  separates normalisation from a change of scale. Every LRN run logs how
  far LRN is from a constant at each evaluation (lrn_stats.py).
- pool: overlap (3/2) | nonoverlap (2/2) with ceil-mode sizes: both give
  32 -> 16 -> 8 -> 4, the same parameter count and FLOPs up to the pooling
  itself (as 55 -> 27 -> 13 -> 6 with either pool in the paper).
- the regime: the paper's pooling claim is about overfitting, so the runs
  must overfit: no crops or flips (dropout 0.5 stays: it is the paper's
  network), width 0.25, 10 epochs: the training error ends well below the
  validation error (the report states the gap per cell).

Options add the paper's other ablations as one more axis each (`sweep.axes`
can also be given whole on the command line):
  :towers     two towers vs the paper's one-GPU net (preset cifar_1gpu: one
              tower, half the kernels of conv1-conv4, conv5 and the fully
              connected layers at full size; the paper: +1.7 / +1.2 points)
  :pca        PCA lighting on vs off (ImageNet eigenvalues)
  :dropout    dropout 0.5 vs none
  :batchnorm  LRN vs BatchNorm vs none (replaces the norm axis)
Several options: `:towers,dropout`.
"""

import ml_collections
from ml_collections import config_dict

from configs import cifar10

# LRN's mean factor (k + alpha S)^-beta per LRN layer (conv1, conv2) at
# initialisation, over the 5,000 held-out images, seed 0, the lrn/overlap
# cell: `python -m experiments.lrn_scale --config=configs/ablation_cifar10.py`.
NORM_SCALE = (0.4305, 0.5418)

# One line per axis: "config.field=value|value|...", the paper's value first
# (the reference that differences are measured against).
EXTRA_AXES = {
    "towers": "model.preset=cifar|cifar_1gpu",
    "pca": "data.pca_lighting=True|False",
    "dropout": "model.dropout_rate=0.5|0.0",
    "batchnorm": "model.norm=lrn|batchnorm|none",
}


def get_config(arg=None):
  config = cifar10.get_config()
  # LRN that normalises: alpha x (the pixels' std)^2 (docs/training_notes.md).
  config.model.lrn.pixel_scale = sum(config.data.std) / 3
  config.model.width = 0.25
  config.model.pool_mode = "ceil"
  config.model.norm_scale = NORM_SCALE
  config.num_epochs = 10
  config.log_every_steps = 100
  d = config.data
  d.crop_padding = 0  # 32x32 crops of 32x32 images: none.
  d.flip = False

  config.sweep = s = ml_collections.ConfigDict()
  s.axes = ("model.norm=lrn|scale|none", "model.pool=overlap|nonoverlap")
  s.seeds = (0, 1, 2, 3, 4)
  # Runs train to the end here (experiments/ablation.py: a training-error
  # target and a give-up rule end runs early where an experiment asks).
  s.stop_train_error = config_dict.placeholder(float)
  s.give_up_epochs = config_dict.placeholder(float)
  s.give_up_error = config_dict.placeholder(float)
  s.axes = with_extra_axes(s.axes, arg.split(",") if arg else ())
  return config


def with_extra_axes(axes: tuple, options) -> tuple:
  """axes plus the EXTRA_AXES lines named by options (an axis on the same
  field is replaced)."""
  for option in options:
    if option not in EXTRA_AXES:
      raise ValueError(f"unknown config option {option!r} (known: "
                       f"{', '.join(EXTRA_AXES)})")
    line = EXTRA_AXES[option]
    field = line.split("=")[0]
    axes = tuple(a for a in axes if a.split("=")[0] != field) + (line,)
  return axes
