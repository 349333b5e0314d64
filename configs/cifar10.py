"""AlexNet scaled to 32x32 CIFAR-10: 5x5 stride-1 conv1, two towers, LRN.

  python -m alexnet_jax.main --config=configs/cifar10.py --workdir=/tmp/cifar10
"""

from configs import default


def get_config(arg=None):
  config = default.get_config()
  config.batch_size = 128
  config.num_epochs = 30
  config.log_every_steps = 50

  config.model.preset = "cifar"
  config.model.num_classes = 10
  config.model.width = 0.5  # 48-128-192-192-128 channels, 2048-wide fc.

  config.data.num_train_examples = 50_000
  config.data.num_eval_examples = 10_000

  config.optim.schedule = "step"
  config.optim.step_epochs = (15, 25)
  if arg is not None:
    raise ValueError(f"unknown config option {arg!r}")
  return config
