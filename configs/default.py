"""The paper's AlexNet on ImageNet (ILSVRC-2012), trained as in the paper.

  python -m alexnet_jax.main --config=configs/default.py --workdir=/tmp/alexnet \
      --config.data.manual_dir=/path/to/ILSVRC2012_tars

Where the paper's text is silent the recipe is the authors' code
(cuda-convnet2): biases without weight decay at twice the learning rate
(optim.decay_biases, optim.bias_lr_scale). The mean is per channel by
default; data.mean_image gives the paper's per-pixel mean, computed with
`python -m alexnet_jax.compute_mean --config=... --mean_image=PATH.npy`,
which also prints the training set's PCA eigenvectors for data.pca_eigval
and data.pca_eigvec (ImageNet's published ones by default).
docs/recipe.md sets the paper, the authors' code, Caffe and this project
side by side.

Options: `--config=configs/default.py:runlocal` shrinks the run to a few
steps on synthetic data for a laptop; `:cifar10` keeps the paper's network,
init and optimizer and reads CIFAR-10 (extracted as configs/cifar10.py says)
upscaled to 256 with 227 crops: the paper's recipe on real photos.
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
  config.half_precision = False  # 16-bit compute, float32 parameters.
  # Which 16-bit float (alexnet_jax/precision.py): auto (bfloat16 where the
  # hardware has it, else float16 with dynamic loss scaling) | bfloat16 |
  # float16.
  config.half_precision_dtype = "auto"
  config.checkpoint_every_steps = 1000  # Also at each epoch end and the last.
  config.max_checkpoints_to_keep = 3  # Plus the best by eval top-1 error.

  config.model = m = ml_collections.ConfigDict()
  # Channel layout and conv1: paper | paper_1gpu (the paper's one-GPU
  # comparison net) | torchvision | cifar | cifar_1gpu.
  m.preset = "paper"
  m.num_classes = 1000
  # None: the preset's value (paper: lrn, 2 towers, 227 input, 11x11/4).
  m.norm = config_dict.placeholder(str)  # lrn | batchnorm | none | scale
  m.towers = config_dict.placeholder(int)  # 1 | 2
  m.image_size = config_dict.placeholder(int)
  m.conv1_kernel = config_dict.placeholder(int)
  m.conv1_stride = config_dict.placeholder(int)
  m.conv1_padding = config_dict.placeholder(int)  # -1: cuda-convnet's ceil.
  m.pool = "overlap"  # overlap (3/2) | nonoverlap (2/2)
  m.activation = "relu"  # relu | tanh
  m.width = 1.0
  m.dropout_rate = 0.5
  # paper (N(0, 0.01^2), bias 1) | caffe (bvlc_alexnet: fc6/fc7 N(0, 0.005^2),
  # bias 0.1) | he (N(0, 2/fan_in), bias 0).
  m.init = "paper"
  # fc8's weight std instead of the init's (None: the init's own).
  m.fc8_init_std = config_dict.placeholder(float)
  # The operations' formulation (alexnet_jax/ops.py): auto (fast on CPU;
  # plain with per-tower convolutions on GPU/TPU) | fast | plain. Same
  # network, same numbers up to float rounding; not part of what a
  # checkpoint must match.
  m.ops = "auto"
  # Ceil-mode pool sizes (cuda-convnet's) instead of floor: None is the
  # preset's (floor). On the cifar preset, ceil gives both pools the same
  # sizes (32 -> 16 -> 8 -> 4).
  m.pool_mode = config_dict.placeholder(str)  # floor | ceil
  # Channel counts instead of the preset's (before `width` scales them):
  # conv1..conv5 and fc6, fc7; () keeps the preset's.
  m.channels = ()
  m.fc_features = ()
  # The LRN constants (layers.resolve_lrn). setting: paper (k=2, n=5,
  # alpha=1e-4 on the window's sum, beta=0.75) | cuda_convnet (alpha on the
  # mean) | caffe (k=1, alpha on the mean); a field left None takes the
  # setting's value. pixel_scale: what the input pixels were divided by
  # (data.std); alpha is multiplied by its square so that LRN normalises as
  # on the 0-255 scale its constants were set for (README, training notes).
  m.lrn = ml_collections.ConfigDict()
  m.lrn.setting = "paper"
  m.lrn.k = config_dict.placeholder(float)
  m.lrn.n = config_dict.placeholder(int)
  m.lrn.alpha = config_dict.placeholder(float)
  m.lrn.beta = config_dict.placeholder(float)
  m.lrn.average = config_dict.placeholder(bool)
  m.lrn.pixel_scale = 1.0
  # norm=scale: each LRN layer's fixed factor (() : k^-beta for each).
  m.norm_scale = ()

  config.data = d = ml_collections.ConfigDict()
  d.source = "tfds"  # tfds | folder | synthetic (see sources.py)
  d.name = "imagenet2012"  # TFDS name (source=tfds).
  d.data_dir = config_dict.placeholder(str)  # TFDS data dir; None: default.
  # Folder holding ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar, for a
  # data set TFDS prepares from the user's own files (prepared once).
  d.manual_dir = config_dict.placeholder(str)
  d.download = False  # Let TFDS download a data set that is not prepared.
  d.path = config_dict.placeholder(str)  # source=folder: holds train/, val/.
  # source=folder: the class folders to use, labelled in this order (a
  # subset, e.g. for a transfer experiment); () uses every class folder.
  d.classes = ()
  d.train_split = "train"
  d.eval_split = "validation"  # TFDS name; a folder's val/ or test/.
  # source=folder: hold out this many training images, stratified and fixed
  # (folders.py), as the split "holdout": the validation split on which a
  # run's decisions are made (eval_split="holdout"). 0: none.
  d.holdout = 0
  # Evaluated once, after the last step, and logged as test_* (""/None:
  # none). Decisions read eval_split; this is reported, not tuned on.
  d.test_split = ""
  d.hint = ""  # Appended to a missing-data error: how to get the data.
  d.shuffle_buffer = 16_384  # TFDS: examples reshuffled per epoch.
  # Preprocessing, as the paper: central square of the image resized to
  # resize_size (0: keep its size), random crops of the model's input size
  # (227 or 224) and mirrors for training; PCA lighting; mean subtraction.
  d.resize_size = 256
  d.random_crop = True
  d.fused_crop = True  # JPEG: decode only the crop window, then resize.
  # Who decodes training images: tf (tf.data on the CPU) | dali (NVIDIA
  # DALI on the GPU; source=prepared only, `pip install '.[dali]'`; dali.py).
  d.decoder = "tf"
  # Ship uint8 crops and each image's lighting shift to the accelerator,
  # which adds the shift, subtracts the mean and divides by the std
  # (preprocess.device_finish): no float pass on the host and a quarter of
  # the bytes to batch and copy (docs/imagenet_gpu.md). A resize is rounded
  # to uint8. Not with crop_padding or mean_image.
  d.normalize_on_device = False
  # Pad the square by this many mean-colour pixels before random crops
  # (CIFAR-style; the crop then follows a full decode).
  d.crop_padding = 0
  d.flip = True
  d.pca_lighting = True
  d.pca_std = 0.1  # Std of the PCA lighting coefficients alpha.
  # Eigenvalues and eigenvectors (the columns) of the training set's RGB
  # covariance, pixels in [0, 1]: ImageNet's published values. compute_mean
  # prints a data set's own.
  d.pca_eigval = (0.2175, 0.0188, 0.0045)
  d.pca_eigvec = ((-0.5675, 0.7192, 0.4009),
                  (-0.5808, -0.0045, -0.8140),
                  (-0.5836, -0.6948, 0.4203))
  # Per-channel RGB mean on the 0-255 scale, subtracted from every pixel
  # (() for none). The ImageNet training-set mean used by Caffe and VGG;
  # for other data compute it with
  # `python -m alexnet_jax.compute_mean --config=...`.
  d.mean = (123.68, 116.78, 103.94)
  # The paper's per-pixel mean instead: a .npy mean image (resize_size
  # square, 0-255) written by `python -m alexnet_jax.compute_mean
  # --config=... --mean_image=PATH.npy`. When set, data.mean is not used.
  d.mean_image = config_dict.placeholder(str)
  # Per-channel std (0-255 scale) that the mean-subtracted pixels are divided
  # by; () keeps the paper's 0-255 scale. compute_mean prints it too.
  d.std = ()
  d.eval_crops = 10  # 1: center crop; 10: corners + center and mirrors.
  # tf.data's autotuner. Off: parallelism = cores, and the process exits
  # promptly (the autotuner's thread held it up to 60 s at the end).
  d.autotune = False
  # source=synthetic (no files):
  d.num_train_examples = 1_281_167  # Size of the synthetic training set.
  d.num_eval_examples = 50_000  # Size of the synthetic evaluation set.
  d.synthetic_noise = 0.5  # Noise std around each class's prototype image.

  config.optim = o = ml_collections.ConfigDict()
  o.learning_rate = 0.01
  o.momentum = 0.9
  o.weight_decay = 5e-4
  o.weight_decay_mode = "coupled"  # coupled (paper) | decoupled | none
  # Where the paper's text is silent, the authors' code (cuda-convnet2's
  # ImageNet layers; Caffe's bvlc_alexnet alike): weight decay on weights
  # only, biases at twice the rate (docs/recipe.md). A bias is a vector
  # parameter: conv/fc biases, and BatchNorm's bias and scale.
  o.decay_biases = False
  o.bias_lr_scale = 2.0
  # {layer (model attribute, e.g. "fc8"): weight decay} for that layer's
  # weights instead of weight_decay (cuda-convnet sets it per layer); on the
  # command line: --config.optim.layer_weight_decay="{'fc8': 0.004}".
  o.layer_weight_decay = ml_collections.ConfigDict()
  # The paper divided the rate by 10 when the validation error stopped
  # improving, three times: schedule=plateau.
  o.schedule = "plateau"  # constant | step | plateau | cosine
  o.step_epochs = (30, 60, 80)  # step: divide by 10 at these epochs.
  o.plateau_patience = 3  # plateau: evaluations without improvement.
  o.plateau_factor = 0.1
  o.plateau_max_reductions = 3
  # Linear warmup before any schedule (0: none, as the paper; the cosine
  # schedule then decays from the end of the warmup).
  o.warmup_epochs = 0.0

  # Fine-tuning (alexnet_jax/finetune.py): a new run whose layers in `keep`
  # start from another workdir's checkpoint (a trained run, or one written
  # by `python -m alexnet_jax.convert`); the rest (fc8, sized for this run's
  # classes) from model.init. Read once, when the run has no checkpoint.
  config.finetune = f = ml_collections.ConfigDict()
  f.init_from = config_dict.placeholder(str)  # A workdir; None: no loading.
  f.best = False  # Its best checkpoint instead of its latest.
  f.keep = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")
  f.freeze = ()  # Layers never updated (their gradients are not computed).
  # Each layer's learning rate is optim.learning_rate x its lr_scale.
  f.lr_scale = ml_collections.ConfigDict({name: 1.0 for name in (
      "conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")})

  config.mesh = mesh = ml_collections.ConfigDict()
  mesh.data = -1  # -1: all devices not used by `model`.
  mesh.model = 1  # 1: data parallel | 2: one tower per device (paper).
  # Multi-process (jax.distributed): auto starts it when coordinator_address
  # is set or a launcher (SLURM, Open MPI, multi-host TPU) is detected; on
  # also lets JAX auto-detect the rest; off never.
  mesh.distributed = "auto"  # auto | on | off
  mesh.coordinator_address = config_dict.placeholder(str)  # "host:port"
  mesh.num_processes = config_dict.placeholder(int)  # None: auto-detected.
  mesh.process_id = config_dict.placeholder(int)  # None: auto-detected.
  mesh.initialization_timeout = 300  # Seconds to wait for every process.

  if arg == "cifar10":
    # The paper's network, init and optimizer unchanged, on real photos that
    # every machine here has: CIFAR-10 upscaled to 256, 227 crops (README,
    # training notes). Only the data and the class count differ.
    d.source = "folder"
    d.path = "~/.cache/alexnet_jax/cifar10"
    d.eval_split = "test"
    d.hint = ("extract the CIFAR-10 archive: mkdir -p ~/.cache/alexnet_jax && "
              "tar xzf ../shared/data/cifar10-jpg.tar.gz -C ~/.cache/alexnet_jax")
    d.mean = (124.14, 122.96, 112.57)  # CIFAR-10's (compute_mean).
    d.eval_crops = 1
    m.num_classes = 10
    config.log_every_steps = 20
  elif arg == "runlocal":
    d.source = "synthetic"  # Offline: no data set needed.
    d.eval_crops = 1
    config.batch_size = 8
    config.num_train_steps = 4
    config.log_every_steps = 1
    d.num_eval_examples = 16
  elif arg is not None:
    raise ValueError(f"unknown config option {arg!r} (known: runlocal, "
                     f"cifar10)")
  return config
