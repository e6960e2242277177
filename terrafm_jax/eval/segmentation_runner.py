"""Segmentation protocols on cached frozen features: per-patch linear probe and UPerNet head.

seg_linear: Linear(d -> C p^2) on the last layer's patch tokens, p = ceil(label size / token grid)
(Galileo), so every label pixel has a logit. seg_upernet: the UPerNet-style head over the
intermediate layers the model config names (`out_indices`, 3/5/7/11 for B). Either is trained
with an lr sweep on validation mIoU (seg_train.fit_segmentation) and scored on the test split at
the label resolution. Features are loaded as float32 in host memory (B/16 at 256 px: about 0.8 MB
per sample for seg_linear, four times that for UPerNet).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from terrafm_jax.eval import metrics, seg_heads, seg_train


def _inputs(protocol: str, feats) -> Any:
  if protocol == "seg_linear":
    return np.asarray(feats.arrays["patch"], np.float32)
  layers = np.asarray(feats.arrays["layers"], np.float32)      # (N, L, h, w, d)
  if layers.shape[1] != 4:
    raise ValueError(f"the UPerNet head takes 4 intermediate layers, the features hold "
                     f"{layers.shape[1]} (model.out_indices)")
  return tuple(layers[:, i] for i in range(4))


def run(protocol: str, weights, splits, feats, cfg) -> tuple[float, np.ndarray, dict[str, Any]]:
  """(test mIoU in [0, 1], (N_test, H, W) predicted maps, details)."""
  del weights
  test = splits["test"]
  num_classes, ignore = test.num_classes, test.ignore_index
  tr, va, te = (_inputs(protocol, feats[k]) for k in ("train", "val", "test"))
  ytr, yva, yte = (np.asarray(feats[k].labels) for k in ("train", "val", "test"))
  sc = cfg.segmentation
  if protocol == "seg_linear":
    grid = tr.shape[1]
    head = seg_heads.PatchLinearHead(num_classes, patch_size=math.ceil(ytr.shape[1] / grid))
  else:
    head = seg_heads.UPerNetHead(num_classes, channels=sc.upernet_channels,
                                 aux_loss_weight=sc.upernet_aux_loss_weight,
                                 aux_channels=sc.upernet_aux_channels)
  res = seg_train.fit_segmentation(head, tr, ytr, va, yva, num_classes=num_classes, lrs=sc.lrs,
                                   epochs=sc.epochs, batch_size=sc.batch_size,
                                   weight_decay=sc.weight_decay, ignore_index=ignore,
                                   seed=cfg.seed)
  pred = seg_train.predict_segmentation(res, te, label_size=yte.shape[1:3],
                                        batch_size=sc.batch_size)
  value = metrics.mean_iou(pred, yte, num_classes, ignore)
  details = {"lr": res.lr, "val_miou": res.val_miou,
             "val_scores": {str(k): v for k, v in res.val_scores.items()},
             "epochs": sc.epochs}
  return value, pred, details
