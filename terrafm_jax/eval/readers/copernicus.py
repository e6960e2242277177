"""Copernicus-Bench readers for the S1/S2 tasks (DATA.md 5): `open_split(root, task, split)`.

Layouts, split files, band orders and label codings follow the benchmark as shipped on HF
`wangyi111/Copernicus-Bench` (torchgeo 0.8 `datasets/copernicus/*.py`, Copernicus-FM
`Copernicus-Bench/src/datasets/*` and `configs/dataset/cobench_*.yaml`):

  eurosat_s{1,2}     eurosat_s{1,2}/all_imgs/<Class>/<Class>_<n>.tif; eurosat-{split}.txt lists
                     `<Class>_<n>.jpg` (read as .tif); S2 TIFFs keep B8A LAST (13 bands).
  bigearthnet_s{1,2} bigearthnet_s1s2/BigEarthNet-{S1,S2}-5%/<relative path>;
                     multilabel-{split}.csv has a header: s1_path, s2_path, 19 label columns (0/1).
  dfc2020_s{1,2}     dfc2020_s1s2/{s1,s2,dfc}/; dfc-{split}-new.csv lists label files
                     ROIs*_dfc_*.tif, the image has "dfc" -> "s1"/"s2" in its name. Labels 1..10
                     (IGBP-simplified) are remapped as the benchmark does to 8 classes; 0, 3
                     (savanna) and 8 (snow) -> 255.
  cloud_s2           cloud_s2/{s2_toa,cloud}/<name>.tif; {split}.csv lists <name> without extension.
  lcz_s2             lcz_{split}.h5 (copernicus_lcz.py).

The reader never reorders pixels: `inputs` names the channels in file order (bands.py selects by
name). Samples are read lazily; every bad input is one EvalDataError naming the file.
"""
from __future__ import annotations

import csv
import dataclasses
import os
from typing import Any

import numpy as np
import rasterio
import rasterio.errors

from terrafm_jax.eval.dataset import (SPLITS, EvalDataError, EvalSplit, SourceGroup, check_label,
                                      resolve_root)

S2_L1C_13 = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11",
             "B12")
# EuroSAT-MS TIFF order: B8A after B12 (torchgeo all_bands; the benchmark's wrapper reads B8A as
# file band 13 and only re-sorts by name to match its yaml).
S2_EUROSAT_13 = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11", "B12",
                 "B8A")
S2_L2A_12 = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
S1_VV_VH = ("VV", "VH")

EUROSAT_CLASSES = ("AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial",
                   "Pasture", "PermanentCrop", "Residential", "River", "SeaLake")  # sorted, as CB
DFC_CLASSES = ("Forest", "Shrubland", "Grassland", "Wetland", "Cropland", "Urban/Built-up",
               "Barren", "Water")
CLOUD_CLASSES = ("Clear", "Thick Cloud", "Thin Cloud", "Cloud Shadow")
DFC_IGNORE = 255
# Raw DFC2020 code (index) -> benchmark class; savanna and snow/ice are absent from the data.
_DFC_REMAP = np.array([255, 0, 1, 255, 2, 3, 4, 5, 255, 6, 7], np.int32)
BEN_NUM_LABELS = 19


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """What one Copernicus-Bench task is: its folder, split files, bands, units and labels."""
  name: str
  folders: tuple[str, ...]       # where the dataset folder may sit below a parent root
  split_file: str                # split file name, "{}" = split
  kind: str
  num_classes: int
  group: str                     # "s1" | "s2"
  bands: tuple[str, ...]
  units: str
  class_names: tuple[str, ...] = ()
  ignore_index: int | None = None


def _folders(hf_dir: str, name: str) -> tuple[str, ...]:
  """The zip's folder directly below the root, or below its HF repo directory (l2_eurosat_s1s2/)."""
  return (name, os.path.join(hf_dir, name))


_EUROSAT, _BEN, _DFC = "l2_eurosat_s1s2", "l2_bigearthnet_s1s2", "l2_dfc2020_s1s2"
_SPECS = {s.name: s for s in (
    TaskSpec("eurosat_s1", _folders(_EUROSAT, "eurosat_s1"), "eurosat-{}.txt", "classification",
             10, "s1", S1_VV_VH, "db", EUROSAT_CLASSES),
    TaskSpec("eurosat_s2", _folders(_EUROSAT, "eurosat_s2"), "eurosat-{}.txt", "classification",
             10, "s2", S2_EUROSAT_13, "dn", EUROSAT_CLASSES),
    TaskSpec("bigearthnet_s1", _folders(_BEN, "bigearthnet_s1s2"), "multilabel-{}.csv",
             "multilabel", BEN_NUM_LABELS, "s1", S1_VV_VH, "db"),
    TaskSpec("bigearthnet_s2", _folders(_BEN, "bigearthnet_s1s2"), "multilabel-{}.csv",
             "multilabel", BEN_NUM_LABELS, "s2", S2_L2A_12, "dn"),
    TaskSpec("dfc2020_s1", _folders(_DFC, "dfc2020_s1s2"), "dfc-{}-new.csv", "segmentation", 8,
             "s1", S1_VV_VH, "db", DFC_CLASSES, DFC_IGNORE),
    TaskSpec("dfc2020_s2", _folders(_DFC, "dfc2020_s1s2"), "dfc-{}-new.csv", "segmentation", 8,
             "s2", S2_L1C_13, "dn", DFC_CLASSES, DFC_IGNORE),
    TaskSpec("cloud_s2", _folders("l1_cloud_s2", "cloud_s2"), "{}.csv", "segmentation", 4, "s2",
             S2_L1C_13, "dn", CLOUD_CLASSES),
)}
TASK_NAMES = tuple(_SPECS) + ("lcz_s2",)
PARTITIONS = ("default",)


def open_split(root: str, task: str, split: str, partition: str = "default") -> EvalSplit:
  """One split of a Copernicus-Bench task. `root` is the unzipped dataset folder, or a folder
  holding it (directly or in the HF repo's l*_ directory), e.g. one root for all tasks."""
  if task not in TASK_NAMES:
    raise EvalDataError(f"{root}: unknown Copernicus-Bench task {task!r}; known: {TASK_NAMES}")
  if split not in SPLITS:
    raise EvalDataError(f"{root}: unknown split {split!r} for copernicus/{task}; known: {SPLITS}")
  if partition not in PARTITIONS:
    raise EvalDataError(f"{root}: copernicus/{task} has no partition {partition!r}; "
                        f"partitions that exist: {PARTITIONS}")
  if task == "lcz_s2":
    from terrafm_jax.eval.readers import copernicus_lcz  # h5py only where needed
    return copernicus_lcz.open_lcz(root, split)
  return TiffSplit(_SPECS[task], root, split)


def read_tiff(path: str, count: int, task: str) -> np.ndarray:
  """All bands of a GeoTIFF as (H, W, C) float32; checks the band count."""
  try:
    with rasterio.open(path) as src:
      if src.count != count:
        raise EvalDataError(f"{path}: {src.count} bands, copernicus/{task} expects {count}")
      x = src.read()
  except (rasterio.errors.RasterioError, OSError) as e:
    raise EvalDataError(f"{path}: cannot read GeoTIFF ({e})") from e
  return np.moveaxis(x, 0, -1).astype(np.float32)


def read_mask(path: str) -> np.ndarray:
  """Band 1 of a label GeoTIFF as (H, W) int64 (raw codes; remapping is the caller's)."""
  try:
    with rasterio.open(path) as src:
      return src.read(1).astype(np.int64)
  except (rasterio.errors.RasterioError, OSError) as e:
    raise EvalDataError(f"{path}: cannot read label GeoTIFF ({e})") from e


def _lines(path: str) -> list[str]:
  with open(path, encoding="utf-8") as f:
    return [ln.strip() for ln in f if ln.strip()]


@dataclasses.dataclass(frozen=True)
class _Entry:
  id: str
  image: str
  label: Any                     # class index, multi-hot vector, or the mask path


class TiffSplit(EvalSplit):
  """A GeoTIFF-based Copernicus-Bench split: the entries are listed and checked at open time,
  the pixels read on access."""

  def __init__(self, spec: TaskSpec, root: str, split: str):
    self.spec = spec
    self.task = f"copernicus/{spec.name}"
    self.split = split
    self.partition = "default"
    self.kind = spec.kind
    self.num_classes = spec.num_classes
    self.class_names = spec.class_names
    self.inputs = {spec.group: SourceGroup(spec.bands, spec.units)}
    self.ignore_index = spec.ignore_index
    self.root = resolve_root(root, spec.split_file, spec.folders, self.task)
    self.split_path = os.path.join(self.root, spec.split_file.format(split))
    if not os.path.isfile(self.split_path):
      raise EvalDataError(f"{self.split_path}: missing split file of {self.task} [{split}]")
    parse = {"eurosat": self._parse_eurosat, "bigearthnet": self._parse_bigearthnet,
             "dfc2020": self._parse_dfc, "cloud": self._parse_cloud}[spec.name.split("_")[0]]
    self.entries = parse()
    if not self.entries:
      raise EvalDataError(f"{self.split_path}: empty split of {self.task}")
    self._check_files()
    # One header read, so a folder of the wrong modality fails at open time.
    read_tiff(self.entries[0].image, len(spec.bands), spec.name)

  def __len__(self) -> int:
    return len(self.entries)

  # Split files ----------------------------------------------------------------------------------

  def _parse_eurosat(self) -> list[_Entry]:
    out = []
    for line in _lines(self.split_path):
      stem = os.path.splitext(line)[0]
      cls = stem.split("_")[0]
      if cls not in EUROSAT_CLASSES:
        raise EvalDataError(f"{self.split_path}: {line!r} names unknown class {cls!r}; "
                            f"known: {EUROSAT_CLASSES}")
      label = check_label(self, EUROSAT_CLASSES.index(cls), self.split_path)
      out.append(_Entry(stem, os.path.join(self.root, "all_imgs", cls, stem + ".tif"), label))
    return out

  def _parse_bigearthnet(self) -> list[_Entry]:
    col, folder = (0, "BigEarthNet-S1-5%") if self.spec.group == "s1" else (1, "BigEarthNet-S2-5%")
    with open(self.split_path, newline="", encoding="utf-8") as f:
      rows = [r for r in csv.reader(f) if r]
    if not rows:
      return []
    header, rows = rows[0], rows[1:]
    width = 2 + BEN_NUM_LABELS
    if len(header) != width:
      raise EvalDataError(f"{self.split_path}: header has {len(header)} columns, expected {width} "
                          "(s1_path, s2_path, 19 labels)")
    self.class_names = tuple(header[2:])
    out = []
    for n, row in enumerate(rows, start=2):
      where = f"{self.split_path} line {n}"
      if len(row) != width:
        raise EvalDataError(f"{where}: {len(row)} columns, expected {width}")
      try:
        vec = np.array([float(v) for v in row[2:]])   # check_label refuses all but 0/1
      except ValueError as e:
        raise EvalDataError(f"{where}: non-numeric label ({e})") from e
      rel = row[col].strip()
      stem = os.path.splitext(os.path.basename(rel))[0]
      out.append(_Entry(stem, os.path.join(self.root, folder, rel), check_label(self, vec, where)))
    return out

  def _parse_dfc(self) -> list[_Entry]:
    mod = self.spec.group
    return [_Entry(os.path.splitext(name)[0],
                   os.path.join(self.root, mod, name.replace("dfc", mod)),
                   os.path.join(self.root, "dfc", name)) for name in _lines(self.split_path)]

  def _parse_cloud(self) -> list[_Entry]:
    return [_Entry(name, os.path.join(self.root, "s2_toa", name + ".tif"),
                   os.path.join(self.root, "cloud", name + ".tif"))
            for name in _lines(self.split_path)]

  def _check_files(self) -> None:
    paths = [e.image for e in self.entries]
    if self.kind == "segmentation":
      paths += [e.label for e in self.entries]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
      raise EvalDataError(f"{self.split_path} names {len(missing)} missing file(s), first: "
                          f"{missing[0]}")

  # Samples --------------------------------------------------------------------------------------

  def _load(self, i: int) -> dict[str, Any]:
    e = self.entries[i]
    x = read_tiff(e.image, len(self.spec.bands), self.spec.name)
    label = e.label
    if self.kind == "segmentation":
      label = self._load_mask(e.label, x.shape[:2])
    return {self.spec.group: x, "label": label, "id": e.id}

  def _load_mask(self, path: str, hw: tuple[int, ...]) -> np.ndarray:
    raw = read_mask(path)
    if raw.shape != hw:
      raise EvalDataError(f"{path}: label is {raw.shape}, the image is {hw}")
    if self.spec.name.startswith("dfc2020"):
      bad = (raw < 0) | (raw >= len(_DFC_REMAP))
      if bad.any():
        raise EvalDataError(f"{path}: DFC2020 label codes {sorted(set(raw[bad].tolist()))[:5]} "
                            f"outside 0..{len(_DFC_REMAP) - 1}")
      raw = _DFC_REMAP[raw]
    return check_label(self, raw, path)
