"""What every benchmark reader returns: one split of one task, read lazily sample by sample.

Readers (geobench.py, copernicus_*.py) know a benchmark's file layout and nothing about the model;
`bands.py` maps what they return into the stems through the input contract. The contract between
the two is this module:

  * `EvalSplit.inputs` names, per source group ("s2", "s1"), the bands in the order the channels of
    that group's array come, with canonical names ("B01" ... "B12", "B8A", "B10"; "VV", "VH") and
    the group's units (one of UNITS). A reader translates the benchmark's own band naming (GEO-Bench
    descriptors, a TIFF's documented order) into these names; it never reorders pixels itself.
  * `EvalSplit[i]` returns {group: (H, W, C) float32 in the group's units, "label": ..., "id": str}:
      - "classification": int class index in [0, num_classes);
      - "multilabel": (num_classes,) uint8 multi-hot vector;
      - "segmentation": (H, W) int32 class map; pixels equal to `ignore_index` are not scored.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

import numpy as np

KINDS = ("classification", "multilabel", "segmentation")
SPLITS = ("train", "val", "test")
# dn: S2 digital numbers (reflectance x 1e4, no +1000 offset); reflectance: S2 reflectance 0..1;
# db: S1 backscatter in dB; linear: S1 backscatter as linear power.
UNITS = ("dn", "reflectance", "db", "linear")


class EvalDataError(ValueError):
  """Bad benchmark input (missing split file, label out of range, wrong band count, disallowed
  pickle, empty partition, ...). The message always names the file."""


@dataclasses.dataclass(frozen=True)
class SourceGroup:
  """The bands of one source array, in channel order, and their units."""
  bands: tuple[str, ...]
  units: str

  def __post_init__(self):
    if self.units not in UNITS:
      raise ValueError(f"units must be one of {UNITS}, got {self.units!r}")


class EvalSplit:
  """Base class of a reader's split: subclasses set the attributes and implement _load(i)."""

  task: str                          # e.g. "geobench/m-eurosat"
  split: str                         # "train" | "val" | "test"
  partition: str                     # e.g. "default", "0.01x_train"
  kind: str                          # one of KINDS
  num_classes: int
  class_names: tuple[str, ...] = ()
  inputs: Mapping[str, SourceGroup]  # group name -> bands and units
  ignore_index: int | None = None    # segmentation pixels not scored
  root: str                          # the folder the split was read from (for messages)

  def __len__(self) -> int:
    raise NotImplementedError

  def _load(self, i: int) -> dict[str, Any]:
    raise NotImplementedError

  def __getitem__(self, i: int) -> dict[str, Any]:
    n = len(self)
    if not -n <= i < n:
      raise IndexError(f"{self.task} {self.split}: index {i} out of range for {n} samples")
    return self._load(i % n)

  def describe(self) -> str:
    groups = ", ".join(f"{g}: {len(s.bands)} bands ({s.units})" for g, s in self.inputs.items())
    return (f"{self.task} [{self.split}, partition {self.partition}]: {len(self)} samples, "
            f"{self.kind}, {self.num_classes} classes; {groups}; from {self.root}")


class Subset(EvalSplit):
  """The samples `indices` of a split, in that order (a seeded subset for config.max_samples, a
  shuffled epoch order for fine-tuning)."""

  def __init__(self, base: EvalSplit, indices: np.ndarray, partition: str | None = None):
    self._base = base
    self._idx = np.asarray(indices)
    for k in ("task", "split", "kind", "num_classes", "class_names", "inputs", "ignore_index",
              "root"):
      setattr(self, k, getattr(base, k, None))
    self.partition = partition or base.partition

  def __len__(self):
    return len(self._idx)

  def _load(self, i):
    return self._base[int(self._idx[i])]


def check_label(split: EvalSplit, label: Any, where: str) -> Any:
  """Validate one label against the split's kind and class count; EvalDataError naming `where`."""
  c = split.num_classes
  if split.kind == "classification":
    v = int(np.asarray(label).reshape(()))
    if not 0 <= v < c:
      raise EvalDataError(f"{where}: label {v} out of range [0, {c}) for {split.task}")
    return v
  if split.kind == "multilabel":
    v = np.asarray(label)
    if v.shape != (c,):
      raise EvalDataError(f"{where}: multi-label vector has shape {v.shape}, expected ({c},)")
    if not np.isin(v, (0, 1)).all():
      raise EvalDataError(f"{where}: multi-label vector holds values other than 0/1")
    return v.astype(np.uint8)
  v = np.asarray(label)
  if v.ndim != 2:
    raise EvalDataError(f"{where}: segmentation label has shape {v.shape}, expected (H, W)")
  v = v.astype(np.int32)
  valid = v if split.ignore_index is None else v[v != split.ignore_index]
  if valid.size and (valid.min() < 0 or valid.max() >= c):
    raise EvalDataError(f"{where}: segmentation label values {int(valid.min())}..{int(valid.max())}"
                        f" out of range [0, {c}) for {split.task}")
  return v


def resolve_root(root: str, split_file: str, folders: tuple[str, ...], task: str) -> str:
  """The dataset folder: `root` itself if it holds a split file, else the one of the child
  `folders` that does. `split_file` has one `{}` for the split name; `task` names the task in
  errors. Decided by split files so that a wrong folder fails here, not at the first sample.
  Shared by the readers (copernicus.py, copernicus_lcz.py)."""
  def holds_splits(d: str) -> bool:
    return any(os.path.isfile(os.path.join(d, split_file.format(s))) for s in SPLITS)
  if holds_splits(root):
    return root
  found = [os.path.join(root, f) for f in folders if holds_splits(os.path.join(root, f))]
  if len(found) > 1:
    raise EvalDataError(f"{root}: ambiguous dataset folder for {task}: {found}")
  if not found:
    names = split_file.format("{" + ",".join(SPLITS) + "}")
    raise EvalDataError(f"{root}: no {names} of {task} there nor in "
                        f"{', '.join(os.path.join(root, f) for f in folders)}")
  return found[0]
