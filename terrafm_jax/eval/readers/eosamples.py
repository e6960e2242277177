"""A real-pixel sanity task: the five TerraMesh / Major-TOM scenes in ../shared/eo_samples.

`terramind_majortom/{S1RTC,S2L1C,S2L2A,LULC}/<scene>.tif` are co-registered 224 x 224 scenes with a
land-cover raster (TerraMesh LULC, 10 class ids; not WorldCover). Each scene is cut into a grid of
`PATCH` x `PATCH` px patches labelled by their majority land-cover class ("lulc") or by the
land-cover map itself ("lulc-seg", a segmentation task). The split is spatial, so
neighbouring patches do not leak between train and test: patch columns 0-3 of every scene are the
training set (every fourth of them held out for validation), columns 4-6 the test set.

Units: S1 is dB already (float64 in the files). The S2 +1000 offset is inconsistent across these
files (even between the L1C and L2A of one scene, eo_samples README), so it is decided per file from
the data with the prepare stage's rule (data/harmonize.py, DATA.md 2.6) and removed.
It is a sanity check on real pixels, far too small to rank models.
"""
from __future__ import annotations

import functools
import os

import numpy as np

from terrafm_jax.data import harmonize, real_scenes
from terrafm_jax.eval.dataset import EvalDataError, EvalSplit, SourceGroup

PATCH = 32
NUM_CLASSES = 10
TRAIN_COLUMNS = 4
_GROUPS = {  # group -> (folder, band names in file order, units)
    "s1": ("S1RTC", ("VV", "VH"), "db"),
    "s2l1c": ("S2L1C", ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09",
                        "B10", "B11", "B12"), "dn"),
    "s2l2a": ("S2L2A", ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09",
                        "B11", "B12"), "dn"),
}


def default_root() -> str:
  return real_scenes.eo_samples_root()


@functools.lru_cache(maxsize=4)
def _scenes(folder: str) -> tuple[tuple[str, dict[str, np.ndarray], np.ndarray], ...]:
  import rasterio
  lulc_dir = os.path.join(folder, "LULC")
  if not os.path.isdir(lulc_dir):
    raise EvalDataError(f"{folder}: no LULC/ folder (expected terramind_majortom/ of eo_samples)")
  out = []
  for name in sorted(os.listdir(lulc_dir)):
    scene = os.path.splitext(name)[0]
    arrays = {}
    for group, (sub, bands, _) in _GROUPS.items():
      path = os.path.join(folder, sub, name)
      if not os.path.exists(path):
        raise EvalDataError(f"{path}: missing (every scene needs S1RTC, S2L1C, S2L2A and LULC)")
      with rasterio.open(path) as f:
        x = f.read().astype(np.float32)
      if x.shape[0] != len(bands):
        raise EvalDataError(f"{path}: {x.shape[0]} bands, expected {len(bands)} {bands}")
      if group != "s1" and harmonize.detect_offset(list(x)):
        x = harmonize.remove_offset(x).astype(np.float32)
      arrays[group] = np.moveaxis(x, 0, -1)
    with rasterio.open(os.path.join(lulc_dir, name)) as f:
      lulc = f.read(1).astype(np.int32)
    out.append((scene, arrays, lulc))
  return tuple(out)


class LulcPatches(EvalSplit):
  """Patch classification ("lulc", majority class) or segmentation ("lulc-seg", the class map)."""

  def __init__(self, root: str, split: str, segmentation: bool = False):
    folder = os.path.join(root, "terramind_majortom") if os.path.isdir(
        os.path.join(root, "terramind_majortom")) else root
    self.root, self.split, self.partition = folder, split, "default"
    self._segmentation = segmentation
    self.task = "eosamples/lulc-seg" if segmentation else "eosamples/lulc"
    self.kind = "segmentation" if segmentation else "classification"
    self.num_classes = NUM_CLASSES
    self.inputs = {g: SourceGroup(bands, units) for g, (_, bands, units) in _GROUPS.items()}
    self._scenes = _scenes(folder)
    self._index = []
    for s, (_, _, lulc) in enumerate(self._scenes):
      rows, cols = lulc.shape[0] // PATCH, lulc.shape[1] // PATCH
      for r in range(rows):
        for c in range(cols):
          in_train = c < TRAIN_COLUMNS
          k = r * TRAIN_COLUMNS + c
          which = ("val" if k % 4 == 3 else "train") if in_train else "test"
          if which == split:
            self._index.append((s, r, c))
    if not self._index:
      raise EvalDataError(f"{folder}: no {split} patches")

  def __len__(self) -> int:
    return len(self._index)

  def _load(self, i: int):
    s, r, c = self._index[i]
    scene, arrays, lulc = self._scenes[s]
    win = (slice(r * PATCH, (r + 1) * PATCH), slice(c * PATCH, (c + 1) * PATCH))
    if self._segmentation:
      label = lulc[win].copy()
    else:
      label = int(np.bincount(lulc[win].ravel(), minlength=NUM_CLASSES).argmax())
    out = {g: a[win] for g, a in arrays.items()}
    out.update(label=label, id=f"{scene}/r{r}c{c}")
    return out


def open_split(root: str | None, dataset: str, split: str, partition: str = "default"
               ) -> EvalSplit:
  if dataset not in ("lulc", "lulc-seg"):
    raise ValueError(f"eosamples has the datasets 'lulc' and 'lulc-seg', not {dataset!r}")
  if partition != "default":
    raise EvalDataError(f"{root}: eosamples/{dataset} has only the 'default' partition")
  return LulcPatches(root or default_root(), split, segmentation=dataset == "lulc-seg")
