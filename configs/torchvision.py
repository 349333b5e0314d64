"""torchvision's AlexNet ("one weird trick": one tower, no LRN, 64-192-384-
256-256), preprocessed as torchvision evaluates it, for imported weights.

  python -m alexnet_jax.convert --torchvision=alexnet.pth --workdir=DIR
  python -m alexnet_jax.main --mode=predict --config=configs/torchvision.py \
      --workdir=DIR --images=photo.jpg
  python -m alexnet_jax.main --mode=eval --config=configs/torchvision.py \
      --workdir=DIR --config.data.manual_dir=/path/to/ILSVRC2012_tars

torchvision's transform is Resize(256), CenterCrop(224), pixels in [0, 1],
then (x - mean) / std with mean (0.485, 0.456, 0.406) and std (0.229, 0.224,
0.225). Here: the central square resized to 256 and its central 224 crop
(the same region of the photo), on the 0-255 scale, so mean and std are
torchvision's times 255. The resize is bilinear without antialiasing, where
torchvision's Resize antialiases: on photos much larger than 256 the pixels
differ a little, and accuracy may come out slightly below torchvision's
published figure (not measured here: no ImageNet on these machines).
"""

from configs import default

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def get_config(arg=None):
  config = default.get_config()
  m = config.model
  m.preset = "torchvision"  # 224 input, conv1 11x11/4 padding 2, 1 tower.
  m.num_classes = 1000
  d = config.data
  d.resize_size = 256
  d.mean = tuple(255 * v for v in MEAN)
  d.std = tuple(255 * v for v in STD)
  d.eval_crops = 1
  d.pca_lighting = False
  if arg is not None:
    raise ValueError(f"unknown config option {arg!r}")
  return config
