"""A tiny AlexNet on synthetic 32x32 data: finishes in seconds on a CPU.

  python -m alexnet_jax.main --config=configs/smoke.py --workdir=/tmp/smoke
"""

from configs import default


def get_config(arg=None):
  config = default.get_config()
  config.batch_size = 32
  config.num_train_steps = 60
  config.log_every_steps = 10
  config.eval_every_steps = 30

  config.model.preset = "cifar"
  config.model.num_classes = 10
  config.model.width = 0.125  # 12-32-48-48-32 channels, 512-wide fc.
  config.model.dropout_rate = 0.0
  # The paper's N(0, 0.01^2) init stalls at this width (see model.py).
  config.model.init = "he"

  config.data.source = "synthetic"
  config.data.eval_crops = 1
  config.data.num_train_examples = 1024
  config.data.num_eval_examples = 200  # Not a multiple of 32: tests padding.
  config.data.synthetic_noise = 1.0

  config.optim.learning_rate = 0.005
  if arg is not None:
    raise ValueError(f"unknown config option {arg!r}")
  return config
