"""The paper's LRN x pooling ablation at 227x227 on ImageNet, for a GPU.

  python -m experiments.ablation --config=configs/ablation_imagenet.py \
      --workdir=/tmp/ablation_imagenet \
      --config.data.manual_dir=/path/to/ILSVRC2012_tars

The paper's network and recipe (configs/default.py) with a shortened
schedule: 30 epochs, the rate divided by 10 at epochs 15 and 25. Option
`:imagenette` runs the same grid on TFDS imagenette (10 classes, about
9,500 training images; `--config.data.download=True` the first time), a
size a single GPU finishes in hours. Extra axes as in
configs/ablation_cifar10.py (`:towers`, `:pca`, `:dropout`, `:batchnorm`,
comma-separated, after `imagenette,` if both).

GPU defaults: half precision with float32 parameters and loss
(`half_precision`: bfloat16, or float16 with dynamic loss scaling on GPUs
without bfloat16 such as the T4 and V100, alexnet_jax/precision.py; 16-bit
matmuls and convolutions run at several times the float32 rate on GPUs;
on a CPU bfloat16 is slower, so pass
`--config.half_precision=False` there) and batch 256, which fills a modern
GPU with this model better than the paper's 128 (the rate is kept at the
paper's 0.01; tune it if the batch changes the result).
"""

import ml_collections

from configs import ablation_cifar10
from configs import default


def get_config(arg=None):
  options = arg.split(",") if arg else []
  config = default.get_config()
  config.num_epochs = 30
  config.half_precision = True  # GPU default (module doc).
  config.batch_size = 256
  config.optim.schedule = "step"
  config.optim.step_epochs = (15, 25)
  if "imagenette" in options:
    options.remove("imagenette")
    d = config.data
    d.name = "imagenette/full-size-v2"
    d.eval_split = "validation"
    config.model.num_classes = 10
    d.eval_crops = 1

  config.sweep = s = ml_collections.ConfigDict()
  s.axes = ("model.norm=lrn|none", "model.pool=overlap|nonoverlap")
  s.seeds = (0, 1, 2)
  s.axes = ablation_cifar10.with_extra_axes(s.axes, options)
  # The one-GPU comparison net of the paper's own geometry.
  s.axes = tuple(a.replace("model.preset=cifar|cifar_1gpu",
                           "model.preset=paper|paper_1gpu") for a in s.axes)
  return config
