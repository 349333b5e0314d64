"""How much of each layer's output depends on the image, at initialization.

  python -m experiments.init_signal --config=configs/cifar10.py \
      [--config.model.init=paper --config.data.std="()"] [--batch=128]

On one real training batch (the config's pipeline), prints per layer: the
mean activation, the std across the batch (the part that depends on the
image, averaged over units), the LRN denominator's spread (how far LRN is
from a constant scale), and the gradient norm of the loss relative to the
parameter norm. A net whose across-batch std falls by orders of magnitude
from conv1 to fc8 has logits that hardly depend on the input: its
gradients say little about the images and it stays at chance for a long
time (README, training notes).
"""

from __future__ import annotations

from absl import app
from absl import flags
from ml_collections import config_flags

import alexnet_jax  # noqa: F401  (sets the XLA:CPU flags before jax starts)
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from alexnet_jax import checkpoint as checkpoint_lib
from alexnet_jax import input_pipeline
from alexnet_jax import ops
from alexnet_jax import preprocess
from alexnet_jax import steps
from alexnet_jax import train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "A config file.",
                                lock_config=True)
flags.DEFINE_integer("batch", 128, "Images in the batch.")
flags.DEFINE_string("workdir", None, "Measure the latest checkpoint of this "
                    "training run instead of the initialization.")
flags.mark_flags_as_required(["config"])

LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")


def lrn_spread(x: np.ndarray, towers: int) -> float:
  """Relative std of LRN's scale (k + alpha S)^-beta where x > 0.

  0: LRN multiplies every activation by the same constant k^-beta, i.e. it
  does nothing that a rescaled next layer would not do.
  """
  y = np.asarray(ops.local_response_norm(jnp.asarray(x),
                                               groups=towers))
  scale = y[x > 0] / x[x > 0]
  return float(scale.std() / scale.mean())


def lrn_inputs(model, x) -> dict:
  """The inputs of LRN in layers 1 and 2 (after the activation)."""
  pool = lambda v: ops.max_pool(v, model.pool_window, model.pool_stride)
  a1 = model.act(model.conv1(x))
  a2 = model.act(model.conv2(pool(ops.local_response_norm(
      a1, groups=model.towers))))
  return {"conv1": np.asarray(a1), "conv2": np.asarray(a2)}


def report(config, batch_size: int, workdir: str | None = None) -> str:
  config.unlock()
  config.batch_size = batch_size
  model, optimizer, _ = train.create_train_state(config)
  where = "initialization"
  if workdir:
    ckpts = checkpoint_lib.Checkpoints(workdir, max_to_keep=1)
    step = ckpts.latest_step()
    if step is None:
      raise SystemExit(f"error: no checkpoint in {workdir}")
    like = {"model": nnx.to_pure_dict(nnx.state(model)),
            "opt": nnx.to_pure_dict(nnx.state(optimizer))}
    state, _ = ckpts.restore(step, like)
    ckpts.close()
    model_state = nnx.state(model)
    nnx.replace_by_pure_dict(model_state, state["model"])
    nnx.update(model, model_state)
    where = f"checkpoint step {step}"
  size = model.image_size
  _, batches = input_pipeline.train_iterator(config, image_size=size)
  batch = preprocess.finished_batch(config.data, next(batches))
  x, y = jnp.asarray(batch["image"]), jnp.asarray(batch["label"])
  model.eval()  # No dropout: the signal itself.
  _, acts = model(x, return_activations=True)

  def loss_fn(m):
    return steps.cross_entropy(m(x), y).mean()

  loss, grads = nnx.value_and_grad(loss_fn)(model)
  pre = lrn_inputs(model, x) if model.norm == "lrn" else {}
  lines = [f"{where}; input: mean {float(x.mean()):.3g}, std {float(x.std()):.3g}; "
           f"loss {float(loss):.4f} (chance ln {config.model.num_classes} = "
           f"{np.log(config.model.num_classes):.4f})", "",
           "| layer | mean | std across images | LRN scale spread | "
           "\\|grad\\| / \\|W\\| |", "|---|---|---|---|---|"]
  for name in LAYERS:
    a = np.asarray(acts[name])
    layer, g = getattr(model, name), getattr(grads, name)
    ratio = (float(jnp.linalg.norm(g.kernel[...])) /
             float(jnp.linalg.norm(layer.kernel[...])))
    spread = (f"{lrn_spread(pre[name], model.towers):.2g}" if name in pre
              else "")
    lines.append(f"| {name} | {a.mean():.3g} | {a.std(0).mean():.3g} | "
                 f"{spread} | {ratio:.3g} |")
  return "\n".join(lines)


def main(argv):
  del argv
  print(report(FLAGS.config, FLAGS.batch, FLAGS.workdir))


if __name__ == "__main__":
  app.run(main)
