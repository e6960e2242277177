"""The fine-tuning protocol on a benchmark split: stream batches, sweep lrs, score the test split.

Batches come from the same reader -> band table -> Grain path as feature extraction
(features.model_batches); the training order is reshuffled every epoch from (seed, epoch) and the
last partial batch is dropped (one compiled shape); validation and test use every sample. Inputs
whose size is not a multiple of the patch are resized (bilinear) to the task's input size, as for
the frozen protocols.
"""
from __future__ import annotations

from typing import Any

import jax
import numpy as np

from terrafm_jax.eval import bands as bands_lib
from terrafm_jax.eval import finetune as finetune_lib
from terrafm_jax.eval import linear as linear_lib
from terrafm_jax.eval import metrics as metrics_lib
from terrafm_jax.eval.dataset import Subset
from terrafm_jax.eval.features import input_size_for, model_batches


def _resizer(size: int):
  @jax.jit
  def resize(x):
    return jax.image.resize(x, (x.shape[0], size, size, x.shape[3]), "bilinear", antialias=False)
  return resize


def run(task, weights, splits, cfg, progress: bool = True
        ) -> tuple[float, np.ndarray | None, dict[str, Any]]:
  """(test score in [0, 1] by the task's metric, confusion matrix or None, details)."""
  del progress
  train, val, test = splits["train"], splits["val"], splits["test"]
  kind, num_classes = test.kind, test.num_classes
  plans = bands_lib.plan(tuple(task.stems), train.inputs, weights.contract, train.root)
  encoder = weights.encoder()
  native = train[0][plans[0].group].shape[0]
  size = input_size_for(native, encoder.dims["patch_size"],
                        cfg.input_size if cfg.input_size > 0 else task.input_size)
  resize = _resizer(size)
  batch = min(cfg.batch_size, len(train))

  def fit(x):
    return {m: (np.asarray(resize(v)) if v.shape[1] != size else v) for m, v in x.items()}

  def train_batches(epoch):
    order = np.random.default_rng([cfg.seed, epoch]).permutation(len(train))
    for x, y, n in model_batches(Subset(train, order), plans, weights.contract, batch):
      if n == batch:
        yield fit(x), y

  def eval_batches(split):
    for x, y, n in model_batches(split, plans, weights.contract, batch):
      yield fit({m: v[:n] for m, v in x.items()}), y

  fc = cfg.finetune
  metric = task.metric if task.metric in ("accuracy", "micro_f1", "map") else None
  sweep = finetune_lib.finetune_sweep(
      encoder, weights.params, train_batches, lambda: eval_batches(val), lrs=fc.lrs, kind=kind,
      num_classes=num_classes, epochs=fc.epochs, steps_per_epoch=max(1, len(train) // batch),
      weight_decay=fc.weight_decay, layer_decay=fc.layer_decay,
      warmup_fraction=fc.warmup_fraction, seed=cfg.seed, metric=metric)
  logits_fn = finetune_lib.make_logits_fn(encoder)
  logits, labels = [], []
  for x, y in eval_batches(test):
    logits.append(logits_fn(sweep.best.params, x))
    labels.append(y)
  logits, labels = np.concatenate(logits), np.concatenate(labels)
  pred = linear_lib.predictions_from_logits(logits, kind)
  confusion = None
  if task.metric == "accuracy":
    value = metrics_lib.accuracy(pred, labels)
    confusion = metrics_lib.confusion_matrix(pred, labels, num_classes)
  elif task.metric == "micro_f1":
    value = metrics_lib.micro_f1(pred, labels)
  else:
    value = metrics_lib.mean_average_precision(logits, labels)
  details = {"lr": sweep.best.lr, "best_epoch": sweep.best.best_epoch,
             "val_score": sweep.best.val_score,
             "val_scores": {str(k): v for k, v in sweep.val_scores.items()},
             "epochs": fc.epochs, "layer_decay": fc.layer_decay, "input_size": size}
  return value, confusion, details
