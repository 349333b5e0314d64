"""ReLU vs tanh on the CIFAR-10 AlexNet (NOT the paper's Figure 1 setting:
that is configs/cuda_convnet.py:fig1, a four-layer net without any
regularisation and a rate per activation).

  python -m experiments.ablation --config=configs/ablation_activation.py \
      --workdir=/tmp/figure1 --results=experiments/results/cifar10_figure1

The paper trained a four-layer CNN without regularization and reached 25%
training error six times faster with ReLUs. Here: the CIFAR-10 AlexNet
(configs/cifar10.py) at width 0.25 with no dropout, crops or flips (nothing
that would keep the training error up), the same learning rate for both
(the paper tuned each) and a constant rate after the warmup. The report's
"epochs to 25% train error" column is the figure's number.
"""

import ml_collections

from configs import cifar10


def get_config(arg=None):
  config = cifar10.get_config()
  config.model.width = 0.25
  config.model.dropout_rate = 0.0
  config.data.random_crop = False
  config.data.flip = False
  config.data.crop_padding = 0
  config.optim.schedule = "constant"
  config.num_epochs = 8
  config.log_every_steps = 100

  config.sweep = s = ml_collections.ConfigDict()
  s.axes = ("model.activation=relu|tanh",)
  s.seeds = (0, 1)
  if arg is not None:
    raise ValueError(f"unknown config option {arg!r}")
  return config
