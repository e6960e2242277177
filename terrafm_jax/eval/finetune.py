"""Full fine-tuning of the encoder + a linear head on the CLS token (GEO-Bench classification,
METHOD.md 7; Galileo's recipe: AdamW, 10 % linear warm-up, cosine to 1e-6, lr sweep, best-val lr).

Optimizer: global-norm gradient clipping (Galileo clips at 1.0) -> Adam moments -> decoupled weight
decay (kernels only: no decay on 1-D parameters, i.e. biases and LayerNorm scales, nor on
cls_token / pos_embed, timm's `no_weight_decay`) -> optional layer-wise lr decay (BEiT / MAE: the
update of a tensor in layer `id` is scaled by decay ** (depth + 1 - id); ids in `layer_id`) ->
times the scheduled lr. The lr is an argument of the jitted step, so the whole sweep compiles once.

Batches are host numpy: `train_batches(epoch)` yields ({stem: (B, H, W, C) normalised float32},
labels) with (B,) int labels (classification) or (B, C) 0/1 (multilabel); at most
`steps_per_epoch` of them are used per epoch. Keep B, H, W fixed (drop or pad the last batch):
each new shape recompiles the step. One image per batch dict takes the encoder's single-modality
path. Runs on one device (no sharding).
"""
from __future__ import annotations

import dataclasses
import itertools
import re
from typing import Any, Callable, Iterable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from terrafm_jax.eval import linear
from terrafm_jax.train import optim as optim_lib
from terrafm_jax.train import schedules

Batch = tuple[Mapping[str, np.ndarray], np.ndarray]
# Galileo's fine-tuning sweep (src/eval/finetune.py FT_LRs).
FT_LRS = (1e-5, 3e-5, 6e-5, 1e-4, 3e-4, 6e-4, 1e-3, 3e-3, 6e-3)
NO_DECAY_REGEX = r"(^|/)(cls_token|pos_embed)$"
_BLOCK = re.compile(r"^blocks_(\d+)(/|$)")


@dataclasses.dataclass
class FinetuneResult:
  """`params` = {"encoder": ..., "head": {"kernel", "bias"}} (host numpy) of the best-val epoch."""
  params: dict[str, Any]
  lr: float
  metric: str
  best_epoch: int
  val_score: float
  train_loss: list[float]     # per epoch, mean over its steps
  val_scores: list[float]     # per epoch


@dataclasses.dataclass
class FinetuneSweepResult:
  best: FinetuneResult
  val_scores: dict[float, float]   # lr -> best-epoch validation score


def layer_id(path: str, depth: int) -> int:
  """BEiT layer id of a parameter path ('encoder/' prefix optional): 0 for patch_embed, cls_token
  and pos_embed, i + 1 for blocks_i, depth + 1 for the final norm and the head."""
  p = path[len("encoder/"):] if path.startswith("encoder/") else path
  top = p.split("/")[0]
  if top in ("patch_embed", "cls_token", "pos_embed"):
    return 0
  m = _BLOCK.match(p)
  if m:
    i = int(m.group(1))
    if i >= depth:
      raise ValueError(f"{path}: block {i} in a depth-{depth} encoder")
    return i + 1
  if top in ("norm", "head"):
    return depth + 1
  raise ValueError(f"no layer id for parameter {path!r}")


def layer_decay_multipliers(params: Any, depth: int, decay: float) -> Any:
  """Tree of Python floats decay ** (depth + 1 - layer_id) with the structure of `params`."""
  return jax.tree_util.tree_map_with_path(
      lambda p, _: float(decay ** (depth + 1 - layer_id(optim_lib.param_path(p), depth))), params)


def scale_by_tree(multipliers: Any) -> optax.GradientTransformation:
  """Multiply each update tensor by its (static) multiplier."""

  def update_fn(updates, state, params=None):
    del params
    return jax.tree.map(lambda u, m: u * jnp.asarray(m, u.dtype), updates, multipliers), state

  return optax.GradientTransformation(lambda _: optax.EmptyState(), update_fn)


def finetune_transform(params: Any, *, depth: int, weight_decay: float = 0.05,
                       layer_decay: float | None = None,
                       clip_grad_norm: float | None = 1.0) -> optax.GradientTransformation:
  """The AdamW direction with layer decay; the caller subtracts lr_t times it (see module doc)."""
  parts = []
  if clip_grad_norm:
    parts.append(optax.clip_by_global_norm(clip_grad_norm))
  parts += [optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8),
            optax.add_decayed_weights(weight_decay, mask=optim_lib.weight_decay_mask(
                params, NO_DECAY_REGEX, ""))]
  if layer_decay is not None:
    parts.append(scale_by_tree(layer_decay_multipliers(params, depth, layer_decay)))
  return optax.chain(*parts)


def _logits(encoder: nn.Module, params, images, train: bool = False, rng=None) -> jnp.ndarray:
  """(B, C) float32: the linear head on the encoder's CLS token."""
  rngs = {"drop_path": rng} if train else None
  cls = encoder.apply({"params": params["encoder"]}, dict(images), train=train, rngs=rngs)["cls"]
  head = params["head"]
  return (cls.astype(jnp.float32) @ head["kernel"] + head["bias"]).astype(jnp.float32)


# Module-level so that validation during training and `make_logits_fn` share one compile (flax
# modules hash by value).
_eval_logits = jax.jit(_logits, static_argnums=(0,))


class _Trainer:
  """Jitted train step for one (encoder, transform): shared by all lrs of a sweep."""

  def __init__(self, encoder: nn.Module, num_classes: int, kind: str, tx):
    self.encoder, self.num_classes, self.kind, self.tx = encoder, num_classes, kind, tx

    def step(params, opt_state, images, labels, key, t, lr_t):
      rng = jax.random.fold_in(key, t)

      def loss_fn(p):
        return linear.classification_loss(_logits(encoder, p, images, True, rng), labels,
                                          kind).mean()

      loss, grads = jax.value_and_grad(loss_fn)(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      params = jax.tree.map(lambda p, u: p - (lr_t * u).astype(p.dtype), params, updates)
      return params, opt_state, loss

    self.step = jax.jit(step, donate_argnums=(0, 1))

  def logits(self, params, images) -> jnp.ndarray:
    return _eval_logits(self.encoder, params, images)


def _init_params(encoder_params: Any, num_classes: int, width: int, seed: int) -> dict[str, Any]:
  """A copy of the encoder's params (the step donates its inputs) and a N(0, .01) head drawn with
  numpy (same on every backend)."""
  enc = jax.tree.map(lambda x: jnp.array(x, copy=True), nn.meta.unbox(encoder_params))
  kernel = 0.01 * np.random.default_rng([seed, 0]).standard_normal((width, num_classes))
  head = {"kernel": jnp.asarray(kernel, jnp.float32),
          "bias": jnp.zeros((num_classes,), jnp.float32)}
  return {"encoder": enc, "head": head}


def _labels(y: np.ndarray, kind: str, num_classes: int) -> np.ndarray:
  return linear.check_labels(y, kind, num_classes, "labels")


def _evaluate(trainer: _Trainer, params, val_batches: Callable[[], Iterable[Batch]], kind: str,
              num_classes: int, metric: str) -> float:
  logits, labels = [], []
  for images, y in val_batches():
    logits.append(np.asarray(trainer.logits(params, images)))
    labels.append(_labels(y, kind, num_classes))
  if not logits:
    raise ValueError("val_batches() yielded no batch")
  return linear.score(np.concatenate(logits), np.concatenate(labels), metric)


def _run(trainer: _Trainer, encoder_params, train_batches, val_batches, *, kind, num_classes, lr,
         epochs, steps_per_epoch, warmup_fraction, min_lr, seed, metric) -> FinetuneResult:
  params = _init_params(encoder_params, num_classes, trainer.encoder.dims["width"], seed)
  opt_state = trainer.tx.init(params)
  total = epochs * steps_per_epoch
  sched = schedules.warmup_cosine(lr, min(min_lr, lr), total,
                                  int(round(warmup_fraction * total)))
  lr_table = np.asarray(sched(jnp.arange(total)), np.float32)   # host lookup, no per-step op
  step_key = jax.random.key(seed)   # drop-path masks only (fold_in(step_key, t) in the step)
  t = 0
  train_loss, val_scores = [], []
  best, best_score, best_epoch = None, -np.inf, -1
  for epoch in range(epochs):
    losses = []
    for images, y in itertools.islice(train_batches(epoch), steps_per_epoch):
      params, opt_state, loss = trainer.step(
          params, opt_state, images, _labels(y, kind, num_classes),
          step_key, np.int32(t), lr_table[min(t, total - 1)])
      losses.append(loss)
      t += 1
    if not losses:
      raise ValueError(f"train_batches({epoch}) yielded no batch")
    train_loss.append(float(np.mean(jax.device_get(losses))))
    val = _evaluate(trainer, params, val_batches, kind, num_classes, metric)
    val_scores.append(val)
    if best is None or np.nan_to_num(val, nan=-1.0) > best_score:
      best, best_score, best_epoch = (jax.tree.map(jnp.copy, params),
                                      np.nan_to_num(val, nan=-1.0), epoch)
  return FinetuneResult(params=jax.device_get(best), lr=float(lr), metric=metric,
                        best_epoch=best_epoch, val_score=float(val_scores[best_epoch]),
                        train_loss=train_loss, val_scores=val_scores)


def _setup(encoder, encoder_params, kind, num_classes, metric, weight_decay, layer_decay,
           clip_grad_norm) -> tuple[_Trainer, str]:
  if kind not in linear.KINDS:
    raise ValueError(f"kind must be one of {linear.KINDS}, got {kind!r}")
  metric = linear.check_kind_metric(kind, metric or (
      "accuracy" if kind == "classification" else "micro_f1"))
  depth = encoder.dims["depth"]
  template = {"encoder": nn.meta.unbox(encoder_params),
              "head": {"kernel": np.zeros((2, 2)), "bias": np.zeros(2)}}  # structure only
  tx = finetune_transform(template, depth=depth, weight_decay=weight_decay,
                          layer_decay=layer_decay, clip_grad_norm=clip_grad_norm)
  return _Trainer(encoder, num_classes, kind, tx), metric


def finetune(encoder: nn.Module, encoder_params: Any,
             train_batches: Callable[[int], Iterable[Batch]],
             val_batches: Callable[[], Iterable[Batch]], *, kind: str, num_classes: int,
             lr: float, epochs: int, steps_per_epoch: int, weight_decay: float = 0.05,
             layer_decay: float | None = None, warmup_fraction: float = 0.1, seed: int = 0,
             min_lr: float = 1e-6, clip_grad_norm: float | None = 1.0,
             metric: str | None = None) -> FinetuneResult:
  """Fine-tune at one lr; validation after every epoch, the best epoch's params are returned.

  metric: "accuracy" (classification) or "micro_f1" (multilabel default, GEO-Bench) / "map".
  """
  trainer, metric = _setup(encoder, encoder_params, kind, num_classes, metric, weight_decay,
                           layer_decay, clip_grad_norm)
  return _run(trainer, encoder_params, train_batches, val_batches, kind=kind,
              num_classes=num_classes, lr=lr, epochs=epochs, steps_per_epoch=steps_per_epoch,
              warmup_fraction=warmup_fraction, min_lr=min_lr, seed=seed, metric=metric)


def finetune_sweep(encoder: nn.Module, encoder_params: Any,
                   train_batches: Callable[[int], Iterable[Batch]],
                   val_batches: Callable[[], Iterable[Batch]], *, lrs: Sequence[float] = FT_LRS,
                   kind: str, num_classes: int, epochs: int, steps_per_epoch: int,
                   weight_decay: float = 0.05, layer_decay: float | None = None,
                   warmup_fraction: float = 0.1, seed: int = 0, min_lr: float = 1e-6,
                   clip_grad_norm: float | None = 1.0,
                   metric: str | None = None) -> FinetuneSweepResult:
  """`finetune` at every lr (one compile); keeps the run with the best validation score (first on
  ties). Only the best run's params are held."""
  if not lrs:
    raise ValueError("lrs is empty")
  trainer, metric = _setup(encoder, encoder_params, kind, num_classes, metric, weight_decay,
                           layer_decay, clip_grad_norm)
  best, scores = None, {}
  for lr in lrs:
    res = _run(trainer, encoder_params, train_batches, val_batches, kind=kind,
               num_classes=num_classes, lr=float(lr), epochs=epochs,
               steps_per_epoch=steps_per_epoch, warmup_fraction=warmup_fraction, min_lr=min_lr,
               seed=seed, metric=metric)
    scores[float(lr)] = res.val_score
    if best is None or np.nan_to_num(res.val_score, nan=-1.0) > np.nan_to_num(best.val_score,
                                                                             nan=-1.0):
      best = res
  return FinetuneSweepResult(best=best, val_scores=scores)


def make_logits_fn(encoder: nn.Module) -> Callable[[Any, Mapping[str, np.ndarray]], np.ndarray]:
  """(params, images) -> (B, C) float32 numpy logits of fine-tuned params (for test sets), jitted;
  `linear.predictions_from_logits` turns them into classes or 0/1."""
  return lambda params, images: np.asarray(_eval_logits(encoder, params, images))
