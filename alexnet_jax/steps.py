"""The jitted train and eval steps over split NNX state, and their metrics.

Both steps are pure functions of (graph, state) so that the loop can donate
the states, place them on a mesh and checkpoint them; the model and the
optimizer are merged inside the step from graphs split once in setup.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from alexnet_jax import lrn_stats
from alexnet_jax import precision


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def topk_correct(scores: jax.Array, labels: jax.Array, k: int) -> jax.Array:
  """1 where the label is among the k highest scores.

  Ties count against: a network whose logits are all equal scores 0, not
  100%, and a NaN score never counts as correct.
  """
  label_score = jnp.take_along_axis(scores, labels[:, None], axis=-1)
  at_least = jnp.sum(scores >= label_score, axis=-1)
  ok = (at_least <= k) & jnp.isfinite(label_score[:, 0])
  return ok.astype(jnp.float32)


def _same(image, shift=None):
  del shift
  return image


def make_steps(model_graph, opt_graph, eval_graph, wrt=nnx.Param,
               finish=_same):
  """Pure jitted train and eval steps over split NNX state.

  train_step(model_state, opt_state, batch, learning_rate) donates both
  states and differentiates the parameters `wrt` selects (the optimizer's
  filter: all but the frozen layers', finetune.py), so no gradient is
  computed for the others. An optimizer with a loss scale (float16,
  precision.py) gets the scaled loss's gradients, skips a step whose
  gradients overflow, and adds `loss_scale` and `overflow` to the metrics.
  eval_step(model_state, batch) returns masked sums; a batch whose images
  are (B, crops, H, W, 3) is scored by the softmax averaged over the crops
  (the paper's 10-crop test). finish(image, shift) turns a batch's images
  into the model's input (data.normalize_on_device: uint8 to float,
  preprocess.device_finish).
  """

  def train_step(model_state, opt_state, batch, learning_rate):
    model = nnx.merge(model_graph, model_state)
    optimizer = nnx.merge(opt_graph, opt_state)

    # Rows of unreadable images have mask=False and do not count.
    mask = batch["mask"].astype(jnp.float32)
    count = jnp.maximum(mask.sum(), 1.0)
    # float16 (precision.py): what an overflowing step leaves unchanged.
    before = precision.snapshot(model, optimizer)

    def loss_fn(model):
      logits = model(finish(batch["image"], batch.get("shift")))
      loss = jnp.sum(cross_entropy(logits, batch["label"]) * mask) / count
      return precision.scaled_loss(optimizer, loss), (loss, logits)

    grad_fn = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, wrt),
                                 has_aux=True)
    (_, (loss, logits)), grads = grad_fn(model)
    scale_metrics = precision.update(model, optimizer, grads, learning_rate,
                                     before)
    correct = topk_correct(logits, batch["label"], 1)
    metrics = {"loss": loss, "accuracy": jnp.sum(correct * mask) / count,
               **scale_metrics}
    return nnx.state(model), nnx.state(optimizer), metrics

  def eval_step(model_state, batch):
    model = nnx.merge(eval_graph, model_state)
    images, labels = finish(batch["image"]), batch["label"]
    mask = batch["mask"].astype(jnp.float32)
    # With LRN, its statistic (lrn_stats.py) from the same forward.
    stats = bool(lrn_stats.layers_of(model))
    if images.ndim == 5:  # (B, crops, H, W, C): average the softmax.
      b, crops = images.shape[:2]
      out = model(images.reshape(b * crops, *images.shape[2:]),
                  return_activations=stats)
      logits, acts = out if stats else (out, {})
      probs = jax.nn.softmax(logits).reshape(b, crops, -1).mean(axis=1)
      nll = -jnp.log(jnp.take_along_axis(probs, labels[:, None], -1)[:, 0])
      scores, act_mask = probs, jnp.repeat(mask, crops)
    else:
      out = model(images, return_activations=stats)
      scores, acts = out if stats else (out, {})
      nll = cross_entropy(scores, labels)
      act_mask = mask
    return {"loss": jnp.sum(nll * mask),
            "top1": jnp.sum(topk_correct(scores, labels, 1) * mask),
            "top5": jnp.sum(topk_correct(scores, labels, 5) * mask),
            "count": jnp.sum(mask),
            **lrn_stats.sums(model, acts, act_mask)}

  return (jax.jit(train_step, donate_argnums=(0, 1)), jax.jit(eval_step))
