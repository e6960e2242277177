"""Linear probe on frozen features (Copernicus-Bench linear classifier, Galileo LP; METHOD.md 7).

Recipe: features standardised with the training set's mean and std (Galileo puts a BatchNorm1d in
front of its probe; fixed train statistics are the deterministic equivalent), one Linear(d -> C),
AdamW (decay on the kernel only) with a linear warm-up over `warmup_fraction` of the steps then a
cosine to `min_lr`, softmax cross-entropy (classification) or mean sigmoid BCE over classes
(multilabel; PyTorch's MultiLabelSoftMarginLoss). Every lr of the sweep trains from the same
initialisation on the same batch order (one vmapped, jitted run; the N(0, 0.01) kernel and the
shuffles are numpy draws from `seed`); the final model of the lr with the best validation score
is reported.

Validation scores: "accuracy" (classification default), "map" (multilabel default: Copernicus-Bench
reports BigEarthNet mAP under a frozen encoder) or "micro_f1" (GEO-Bench's multilabel F1, sigmoid
> 0.5).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from terrafm_jax.eval import metrics
from terrafm_jax.train import schedules

KINDS = ("classification", "multilabel")
METRICS = ("accuracy", "micro_f1", "map")
# Galileo's linear-probing sweep (src/eval/linear_probe.py PROBING_LRs).
DEFAULT_LRS = (1e-4, 3e-4, 5e-4, 8e-4, 1e-3, 3e-3, 5e-3, 8e-3, 1e-2, 3e-2, 5e-2, 8e-2, 1e-1,
               3e-1, 5e-1, 8e-1)
_HI = jax.lax.Precision.HIGHEST  # small matmuls; keeps GPU results close to CPU ones


@dataclasses.dataclass
class LinearProbeResult:
  """The chosen probe. `params` = {"kernel": (d, C), "bias": (C,)} on standardised features."""
  params: dict[str, np.ndarray]
  mean: np.ndarray
  std: np.ndarray
  kind: str
  num_classes: int
  metric: str
  lr: float
  val_score: float
  val_scores: dict[float, float]
  train_loss: np.ndarray  # (epochs,) mean training loss per epoch at the chosen lr


def default_metric(kind: str) -> str:
  return "accuracy" if kind == "classification" else "map"


def check_kind_metric(kind: str, metric: str | None) -> str:
  """The metric to use; raises on unknown or mismatched kind/metric."""
  if kind not in KINDS:
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
  metric = metric or default_metric(kind)
  if metric not in METRICS:
    raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
  if (metric == "accuracy") != (kind == "classification"):
    raise ValueError(f"metric {metric!r} does not apply to kind {kind!r}")
  return metric


def check_labels(y: np.ndarray, kind: str, num_classes: int, name: str) -> np.ndarray:
  """int32 (n,) class indices or float32 (n, C) 0/1, validated."""
  y = np.asarray(y)
  if kind == "classification":
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
      raise ValueError(f"{name}: classification labels must be (n,) integers, got {y.dtype} "
                       f"{y.shape}")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
      raise ValueError(f"{name}: labels outside [0, {num_classes})")
    return y.astype(np.int32)
  if y.ndim != 2 or y.shape[1] != num_classes or not np.all((y == 0) | (y == 1)):
    raise ValueError(f"{name}: multilabel labels must be (n, {num_classes}) 0/1, got {y.shape}")
  return y.astype(np.float32)


def classification_loss(logits: jnp.ndarray, y: jnp.ndarray, kind: str) -> jnp.ndarray:
  """Per-sample loss: softmax CE on integer labels, or the class-mean sigmoid BCE."""
  logits = logits.astype(jnp.float32)
  if kind == "classification":
    return optax.softmax_cross_entropy_with_integer_labels(logits, y)
  return optax.sigmoid_binary_cross_entropy(logits, y).mean(axis=-1)


def score(logits: np.ndarray, y: np.ndarray, metric: str) -> float:
  """Validation score of (n, C) logits under `metric`."""
  logits = np.asarray(logits, np.float64)
  if metric == "accuracy":
    return metrics.accuracy(logits, y)
  if metric == "micro_f1":
    return metrics.micro_f1((logits > 0).astype(np.int64), y)
  return metrics.mean_average_precision(logits, y)


def _standardise_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  mean = x.mean(0)
  std = x.std(0)
  return mean.astype(np.float32), np.where(std > 1e-6, std, 1.0).astype(np.float32)


def _train_all(x, y, lrs, kernel0, order, weight, *, kind, epochs, weight_decay, warmup_steps,
               min_lr):
  """Params (L, ...) of every lr after `epochs`, and (L, epochs) mean losses.

  order / weight: (epochs, steps, batch) sample indices and 0/1 weights (padding), drawn on the
  host so that the compiled program holds no random-number generator (threefry compiles slowly on
  XLA:CPU)."""
  steps = order.shape[1]
  params = {"kernel": kernel0, "bias": jnp.zeros((kernel0.shape[1],), jnp.float32)}
  tx = optax.chain(optax.scale_by_adam(),
                   optax.add_decayed_weights(weight_decay, mask={"kernel": True, "bias": False}))

  def loss_fn(p, xb, yb, wb):
    logits = jnp.dot(xb, p["kernel"], precision=_HI) + p["bias"]
    return jnp.sum(classification_loss(logits, yb, kind) * wb) / jnp.sum(wb)

  def one_lr(lr):
    sched = schedules.warmup_cosine(lr, jnp.minimum(min_lr, lr), epochs * steps, warmup_steps)

    def step(carry, batch):
      p, opt, t = carry
      idx, wb = batch
      loss, g = jax.value_and_grad(loss_fn)(p, x[idx], y[idx], wb)
      u, opt = tx.update(g, opt, p)
      p = jax.tree.map(lambda a, b: a - sched(t) * b, p, u)
      return (p, opt, t + 1), loss

    def epoch(carry, batches):
      carry, losses = jax.lax.scan(step, carry, batches)
      return carry, losses.mean()

    carry = (params, tx.init(params), jnp.zeros([], jnp.int32))
    (p, _, _), losses = jax.lax.scan(epoch, carry, (order, weight))
    return p, losses

  return jax.vmap(one_lr)(lrs)


def _epoch_orders(n: int, batch: int, epochs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(epochs, steps, batch) shuffled indices, the last batch topped up with weight-0 repeats."""
  steps = math.ceil(n / batch)
  rng = np.random.default_rng(seed)
  order = np.empty((epochs, steps * batch), np.int32)
  for e in range(epochs):
    perm = rng.permutation(n)
    order[e] = np.resize(perm, steps * batch)
  weight = np.broadcast_to((np.arange(steps * batch) < n).astype(np.float32),
                           (epochs, steps * batch))
  return order.reshape(epochs, steps, batch), weight.reshape(epochs, steps, batch)


_train_all_jit = jax.jit(_train_all, static_argnames=(
    "kind", "epochs", "weight_decay", "warmup_steps", "min_lr"))


def fit_linear(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
               *, kind: str, num_classes: int, lrs: Sequence[float] = DEFAULT_LRS,
               epochs: int = 50, batch_size: int = 256, weight_decay: float = 0.0,
               seed: int = 0, warmup_fraction: float = 0.1, min_lr: float = 1e-6,
               metric: str | None = None) -> LinearProbeResult:
  """Train one probe per lr, keep the one with the best validation score (first on ties)."""
  metric = check_kind_metric(kind, metric)
  train_x = np.asarray(train_x, np.float32)
  val_x = np.asarray(val_x, np.float32)
  if train_x.ndim != 2 or val_x.ndim != 2 or train_x.shape[1] != val_x.shape[1]:
    raise ValueError(f"features must be (n, d) with one d, got {train_x.shape} and {val_x.shape}")
  train_y = check_labels(train_y, kind, num_classes, "train_y")
  val_y = check_labels(val_y, kind, num_classes, "val_y")
  if len(train_x) != len(train_y) or len(val_x) != len(val_y):
    raise ValueError("features and labels differ in length")
  if not lrs or epochs <= 0 or batch_size <= 0 or len(train_x) == 0:
    raise ValueError("need lrs, epochs > 0, batch_size > 0 and training data")
  lrs = tuple(float(lr) for lr in lrs)
  batch = min(batch_size, len(train_x))
  total = epochs * math.ceil(len(train_x) / batch)
  mean, std = _standardise_stats(train_x)
  order, weight = _epoch_orders(len(train_x), batch, epochs, seed)
  kernel0 = 0.01 * np.random.default_rng([seed, 1]).standard_normal(
      (train_x.shape[1], num_classes)).astype(np.float32)
  params, losses = _train_all_jit(jnp.asarray((train_x - mean) / std), jnp.asarray(train_y),
                                  jnp.asarray(lrs, jnp.float32), kernel0, order, weight,
                                  kind=kind, epochs=epochs, weight_decay=float(weight_decay),
                                  warmup_steps=int(round(warmup_fraction * total)),
                                  min_lr=float(min_lr))
  params, losses = jax.device_get((params, losses))
  vx = (val_x - mean) / std
  val_scores = {}
  for i, lr in enumerate(lrs):
    logits = vx @ params["kernel"][i] + params["bias"][i]
    val_scores[lr] = score(logits, val_y, metric)
  ranked = [-np.inf if np.isnan(s) else s for s in val_scores.values()]
  best = int(np.argmax(ranked))
  return LinearProbeResult(
      params={k: np.asarray(v[best]) for k, v in params.items()}, mean=mean, std=std, kind=kind,
      num_classes=num_classes, metric=metric, lr=lrs[best], val_score=val_scores[lrs[best]],
      val_scores=val_scores, train_loss=np.asarray(losses[best]))


def linear_logits(result: LinearProbeResult, x: np.ndarray) -> np.ndarray:
  """(n, C) float32 logits of the probe."""
  x = (np.asarray(x, np.float32) - result.mean) / result.std
  return (x @ result.params["kernel"] + result.params["bias"]).astype(np.float32)


def predictions_from_logits(logits: np.ndarray, kind: str) -> np.ndarray:
  """(n,) int64 argmax classes, or (n, C) int64 0/1 with sigmoid > 0.5 (logit > 0)."""
  logits = np.asarray(logits)
  if kind == "classification":
    return np.argmax(logits, axis=-1).astype(np.int64)
  return (logits > 0).astype(np.int64)


def predict_linear(result: LinearProbeResult, x: np.ndarray) -> np.ndarray:
  """(n,) int64 classes (classification) or (n, C) int64 0/1 (multilabel, sigmoid > 0.5)."""
  return predictions_from_logits(linear_logits(result, x), result.kind)
