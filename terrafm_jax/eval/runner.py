"""One (task, protocol, partition) evaluation: open the splits, get features, run the protocol.

Protocols are picked by name (PROTOCOLS in eval/tasks.py), as big_vision picks evaluators:
  knn          frozen CLS features, weighted k-NN (multi-label: per-class binary k-NN, micro-F1)
  linear       frozen CLS features, linear probe with an lr sweep on validation
  finetune     the whole encoder + a linear head on CLS, lr sweep on validation
  seg_linear   frozen patch tokens, per-patch Linear(d -> C p^2)
  seg_upernet  frozen intermediate layers (model.out_indices), UPerNet-style head
The score is on the test split, in percent. Features come from the on-disk cache when the same
(weights, task, split, partition, size) was extracted before.
"""
from __future__ import annotations

import os
from typing import Any

import ml_collections
import numpy as np
from absl import logging

from terrafm_jax.eval import features as features_lib
from terrafm_jax.eval import knn as knn_lib
from terrafm_jax.eval import metrics as metrics_lib
from terrafm_jax.eval.dataset import EvalSplit, Subset
from terrafm_jax.eval.results import Row, rgb_composite
from terrafm_jax.eval.tasks import (CLASSIFICATION_PROTOCOLS, PROTOCOLS, SEGMENTATION_PROTOCOLS,
                                    Task)
from terrafm_jax.eval.weights import Weights

_FEATURES = {"knn": "cls", "linear": "cls", "seg_linear": "patch", "seg_upernet": "layers"}


def check_protocol(task: Task, protocol: str) -> None:
  if protocol not in PROTOCOLS:
    raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
  seg = task.metric == "miou"
  if seg and protocol not in SEGMENTATION_PROTOCOLS:
    raise ValueError(f"{task.name} is a segmentation task: protocols {SEGMENTATION_PROTOCOLS}")
  if not seg and protocol not in CLASSIFICATION_PROTOCOLS:
    raise ValueError(f"{task.name} is a classification task: protocols "
                     f"{CLASSIFICATION_PROTOCOLS}")


def open_splits(task: Task, root: str, partition: str, cfg) -> dict[str, EvalSplit]:
  out = {}
  for name in ("train", "val", "test"):
    s = task.open(root, name, partition)
    if cfg.max_samples > 0 and len(s) > cfg.max_samples:
      keep = np.sort(np.random.default_rng(cfg.seed).permutation(len(s))[:cfg.max_samples])
      s = Subset(s, keep, f"{s.partition}[{cfg.max_samples}]")
    logging.info("%s", s.describe())
    out[name] = s
  return out


def _features(weights, splits, task, what, cfg, progress):
  # No cache for in-loop evaluation (config.cache_dir = "none"): the weights change every time.
  cache = None if cfg.cache_dir == "none" else (
      cfg.cache_dir or os.path.join(cfg.out_dir, "feature_cache"))
  size = cfg.input_size if cfg.input_size > 0 else task.input_size
  return {name: features_lib.extract(weights, s, task.stems, input_size=size, what=(what,),
                                     batch_size=cfg.batch_size, cache_dir=cache,
                                     progress=progress)
          for name, s in splits.items()}


def _score_classification(task, kind, num_classes, pred, scores, y) -> tuple[float, Any]:
  """(value in [0, 1], confusion or None) by the task's metric."""
  if task.metric == "accuracy":
    return metrics_lib.accuracy(pred, y), metrics_lib.confusion_matrix(pred, y, num_classes)
  if task.metric == "micro_f1":
    return metrics_lib.micro_f1(pred, y), None
  if task.metric == "map":
    if scores is None:
      raise ValueError(f"{task.name}: mAP needs scores; k-NN gives hard votes (use linear)")
    return metrics_lib.mean_average_precision(scores, y), None
  raise ValueError(f"metric {task.metric!r} is not a classification metric")


def run(task: Task, protocol: str, weights: Weights, root: str,
        cfg: ml_collections.ConfigDict, *, partition: str = "default",
        progress: bool = True, splits: dict[str, EvalSplit] | None = None) -> Row:
  """`splits`: already opened splits (in-loop evaluation opens them once per run)."""
  check_protocol(task, protocol)
  splits = splits or open_splits(task, root, partition, cfg)
  test = splits["test"]
  kind, num_classes = test.kind, test.num_classes
  details: dict[str, Any] = {"num_samples": {k: len(v) for k, v in splits.items()}}
  confusion = example = None
  if protocol in ("knn", "linear"):
    feats = _features(weights, splits, task, "cls", cfg, progress)
    tr, va, te = feats["train"], feats["val"], feats["test"]
    details["input_size"] = te.meta["input_size"]
    scores = None
    if protocol == "knn":
      if kind == "multilabel":
        pred = knn_lib.knn_predict_multilabel(tr.arrays["cls"], tr.labels, te.arrays["cls"],
                                              cfg.knn.k, cfg.knn.temperature)
      else:
        pred = knn_lib.knn_predict(tr.arrays["cls"], tr.labels, te.arrays["cls"], num_classes,
                                   cfg.knn.k, cfg.knn.temperature)
      details.update(k=cfg.knn.k, temperature=cfg.knn.temperature)
    else:
      from terrafm_jax.eval import linear as linear_lib
      metric = task.metric if task.metric in ("accuracy", "micro_f1", "map") else None
      res = linear_lib.fit_linear(tr.arrays["cls"], tr.labels, va.arrays["cls"], va.labels,
                                  kind=kind, num_classes=num_classes, lrs=cfg.linear.lrs,
                                  epochs=cfg.linear.epochs, batch_size=cfg.linear.batch_size,
                                  weight_decay=cfg.linear.weight_decay, seed=cfg.seed,
                                  metric=metric)
      scores = linear_lib.linear_logits(res, te.arrays["cls"])
      pred = linear_lib.predict_linear(res, te.arrays["cls"])
      details.update(lr=res.lr, val_score=res.val_score,
                     val_scores={str(k): v for k, v in res.val_scores.items()})
    value, confusion = _score_classification(task, kind, num_classes, pred, scores, te.labels)
  elif protocol == "finetune":
    from terrafm_jax.eval import finetune_runner
    value, confusion, more = finetune_runner.run(task, weights, splits, cfg, progress)
    details.update(more)
  else:
    from terrafm_jax.eval import segmentation_runner
    what = _FEATURES[protocol]
    feats = _features(weights, splits, task, what, cfg, progress)
    value, pred_maps, more = segmentation_runner.run(protocol, weights, splits, feats, cfg)
    details.update(more)
    sample = test[0]
    example = {"rgb": rgb_composite(sample, test.inputs), "truth": np.asarray(sample["label"]),
               "pred": pred_maps[0]}
  return Row(task=task.name, protocol=protocol, partition=partition, metric=task.metric,
             value=100.0 * float(value), published=task.published.get(f"{protocol}@{partition}"),
             provenance=dict(weights.provenance), seed=cfg.seed, details=details,
             confusion=confusion, example=example)
