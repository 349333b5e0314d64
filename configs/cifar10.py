"""AlexNet scaled to 32x32 CIFAR-10: 5x5 stride-1 conv1, two towers, LRN.

Reads the JPEG archive in ../shared/data once extracted:

  mkdir -p ~/.cache/alexnet_jax
  tar xzf ../shared/data/cifar10-jpg.tar.gz -C ~/.cache/alexnet_jax
  python -m alexnet_jax.main --config=configs/cifar10.py --workdir=/tmp/cifar10

The network is the paper's (two towers, grouped conv2/4/5, LRN, overlapping
pooling, dropout 0.5) at half width. The recipe departs from the paper's
where the paper's does not train at this size (README, training notes):
pixels divided by their per-channel std after the mean, He init instead of
N(0, 0.01^2) with bias 1, batch 64, a short linear warmup and a cosine
decay. The momentum and weight decay are the paper's. The measured curve
of this config: experiments/results/cifar10_baseline/.

Option `:runlocal` trains a tiny width for a few steps (a quick check that
the data is in place).
"""

from configs import default


def get_config(arg=None):
  config = default.get_config()
  config.batch_size = 64
  config.num_epochs = 30
  config.log_every_steps = 50

  m = config.model
  m.preset = "cifar"
  m.num_classes = 10
  m.width = 0.5  # 48-128-192-192-128 channels, 2048-wide fc.
  # N(0, 2/fan_in), bias 0: the paper's N(0, 0.01^2) leaves the logits
  # almost independent of the image at this width (README, training notes).
  m.init = "he"

  d = config.data
  d.source = "folder"
  d.path = "~/.cache/alexnet_jax/cifar10"  # train/<class>/, test/<class>/
  d.hint = ("extract the CIFAR-10 archive: mkdir -p ~/.cache/alexnet_jax && "
            "tar xzf ../shared/data/cifar10-jpg.tar.gz -C ~/.cache/alexnet_jax")
  d.resize_size = 0  # Already 32x32: no resize.
  d.crop_padding = 4  # Random 32x32 crops of the image padded by 4.
  d.pca_lighting = False  # The paper's eigenvalues are ImageNet's.
  # compute_mean on the JPEG archive; unit-scale pixels suit the He init.
  d.mean = (124.14, 122.96, 112.57)
  d.std = (62.50, 61.85, 66.42)
  d.eval_crops = 1
  # Decisions on 5,000 held-out training images (500 a class, fixed); the
  # test folder is read once, at the end of the run.
  d.holdout = 5000
  d.eval_split = "holdout"
  d.test_split = "test"
  # LRN's constants as measured for this recipe's baseline: on these
  # unit-scale pixels LRN is a near-constant x2^-0.75 (docs/training_notes.md).
  # model.lrn.pixel_scale = sum(d.std) / 3 (about 63.6) makes it normalise as
  # on the 0-255 scale (configs/ablation_cifar10.py does); one first-epoch
  # run each (781 steps, seed 0): 51.0% test error with it, 48.2% without.
  # Whether to make it the default waits for the grid's lrn-vs-scale result.

  o = config.optim
  o.learning_rate = 0.01
  # The recipe as measured (experiments/results); the authors' code would
  # not decay biases and would give them twice the rate (docs/recipe.md).
  o.decay_biases = True
  o.bias_lr_scale = 1.0
  o.schedule = "cosine"  # Decays to 0 at the last step of the run.
  # A short warmup: without one, norm=none died in its first steps (batch
  # 128, lr 0.02; README, training notes).
  o.warmup_epochs = 0.25
  if arg == "runlocal":
    m.width = 0.125
    config.num_train_steps = 20
    config.log_every_steps = 5
  elif arg is not None:
    raise ValueError(f"unknown config option {arg!r} (known: runlocal)")
  return config
