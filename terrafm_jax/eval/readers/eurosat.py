"""EuroSAT MS (Helber et al. 2019) in its own download format: one 13-band GeoTIFF per image.

Layout: `<root>/<Class>/<Class>_<n>.tif`, optionally under `train/` and `test/` folders (the
subset in ../shared/eo_samples/eurosat_ms_subset has them; the full 27,000-image download has
none). Each file is 64 x 64 px at 10 m, uint16 Sentinel-2 L1C DN acquired 2015-2017 (before
processing baseline 04.00: no +1000 offset), bands in EuroSAT's own order, **B8A last**:
B01 B02 B03 B04 B05 B06 B07 B08 B09 B10 B11 B12 B8A. The reader names the bands in that order and
never reorders pixels; the task's band table (eval/tasks.py) maps them onto the L1C stem by name
and drops B10 (eval/bands.py).

Splits: "train" / "test" read those folders; "all" reads every image (both folders, or the flat
layout). "val" is every fifth image of "train", so the linear probe has a validation set.
"""
from __future__ import annotations

import functools
import os
import re

import numpy as np

from terrafm_jax.eval.readers import eosamples
from terrafm_jax.eval.dataset import EvalDataError, EvalSplit, SourceGroup

# EuroSAT's band order in the .tif files (the data set's documentation; B8A is the 13th band).
BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11", "B12", "B8A")
CLASSES = ("AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture",
           "PermanentCrop", "Residential", "River", "SeaLake")
SPLITS = ("train", "val", "test", "all")
_NAME = re.compile(r"^(?P<cls>[A-Za-z]+)_(?P<n>\d+)\.tif$")


def default_root() -> str:
  """The evaluation subset in the eo_samples folder (eval/readers/eosamples.py's default_root)."""
  return os.path.join(eosamples.default_root(), "eurosat_ms_subset")


def _class_folder(folder: str) -> list[tuple[str, int]]:
  """(path, label) of every image under `folder`/<Class>/; EvalDataError naming the bad path."""
  out = []
  for cls in sorted(os.listdir(folder)):
    sub = os.path.join(folder, cls)
    if not os.path.isdir(sub):
      continue
    if cls not in CLASSES:
      raise EvalDataError(f"{sub}: not a EuroSAT class folder (expected one of {CLASSES})")
    for name in sorted(os.listdir(sub), key=_natural):
      path = os.path.join(sub, name)
      m = _NAME.match(name)
      if m is None or m["cls"] != cls:
        raise EvalDataError(f"{path}: expected a file named {cls}_<n>.tif in the {cls} folder")
      out.append((path, CLASSES.index(cls)))
  return out


def _natural(name: str) -> tuple[str, int]:
  m = re.search(r"(\d+)", name)
  return (name[:m.start()] if m else name, int(m[1]) if m else -1)


@functools.lru_cache(maxsize=8)
def index(root: str, split: str) -> tuple[tuple[str, int], ...]:
  """The (path, label) list of one split, in a fixed order (class, then image number)."""
  if split not in SPLITS:
    raise ValueError(f"EuroSAT split must be one of {SPLITS}, got {split!r}")
  if not os.path.isdir(root):
    raise EvalDataError(f"{root}: no such EuroSAT folder")
  has_splits = os.path.isdir(os.path.join(root, "train"))
  if split in ("train", "val", "test") and not has_splits:
    raise EvalDataError(f"{root}: no train/ and test/ folders; this layout has only split 'all'")
  if split == "all":
    items = (_class_folder(os.path.join(root, "train")) + _class_folder(os.path.join(root, "test"))
             if has_splits else _class_folder(root))
  else:
    items = _class_folder(os.path.join(root, "test" if split == "test" else "train"))
    if split != "test":
      items = [it for i, it in enumerate(items) if (i % 5 == 4) == (split == "val")]
  if not items:
    raise EvalDataError(f"{root}: no EuroSAT images for split {split!r}")
  return tuple(items)


def read_image(path: str) -> np.ndarray:
  """(64, 64, 13) float32 DN, channels in EuroSAT's band order; EvalDataError naming the file."""
  import rasterio
  try:
    with rasterio.open(path) as f:
      x = f.read()
  except rasterio.errors.RasterioError as err:
    raise EvalDataError(f"{path}: not a readable GeoTIFF ({err})") from err
  if x.shape[0] != len(BANDS):
    raise EvalDataError(f"{path}: {x.shape[0]} bands, expected EuroSAT MS's 13 {BANDS}")
  return np.moveaxis(x, 0, -1).astype(np.float32)


def read_all(root: str, split: str = "all") -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
  """(N, H, W, 13) float32 DN, (N,) int labels and the file paths of one split, in one go."""
  items = index(os.path.abspath(root), split)
  images = [read_image(p) for p, _ in items]
  for (path, _), x in zip(items, images):
    if x.shape != images[0].shape:
      raise EvalDataError(f"{path}: {x.shape[0]} x {x.shape[1]} px, but {items[0][0]} has "
                          f"{images[0].shape[0]} x {images[0].shape[1]} (one size per folder)")
  images = np.stack(images)
  return images, np.asarray([y for _, y in items], np.int64), tuple(p for p, _ in items)


class EuroSATSplit(EvalSplit):
  """One split as an EvalSplit: source group "s2" (13 bands, DN), label = class index."""

  def __init__(self, root: str, split: str):
    self.root = os.path.abspath(root)
    self.task, self.split, self.partition = "eurosat/ms", split, "default"
    self.kind, self.num_classes, self.class_names = "classification", len(CLASSES), CLASSES
    self.inputs = {"s2": SourceGroup(BANDS, "dn")}
    self._items = index(self.root, split)

  def __len__(self) -> int:
    return len(self._items)

  def _load(self, i: int):
    path, label = self._items[i]
    return {"s2": read_image(path), "label": label, "id": os.path.relpath(path, self.root)}


def open_split(root: str | None, dataset: str, split: str, partition: str = "default"
               ) -> EvalSplit:
  if dataset != "ms":
    raise ValueError(f"eurosat has the dataset 'ms' (13-band EuroSAT MS), not {dataset!r}")
  if partition != "default":
    raise EvalDataError(f"{root}: eurosat/ms has only the 'default' partition")
  return EuroSATSplit(root or default_root(), split)
