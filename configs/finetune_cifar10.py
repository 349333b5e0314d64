"""Fine-tuning to new classes: a pretrained AlexNet's conv1-fc7, a new fc8.

The measured example on the shared CIFAR-10 (extracted as configs/cifar10.py
says), a transfer between disjoint classes: the source network learns the
six animal classes, then is fine-tuned on the four vehicle classes, which
it has never seen (a new 4-way fc8), next to the same run from scratch:

  python -m alexnet_jax.main --config=configs/finetune_cifar10.py:pretrain \
      --workdir=workdirs/finetune_source
  python -m alexnet_jax.main --config=configs/finetune_cifar10.py \
      --workdir=workdirs/finetune
  python -m alexnet_jax.main --config=configs/finetune_cifar10.py:scratch \
      --workdir=workdirs/finetune_scratch

(finetune.init_from defaults to workdirs/finetune_source, relative to the
directory the command runs in.) The network and recipe are
configs/cifar10.py's; results: experiments/results/cifar10_finetune/.

`:torchvision` fine-tunes torchvision's ImageNet weights, imported by
convert, on all ten classes, upscaled to torchvision's 224 input and
preprocessing:

  python -m alexnet_jax.convert --torchvision=alexnet.pth \
      --workdir=workdirs/torchvision
  python -m alexnet_jax.main --config=configs/finetune_cifar10.py:torchvision \
      --workdir=workdirs/finetune_tv

That one is a GPU job (the 224 network trains at about 8 images/s on two
CPU cores) and has not been measured here (no ImageNet weights on these
machines).
"""

from configs import cifar10
from configs import torchvision

SOURCE_CLASSES = ("bird", "cat", "deer", "dog", "frog", "horse")
TARGET_CLASSES = ("airplane", "automobile", "ship", "truck")
PRETRAINED = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")


def get_config(arg=None):
  config = cifar10.get_config()
  d, f = config.data, config.finetune
  if arg == "pretrain":  # The source: configs/cifar10.py on the animals.
    d.classes = SOURCE_CLASSES
    config.model.num_classes = len(SOURCE_CLASSES)
    config.num_epochs = 15
    return config
  if arg == "torchvision":
    return torchvision_config()
  d.classes = TARGET_CLASSES
  config.model.num_classes = len(TARGET_CLASSES)
  config.num_epochs = 5
  config.eval_every_steps = 100
  if arg == "scratch":  # The same run, every layer from model.init.
    return config
  if arg is not None:
    raise ValueError(f"unknown config option {arg!r} (known: pretrain, "
                     f"scratch, torchvision)")
  f.init_from = "workdirs/finetune_source"
  f.keep = PRETRAINED
  return config


def torchvision_config():
  """torchvision's ImageNet AlexNet, fine-tuned on the ten classes."""
  config = torchvision.get_config()
  config.model.num_classes = 10
  config.batch_size = 64
  config.num_epochs = 5
  config.log_every_steps = 50
  d = config.data
  d.source, d.path, d.eval_split = "folder", "~/.cache/alexnet_jax/cifar10", (
      "test")
  d.hint = cifar10.get_config().data.hint
  d.pca_lighting = False
  o = config.optim
  o.schedule, o.warmup_epochs, o.learning_rate = "cosine", 0.25, 0.001
  f = config.finetune
  f.init_from = "workdirs/torchvision"  # Where convert wrote the weights.
  f.keep = PRETRAINED
  f.lr_scale.fc8 = 10.0  # The new layer at 0.01, the pretrained at 0.001.
  return config
