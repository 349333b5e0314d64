"""alexnet_jax: the paper's AlexNet in JAX/Flax NNX."""

import os

# XLA:CPU's default YNNPACK path for convolutions and dots is slower on
# AlexNet (20-55% in the train step) and less exact for conv gradients than
# the Eigen path this flag selects. Applied only when the user has not set
# XLA_FLAGS, and only before JAX starts its backend; it does not affect GPUs.
DEFAULT_XLA_FLAGS = "--xla_cpu_experimental_ynn_fusion_type="
if "XLA_FLAGS" not in os.environ:
  os.environ["XLA_FLAGS"] = DEFAULT_XLA_FLAGS
