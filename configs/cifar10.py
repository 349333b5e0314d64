"""AlexNet scaled to 32x32 CIFAR-10: 5x5 stride-1 conv1, two towers, LRN.

Reads the JPEG archive in ../shared/data once extracted:

  mkdir -p ~/.cache/alexnet_jax
  tar xzf ../shared/data/cifar10-jpg.tar.gz -C ~/.cache/alexnet_jax
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

  d = config.data
  d.source = "folder"
  d.path = "~/.cache/alexnet_jax/cifar10"  # train/<class>/, test/<class>/
  d.eval_split = "test"
  d.hint = ("extract the CIFAR-10 archive: mkdir -p ~/.cache/alexnet_jax && "
            "tar xzf ../shared/data/cifar10-jpg.tar.gz -C ~/.cache/alexnet_jax")
  d.resize_size = 0  # Already 32x32: no resize.
  d.crop_padding = 4  # Random 32x32 crops of the image padded by 4.
  d.pca_lighting = False  # The paper's eigenvalues are ImageNet's.
  d.mean = (124.14, 122.96, 112.57)  # compute-mean on the JPEG archive.
  d.eval_crops = 1

  config.optim.schedule = "step"
  config.optim.step_epochs = (15, 25)
  if arg is not None:
    raise ValueError(f"unknown config option {arg!r}")
  return config
