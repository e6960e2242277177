"""Copernicus-Bench LCZ-S2 (So2Sat LCZ42 subset): lcz_{split}.h5, opened by copernicus.open_split.

Layout (torchgeo 0.8 `copernicus/lcz_s2.py`, Copernicus-Bench `cobench_lczs12_wrapper.py`): HDF5
datasets `sen2` [N, 32, 32, 10] channels-last (B02..B08, B8A, B11, B12), `sen1` [N, 32, 32, 8]
(unused) and `label` [N, 17] one-hot. `sen2` is float reflectance 0..~1 (So2Sat divides by 1e4;
the benchmark's yaml means are 0.10..0.26), so the units are "reflectance", not DN.
"""
from __future__ import annotations

import os
from typing import Any

import h5py
import numpy as np

from terrafm_jax.eval.dataset import (EvalDataError, EvalSplit, SourceGroup, check_label,
                                      resolve_root)

S2_LCZ_10 = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
LCZ_CLASSES = ("Compact high rise", "Compact mid rise", "Compact low rise", "Open high rise",
               "Open mid rise", "Open low rise", "Lightweight low rise", "Large low rise",
               "Sparsely built", "Heavy industry", "Dense trees", "Scattered trees", "Bush, scrub",
               "Low plants", "Bare rock or paved", "Bare soil or sand", "Water")
# Folder names the .h5 files are found under: HF repo path, the benchmark's data_path, ours.
LCZ_FOLDERS = ("l3_lcz_s2", "lcz_s1s2", "lcz_s2")
# Reflectance above this is a DN file mistaken for reflectance (So2Sat peaks at ~3).
_MAX_REFLECTANCE = 20.0


def open_lcz(root: str, split: str) -> EvalSplit:
  return LczSplit(root, split)


class LczSplit(EvalSplit):
  """Labels are decoded and checked at open time (N x 17 bytes); pixels are read per sample."""

  def __init__(self, root: str, split: str):
    self.task = "copernicus/lcz_s2"
    self.split = split
    self.partition = "default"
    self.kind = "classification"
    self.num_classes = len(LCZ_CLASSES)
    self.class_names = LCZ_CLASSES
    self.inputs = {"s2": SourceGroup(S2_LCZ_10, "reflectance")}
    self.ignore_index = None
    self.root = resolve_root(root, "lcz_{}.h5", LCZ_FOLDERS, self.task)
    self.path = os.path.join(self.root, f"lcz_{split}.h5")
    if not os.path.isfile(self.path):
      raise EvalDataError(f"{self.path}: missing split file of {self.task} [{split}]")
    with self._open() as f:
      for name in ("sen2", "label"):
        if name not in f:
          raise EvalDataError(f"{self.path}: no dataset {name!r} (has {sorted(f)})")
      try:
        shape, onehot = f["sen2"].shape, np.asarray(f["label"][()])
        first = f["sen2"][0] if shape and shape[0] else None
      except (OSError, ValueError) as e:
        raise EvalDataError(f"{self.path}: cannot read HDF5 ({e})") from e
    if len(shape) != 4 or shape[-1] != len(S2_LCZ_10):
      raise EvalDataError(f"{self.path}: sen2 has shape {shape}, expected (N, H, W, "
                          f"{len(S2_LCZ_10)}) channels-last")
    if onehot.ndim != 2 or onehot.shape[1] != self.num_classes or len(onehot) != shape[0]:
      raise EvalDataError(f"{self.path}: label has shape {onehot.shape}, expected "
                          f"({shape[0]}, {self.num_classes}) one-hot")
    if shape[0] == 0:
      raise EvalDataError(f"{self.path}: empty split of {self.task}")
    self.labels = self._decode(onehot)
    if np.nanmax(first) > _MAX_REFLECTANCE:
      raise EvalDataError(f"{self.path}: sen2 sample 0 peaks at {float(np.nanmax(first)):.0f}, "
                          "not reflectance 0..1 as Copernicus-Bench ships it")

  def _open(self) -> h5py.File:
    try:
      return h5py.File(self.path, "r")
    except OSError as e:
      raise EvalDataError(f"{self.path}: cannot read HDF5 ({e})") from e

  def _decode(self, onehot: np.ndarray) -> np.ndarray:
    """One-hot rows -> class indices; a row that is not exactly one-hot is an error."""
    bad = ~(np.isin(onehot, (0, 1)).all(axis=1) & (onehot.sum(axis=1) == 1))
    if bad.any():
      i = int(np.flatnonzero(bad)[0])
      raise EvalDataError(f"{self.path}: label row {i} is not one-hot: {onehot[i].tolist()}")
    return onehot.argmax(axis=1).astype(np.int64)

  def __len__(self) -> int:
    return len(self.labels)

  def _load(self, i: int) -> dict[str, Any]:
    # Opened per sample: a cached handle would not survive forked loader workers.
    with self._open() as f:
      try:
        x = np.asarray(f["sen2"][i], np.float32)
      except (OSError, ValueError) as e:
        raise EvalDataError(f"{self.path}: cannot read sen2[{i}] ({e})") from e
    label = check_label(self, self.labels[i], f"{self.path} row {i}")
    return {"s2": x, "label": label, "id": f"lcz_{self.split}_{i}"}
