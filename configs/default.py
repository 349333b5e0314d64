"""The paper's AlexNet on ImageNet (ILSVRC-2012), trained as in the paper.

  python -m alexnet_jax.main --config=configs/default.py --workdir=/tmp/alexnet \
      --config.data.manual_dir=/path/to/ILSVRC2012_tars

Options: `--config=configs/default.py:runlocal` shrinks the run to a few
steps on synthetic data for a laptop.
"""

import ml_collections
from ml_collections import config_dict


def get_config(arg=None):
  """Returns the default config; `arg='runlocal'` makes a tiny local run."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.batch_size = 128  # Global, over all devices and processes.
  config.num_epochs = 90
  config.num_train_steps = -1  # > 0 overrides num_epochs.
  config.log_every_steps = 100
  config.eval_every_steps = -1  # <= 0: evaluate at the end of every epoch.
  config.half_precision = False  # bfloat16 compute, float32 parameters.

  config.model = m = ml_collections.ConfigDict()
  m.preset = "paper"  # paper | torchvision | cifar (channel layout, conv1).
  m.num_classes = 1000
  # None: the preset's value (paper: lrn, 2 towers, 227 input, 11x11/4).
  m.norm = config_dict.placeholder(str)  # lrn | batchnorm | none
  m.towers = config_dict.placeholder(int)  # 1 | 2
  m.image_size = config_dict.placeholder(int)
  m.conv1_kernel = config_dict.placeholder(int)
  m.conv1_stride = config_dict.placeholder(int)
  m.conv1_padding = config_dict.placeholder(int)  # -1: cuda-convnet's ceil.
  m.pool = "overlap"  # overlap (3/2) | nonoverlap (2/2)
  m.activation = "relu"  # relu | tanh
  m.width = 1.0
  m.dropout_rate = 0.5
  m.init = "paper"  # paper (N(0, 0.01^2), bias 1) | he (N(0, 2/fan_in))

  config.data = d = ml_collections.ConfigDict()
  d.source = "synthetic"  # synthetic (more sources: see the README)
  d.num_train_examples = 1_281_167  # Size of the synthetic training set.
  d.num_eval_examples = 50_000  # Size of the synthetic evaluation set.
  d.synthetic_noise = 0.5  # Noise std around each class's prototype image.

  config.optim = o = ml_collections.ConfigDict()
  o.learning_rate = 0.01
  o.momentum = 0.9
  o.weight_decay = 5e-4
  o.weight_decay_mode = "coupled"  # coupled (paper) | decoupled | none
  o.decay_biases = True
  o.schedule = "constant"  # constant | step
  o.step_epochs = (30, 60, 80)  # schedule=step: divide by 10 at these epochs.

  config.mesh = ml_collections.ConfigDict()
  config.mesh.data = -1  # -1: all devices not used by `model`.
  config.mesh.model = 1

  if arg == "runlocal":
    config.batch_size = 8
    config.num_train_steps = 4
    config.log_every_steps = 1
    d.num_eval_examples = 16
  elif arg is not None:
    raise ValueError(f"unknown config option {arg!r} (known: runlocal)")
  return config
