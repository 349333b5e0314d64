"""The paper's ablations on CIFAR-10 as a sweep: LRN vs none x overlapping
vs non-overlapping pooling, several seeds per cell.

  python -m experiments.ablation --config=configs/ablation_cifar10.py \
      --workdir=/tmp/ablation --results=experiments/results/cifar10_ablation

Every cell x seed is an ordinary run of `python -m alexnet_jax.main` with
this config and the cell's overrides (the runner prints each command).
The base is configs/cifar10.py, shortened to a CPU-sized run: width 0.25
and 10 epochs (10 to 16 minutes a run on the 2-core development CPU, 12
runs: about 2.5 hours; experiments/results/cifar10_ablation/ holds them).

Options add the paper's other ablations as one more axis each (`sweep.axes`
can also be given whole on the command line):
  :towers     two towers vs one (the paper: +1.7 / +1.2 points for one)
  :pca        PCA lighting on vs off (ImageNet eigenvalues)
  :dropout    dropout 0.5 vs none
  :batchnorm  LRN vs BatchNorm vs none (replaces the norm axis)
Several options: `:towers,dropout`.
"""

import ml_collections

from configs import cifar10

# One line per axis: "config.field=value|value|...", the paper's value first
# (the reference that differences are measured against).
EXTRA_AXES = {
    "towers": "model.towers=2|1",
    "pca": "data.pca_lighting=True|False",
    "dropout": "model.dropout_rate=0.5|0.0",
    "batchnorm": "model.norm=lrn|batchnorm|none",
}


def get_config(arg=None):
  config = cifar10.get_config()
  config.model.width = 0.25
  config.num_epochs = 10
  config.log_every_steps = 100

  config.sweep = s = ml_collections.ConfigDict()
  s.axes = ("model.norm=lrn|none", "model.pool=overlap|nonoverlap")
  s.seeds = (0, 1, 2)
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
