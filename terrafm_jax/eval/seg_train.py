"""Training a segmentation head (seg_heads) on frozen features, with an lr sweep on validation mIoU.

Features are host arrays with a leading sample axis: (N, h, w, d) patch tokens for
PatchLinearHead, or a tuple of four (N, h, w, d) maps for UPerNetHead; labels are (N, H, W) ints.
When the head's output is not H x W its logits are resized bilinearly to the label size (the
head's `align_corners` convention) before the loss and before the argmax.

Loss: softmax cross-entropy averaged over the pixels whose label is not `ignore_index` (PyTorch
CrossEntropyLoss(ignore_index) "mean"); ignored pixels give no gradient. A head that returns
(logits, aux_logits) in training (UPerNetHead's auxiliary FCN) adds `aux_loss_weight` x the same
loss of its resized auxiliary logits, as mmseg sums a decode head's and an auxiliary head's
losses. AdamW (decay on kernels, not on biases / BatchNorm), linear warm-up over
`warmup_fraction` of the steps, cosine to `min_lr`.
Every lr starts from the same initialisation and sees the same batch order (seeded); the final
model of the lr with the best validation mIoU is kept. The lr is an argument of the jitted step,
so a sweep compiles once. Heads are initialised on the host (`init_variables`). The last batch
of an epoch is topped up with repeats whose pixels are masked out of the loss (they still enter
BatchNorm's batch statistics).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from terrafm_jax.eval import metrics
from terrafm_jax.eval.seg_heads import resize_bilinear
from terrafm_jax.train import optim as optim_lib
from terrafm_jax.train import schedules

Features = Any  # np.ndarray (N, h, w, d) or a tuple of them


@dataclasses.dataclass
class SegResult:
  """The chosen head: `variables` = {"params": ..., ["batch_stats": ...]} (host numpy)."""
  head: nn.Module
  variables: dict[str, Any]
  num_classes: int
  ignore_index: int | None
  lr: float
  val_miou: float
  val_scores: dict[float, float]   # lr -> validation mIoU
  train_loss: list[float]          # per epoch at the chosen lr


def masked_cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray,
                         valid: jnp.ndarray) -> jnp.ndarray:
  """Mean softmax CE of (B, H, W, C) logits over the `valid` pixels (0 when none is valid)."""
  ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32),
                                                       jnp.where(valid, labels, 0))
  valid = valid.astype(jnp.float32)
  return jnp.sum(ce * valid) / jnp.maximum(jnp.sum(valid), 1.0)


def segmentation_loss(logits: jnp.ndarray, labels: jnp.ndarray,
                      ignore_index: int | None = None) -> jnp.ndarray:
  """Mean CE over the pixels whose label is not `ignore_index`."""
  valid = (jnp.ones(labels.shape, bool) if ignore_index is None else labels != ignore_index)
  return masked_cross_entropy(logits, labels, valid)


def _n(x: Features) -> int:
  sizes = {int(a.shape[0]) for a in jax.tree.leaves(x)}
  if len(sizes) != 1:
    raise ValueError(f"feature arrays disagree on the number of samples: {sorted(sizes)}")
  return sizes.pop()


def _take(x: Features, idx: np.ndarray) -> Features:
  return jax.tree.map(lambda a: np.asarray(a[idx], np.float32), x)


def _check_labels(y: np.ndarray, n: int, num_classes: int, ignore_index: int | None,
                  name: str) -> tuple[np.ndarray, np.ndarray]:
  """int32 labels with ignored pixels set to 0, and the bool valid mask."""
  y = np.asarray(y)
  if y.ndim != 3 or len(y) != n or not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f"{name}: labels must be (N={n}, H, W) integers, got {y.dtype} {y.shape}")
  valid = np.ones(y.shape, bool) if ignore_index is None else y != ignore_index
  bad = valid & ((y < 0) | (y >= num_classes))
  if bad.any():
    raise ValueError(f"{name}: label values outside [0, {num_classes}) that are not "
                     f"ignore_index={ignore_index}: {np.unique(y[bad])[:10]}")
  return np.where(valid, y, 0).astype(np.int32), valid


def _align_corners(head: nn.Module) -> bool:
  return bool(getattr(head, "align_corners", False))


def _apply(head, variables, x, train, rng):
  """(output, updated non-param collections); BatchNorm statistics update in training only."""
  state = {k: v for k, v in variables.items() if k != "params"}
  if not train:
    return head.apply(variables, x, train=False), state
  if not state:
    return head.apply(variables, x, train=True, rngs={"dropout": rng}), {}
  return head.apply(variables, x, train=True, rngs={"dropout": rng}, mutable=list(state))


def init_variables(head: nn.Module, x_example: Features, seed: int) -> dict[str, Any]:
  """Head variables drawn on the host with numpy: LeCun-normal kernels (std 1/sqrt(fan_in)),
  zero biases, unit norm scales, BatchNorm statistics mean 0 / var 1.

  Why not `head.init`: compiling jax.random's threefry initialisers costs tens of seconds on
  XLA:CPU for a UPerNet, and numpy draws are identical on every backend."""
  shapes = jax.eval_shape(functools.partial(head.init, train=False), jax.random.key(0),
                          _take(x_example, np.arange(1)))
  rng = np.random.default_rng(seed)

  def fill(path, s):
    name = optim_lib.param_path(path).split("/")[-1]
    if name == "kernel":
      fan_in = int(np.prod(s.shape[:-1]))
      return (rng.standard_normal(s.shape) / np.sqrt(fan_in)).astype(s.dtype)
    return (np.ones if name in ("scale", "var") else np.zeros)(s.shape, s.dtype)

  return jax.tree_util.tree_map_with_path(fill, nn.meta.unbox(shapes))


def _transform(params, weight_decay: float) -> optax.GradientTransformation:
  """AdamW's direction (the step subtracts lr_t times it); decay on kernels only."""
  return optax.chain(optax.scale_by_adam(), optax.add_decayed_weights(
      weight_decay, mask=optim_lib.weight_decay_mask(params, "", "")))


def training_loss(head: nn.Module, out, labels: jnp.ndarray, valid: jnp.ndarray) -> jnp.ndarray:
  """The head's training output (logits, or (logits, aux_logits)) -> the loss to minimise."""
  main, aux = out if isinstance(out, tuple) else (out, None)
  size, corners = labels.shape[1:3], _align_corners(head)
  loss = masked_cross_entropy(resize_bilinear(main, size, corners), labels, valid)
  if aux is not None:
    loss = loss + head.aux_loss_weight * masked_cross_entropy(
        resize_bilinear(aux, size, corners), labels, valid)
  return loss


def _step(head, weight_decay, variables, opt_state, x, labels, valid, key, t, lr_t):
  rng = jax.random.fold_in(key, t)

  def loss_fn(p):
    out, state = _apply(head, {**variables, "params": p}, x, True, rng)
    return training_loss(head, out, labels, valid), state

  params = variables["params"]
  (loss, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  updates, opt_state = _transform(params, weight_decay).update(grads, opt_state, params)
  params = jax.tree.map(lambda p, u: p - lr_t * u, params, updates)
  return {**variables, **state, "params": params}, opt_state, loss


_step_jit = jax.jit(_step, static_argnums=(0, 1), donate_argnums=(2, 3))


def _class_maps(head, variables, x, size):
  out, _ = _apply(head, variables, x, False, None)
  return jnp.argmax(resize_bilinear(out, size, _align_corners(head)), axis=-1).astype(jnp.int32)


_class_maps_jit = jax.jit(_class_maps, static_argnums=(0, 3))


def _batches(n: int, batch: int, order: np.ndarray):
  """Index arrays of exactly `batch` rows (the last topped up with repeats) and the real count."""
  for lo in range(0, n, batch):
    idx = order[lo:lo + batch]
    real = len(idx)
    if real < batch:
      idx = np.concatenate([idx, np.resize(order, batch - real)])
    yield idx, real


def predict_segmentation(result: SegResult, x: Features,
                         label_size: Sequence[int] | None = None,
                         batch_size: int = 16) -> np.ndarray:
  """(N, H, W) int64 class maps; H, W = `label_size` or the head's native output size."""
  return _predict(result.head, result.variables, x, label_size, batch_size)


def _predict(head, variables, x, label_size, batch_size) -> np.ndarray:
  n = _n(x)
  batch = min(batch_size, n)
  if label_size is None:
    out = jax.eval_shape(lambda v, f: _apply(head, v, f, False, None)[0], variables,
                         _take(x, np.arange(1)))
    label_size = out.shape[1:3]
  size = tuple(int(s) for s in label_size)
  preds = []
  for idx, real in _batches(n, batch, np.arange(n)):
    preds.append(np.asarray(_class_maps_jit(head, variables, _take(x, idx), size))[:real])
  return np.concatenate(preds).astype(np.int64)


def _val_miou(head, variables, x, y, num_classes, ignore_index, batch_size) -> float:
  pred = _predict(head, variables, x, y.shape[1:3], batch_size)
  return metrics.mean_iou(pred, y, num_classes, ignore_index)


def fit_segmentation(head: nn.Module, train_x: Features, train_y: np.ndarray,
                     val_x: Features, val_y: np.ndarray, *, num_classes: int,
                     lrs: Sequence[float] = (1e-4, 1e-3, 1e-2), epochs: int = 50,
                     batch_size: int = 16, weight_decay: float = 1e-4,
                     ignore_index: int | None = None, seed: int = 0,
                     warmup_fraction: float = 0.1, min_lr: float = 1e-6) -> SegResult:
  """Train `head` at every lr on frozen features; keep the best by validation mIoU (first on
  ties). mIoU leaves out classes absent from both prediction and truth (metrics.mean_iou)."""
  if getattr(head, "num_classes", num_classes) != num_classes:
    raise ValueError(f"head has {head.num_classes} classes, task has {num_classes}")
  if not lrs or epochs <= 0 or batch_size <= 0:
    raise ValueError("need lrs, epochs > 0 and batch_size > 0")
  n = _n(train_x)
  labels, valid = _check_labels(train_y, n, num_classes, ignore_index, "train_y")
  val_y = np.asarray(val_y)
  _check_labels(val_y, _n(val_x), num_classes, ignore_index, "val_y")
  batch = min(batch_size, n)
  steps = math.ceil(n / batch)
  total = epochs * steps
  step_key = jax.random.key(seed)
  variables0 = init_variables(head, train_x, seed)
  best, scores = None, {}
  for lr in (float(v) for v in lrs):
    sched = schedules.warmup_cosine(lr, min(min_lr, lr), total,
                                    int(round(warmup_fraction * total)))
    lr_table = np.asarray(sched(jnp.arange(total)), np.float32)
    variables = jax.tree.map(jnp.asarray, variables0)
    opt_state = _transform(variables["params"], weight_decay).init(variables["params"])
    t, losses = 0, []
    for epoch in range(epochs):
      order = np.random.default_rng([seed, epoch]).permutation(n)
      epoch_losses = []
      for idx, real in _batches(n, batch, order):
        vb = valid[idx].copy()
        vb[real:] = False
        variables, opt_state, loss = _step_jit(
            head, float(weight_decay), variables, opt_state, _take(train_x, idx), labels[idx],
            vb, step_key, np.int32(t), lr_table[t])
        epoch_losses.append(loss)
        t += 1
      losses.append(float(np.mean(jax.device_get(epoch_losses))))
    variables = jax.device_get(variables)
    miou = _val_miou(head, variables, val_x, val_y, num_classes, ignore_index, batch)
    scores[lr] = miou
    if best is None or np.nan_to_num(miou, nan=-1.0) > np.nan_to_num(best.val_miou, nan=-1.0):
      best = SegResult(head=head, variables=variables, num_classes=num_classes,
                       ignore_index=ignore_index, lr=lr, val_miou=miou, val_scores=scores,
                       train_loss=losses)
  return best
