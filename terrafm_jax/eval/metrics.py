"""Scores of the evaluation protocols (METHOD.md 7), numpy only, exact (no thresholds, no epsilons).

accuracy        top-1, GEO-Bench / Copernicus-Bench classification.
micro_f1        multi-label F1 pooled over all (sample, class) cells, GEO-Bench m-BigEarthNet
                (sklearn `f1_score(average="micro")`).
mean_average_precision
                macro mean over classes of the step-wise average precision (no interpolation),
                Copernicus-Bench BigEarthNet (torchmetrics `MultilabelAveragePrecision`, macro).
confusion_matrix / iou_from_confusion / mean_iou
                segmentation; pixels labelled `ignore_index` are dropped, and a class absent from
                both prediction and truth (union 0) has IoU nan and is left out of the mean (as the
                Galileo and mmseg evaluators do), so mIoU does not depend on how many unused
                classes a dataset declares.
"""
from __future__ import annotations

import numpy as np


def accuracy(pred: np.ndarray, target: np.ndarray) -> float:
  """Top-1 accuracy. `pred` is (n,) class indices or (n, C) scores (argmax taken)."""
  pred, target = np.asarray(pred), np.asarray(target)
  if pred.ndim == target.ndim + 1:
    pred = np.argmax(pred, axis=-1)
  if pred.shape != target.shape:
    raise ValueError(f"prediction shape {pred.shape} does not match target shape {target.shape}")
  if target.size == 0:
    raise ValueError("accuracy of an empty set")
  return float(np.mean(pred == target))


def _binary(x: np.ndarray, name: str) -> np.ndarray:
  x = np.asarray(x)
  if x.ndim != 2:
    raise ValueError(f"{name} must be (n, C) 0/1, got shape {x.shape}")
  if not np.all((x == 0) | (x == 1)):
    raise ValueError(f"{name} must hold only 0/1 values")
  return x.astype(bool)


def micro_f1(pred: np.ndarray, target: np.ndarray) -> float:
  """2 TP / (2 TP + FP + FN) over all (sample, class) cells of (n, C) 0/1 arrays.

  0.0 when there is nothing to count (no positive in either), as sklearn's default returns.
  """
  p, t = _binary(pred, "pred"), _binary(target, "target")
  if p.shape != t.shape:
    raise ValueError(f"prediction shape {p.shape} does not match target shape {t.shape}")
  tp = np.sum(p & t)
  denom = 2 * tp + np.sum(p & ~t) + np.sum(~p & t)
  return float(2 * tp / denom) if denom else 0.0


def average_precision(scores: np.ndarray, target: np.ndarray) -> float:
  """Binary AP = sum_k (R_k - R_{k-1}) P_k over the distinct score thresholds, descending.

  Tied scores form one threshold (sklearn / torchmetrics). nan when `target` has no positive.
  """
  s = np.asarray(scores, np.float64).ravel()
  y = np.asarray(target).ravel().astype(bool)
  if s.shape != y.shape:
    raise ValueError(f"{s.shape[0]} scores but {y.shape[0]} targets")
  num_pos = int(y.sum())
  if num_pos == 0:
    return float("nan")
  order = np.argsort(-s, kind="stable")
  s, y = s[order], y[order]
  last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]   # last index of each threshold group
  tps = np.cumsum(y)[last].astype(np.float64)
  precision = tps / (last + 1)
  recall = tps / num_pos
  return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def mean_average_precision(scores: np.ndarray, target: np.ndarray) -> float:
  """Macro mAP over classes of (n, C) scores vs (n, C) 0/1 targets.

  Classes without a positive target have no defined AP and are left out of the mean (torchmetrics
  macro drops their nan); raises if no class has a positive.
  """
  s = np.asarray(scores)
  t = _binary(target, "target")
  if s.shape != t.shape:
    raise ValueError(f"scores shape {s.shape} does not match target shape {t.shape}")
  aps = np.array([average_precision(s[:, c], t[:, c]) for c in range(t.shape[1])])
  if np.all(np.isnan(aps)):
    raise ValueError("mAP undefined: no class has a positive target")
  return float(np.nanmean(aps))


def confusion_matrix(pred: np.ndarray, target: np.ndarray, num_classes: int,
                     ignore_index: int | None = None) -> np.ndarray:
  """(C, C) int64 counts, rows = truth, columns = prediction; `ignore_index` pixels dropped."""
  pred = np.asarray(pred).ravel()
  target = np.asarray(target).ravel()
  if pred.shape != target.shape:
    raise ValueError(f"{pred.size} predictions but {target.size} targets")
  if ignore_index is not None:
    keep = target != ignore_index
    pred, target = pred[keep], target[keep]
  for name, v in (("target", target), ("pred", pred)):
    if v.size and (v.min() < 0 or v.max() >= num_classes):
      raise ValueError(f"{name} holds values outside [0, {num_classes}) "
                       f"(min {v.min()}, max {v.max()}); ignore_index={ignore_index}")
  idx = target.astype(np.int64) * num_classes + pred.astype(np.int64)
  return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def iou_from_confusion(conf: np.ndarray) -> np.ndarray:
  """(C,) IoU = TP / (TP + FP + FN); nan for a class absent from both prediction and truth."""
  conf = np.asarray(conf, np.float64)
  tp = np.diag(conf)
  union = conf.sum(0) + conf.sum(1) - tp
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(union > 0, tp / union, np.nan)


def mean_iou_from_confusion(conf: np.ndarray) -> float:
  """Mean IoU over the classes present in prediction or truth (nan if none: no valid pixel)."""
  iou = iou_from_confusion(conf)
  return float(np.nanmean(iou)) if np.any(~np.isnan(iou)) else float("nan")


def mean_iou(pred: np.ndarray, target: np.ndarray, num_classes: int,
             ignore_index: int | None = None) -> float:
  """mIoU of label maps (any equal shapes); see the module docstring for the exclusions."""
  return mean_iou_from_confusion(confusion_matrix(pred, target, num_classes, ignore_index))
