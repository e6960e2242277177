"""GEO-Bench v1 reader: one split of one task, read lazily from the package's own HDF5 layout.

Layout (geobench 1.0, `write_sample_hdf5`; DATA.md 4):

  <GEO_BENCH_DIR>/{classification_v1.0,segmentation_v1.0}/<dataset>/
    task_specs.pkl  <name>_partition.json ("default", "0.01x_train", ...)  <sample>.hdf5 ...

A partition JSON maps "train" / "valid" / "test" to sample names. A sample holds one h5 dataset per
band, named by its descriptor (`BandInfo.name`, plus "_<date>" when the band has a date), a dataset
"label" for segmentation, and attrs["pickle"] = repr of a pickled dict: per-band attrs (band_info,
date, transform, crs, ...), "bands_order", and "label" for (multi-label) classification. Pickles go
through the allow-list in safe_pickle.py; geobench itself is never imported.

Bands are identified by `band_info.name`, never by position, and translated to canonical names:
Sentinel2 descriptors ("01 - Coastal aerosol" ... "08A - Vegetation Red Edge" ... "12 - SWIR") to
B01..B12 / B8A / B10. Sentinel-1 exists only in m-so2sat, as 8 So2Sat LCZ42 channels: group "s1"
is (VH, VV) = "05 - VH.LEE Filtered", "06 - VV.LEE Filtered", the Lee-filtered intensities (linear
power); left out are the unfiltered VH / VV real and imaginary parts (01-04) and the real /
imaginary parts of the Lee-filtered covariance off-diagonal element (07, 08; S1_DESCRIPTORS).
Other bands (the "Cloud Probability" band of m-cashew-plantation and m-SA-crop-type) are read past
too; `GeoBenchSplit.skipped_bands` lists every band left out. Channel order is the task's
`bands_info` order, whatever the order of the datasets in a file.

GEO-Bench's format lets bands of one sample differ in size (`task_specs.patch_size` is "the largest
band's", `Sample.pack_to_4d(resample=True)`); the v1.0 converters store every band on one grid, but
if a sample does not, its bands are resampled to the largest with the data pipeline's bilinear
resampler (pixel centres aligned, data/harmonize.py). A segmentation map is never resampled: it must match that grid.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
from typing import Any, Mapping

import h5py
import numpy as np

from terrafm_jax.data import harmonize
from terrafm_jax.eval import safe_pickle
from terrafm_jax.eval.dataset import SPLITS, EvalDataError, EvalSplit, SourceGroup, check_label


@dataclasses.dataclass(frozen=True)
class TaskInfo:
  """What the files do not say: where a task lives, its S2 units, and the label kind to expect."""
  benchmark: str
  kind: str
  s2_units: str
  folders: tuple[str, ...]  # folder names seen for the task, first the documented one


TASKS: Mapping[str, TaskInfo] = {
    "m-eurosat": TaskInfo("classification_v1.0", "classification", "dn", ("m-eurosat",)),
    "m-bigearthnet": TaskInfo("classification_v1.0", "multilabel", "dn", ("m-bigearthnet",)),
    # So2Sat LCZ42 stores S2 as float reflectance (DN / 1e4), kept as is by geobench's converter.
    "m-so2sat": TaskInfo("classification_v1.0", "classification", "reflectance", ("m-so2sat",)),
    "m-brick-kiln": TaskInfo("classification_v1.0", "classification", "dn", ("m-brick-kiln",)),
    # The published zip unpacks to "m-cashew-plant".
    "m-cashew-plantation": TaskInfo("segmentation_v1.0", "segmentation", "dn",
                                    ("m-cashew-plantation", "m-cashew-plant")),
    "m-SA-crop-type": TaskInfo("segmentation_v1.0", "segmentation", "dn", ("m-SA-crop-type",)),
}

# geobench.dataset.sentinel2_13_bands names -> canonical names.
S2_DESCRIPTORS: Mapping[str, str] = {
    "01 - Coastal aerosol": "B01", "02 - Blue": "B02", "03 - Green": "B03", "04 - Red": "B04",
    "05 - Vegetation Red Edge": "B05", "06 - Vegetation Red Edge": "B06",
    "07 - Vegetation Red Edge": "B07", "08 - NIR": "B08", "08A - Vegetation Red Edge": "B8A",
    "09 - Water vapour": "B09", "10 - SWIR - Cirrus": "B10", "11 - SWIR": "B11", "12 - SWIR": "B12",
}
# geobench.dataset.sentinel1_8_bands (m-so2sat). Per the So2Sat LCZ42 documentation the eight
# channels are: 1-4 real / imaginary parts of the unfiltered VH and VV (complex, not intensities);
# 5 / 6 the intensity of the refined-Lee-filtered VH / VV (linear power: what we expose); 7 / 8 the
# real / imaginary part of the Lee-filtered covariance matrix's off-diagonal element (geobench
# names them "VH.LEE Filtered.Real" / "VV.LEE Filtered.Imaginary"). 1-4 and 7-8 are left out.
S1_DESCRIPTORS: Mapping[str, str] = {"05 - VH.LEE Filtered": "VH", "06 - VV.LEE Filtered": "VV"}
S1_LEFT_OUT = ("01 - VH.Real", "02 - VH.Imaginary", "03 - VV.Real", "04 - VV.Imaginary",
               "07 - VH.LEE Filtered.Real", "08 - VV.LEE Filtered.Imaginary")

_SPLIT_KEYS = {"train": "train", "val": "valid", "test": "test"}  # our name -> partition JSON key
_KINDS = {"Classification": "classification", "MultiLabelClassification": "multilabel",
          "SegmentationClasses": "segmentation", "SemanticSegmentation": "segmentation"}


def open_split(root: str, task: str, split: str, partition: str = "default") -> GeoBenchSplit:
  """Open `split` ("train" | "val" | "test") of GEO-Bench dataset `task` (e.g. "m-eurosat").

  `root` is the GEO_BENCH_DIR (holding classification_v1.0/ and segmentation_v1.0/), a benchmark
  folder, or the dataset folder itself. `partition` names `<partition>_partition.json` without the
  suffix ("default", "0.01x_train", ...). Bad files raise EvalDataError naming the file.
  """
  if task not in TASKS:
    raise ValueError(f"unknown GEO-Bench task {task!r}; known: {sorted(TASKS)}")
  split = "val" if split == "valid" else split
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
  return GeoBenchSplit(_dataset_dir(root, task), task, split, partition)


def _dataset_dir(root: str, task: str) -> str:
  info = TASKS[task]
  root = os.path.abspath(os.path.expanduser(root))
  if not os.path.isdir(root):
    raise EvalDataError(f"{root}: GEO-Bench root is not a folder")
  looks_like_dataset = (os.path.exists(os.path.join(root, "task_specs.pkl"))
                        or glob.glob(os.path.join(glob.escape(root), "*_partition.json")))
  if os.path.basename(root) in info.folders:
    return root
  if looks_like_dataset:  # a dataset folder, but another task's: refuse rather than misread it
    raise EvalDataError(f"{root}: a GEO-Bench dataset folder, but not {task}'s (named "
                        f"{' or '.join(info.folders)})")
  tried = []
  for base in (os.path.join(root, info.benchmark), root):
    for folder in info.folders:
      tried.append(os.path.join(base, folder))
      if os.path.isdir(tried[-1]):
        return tried[-1]
  raise EvalDataError(f"{root}: no GEO-Bench dataset folder for {task}; looked for {tried}")


class GeoBenchSplit(EvalSplit):
  """One split of one GEO-Bench task; samples are read from their HDF5 file on each access."""

  def __init__(self, dataset_dir: str, task: str, split: str, partition: str):
    info = TASKS[task]
    self.root = dataset_dir
    self.task = f"geobench/{task}"
    self.split = split
    self.partition = partition
    self.ignore_index = None  # GEO-Bench scores every class, "no data" (class 0) included

    specs_path = os.path.join(dataset_dir, "task_specs.pkl")
    if not os.path.exists(specs_path):
      raise EvalDataError(f"{specs_path}: missing (every GEO-Bench dataset folder has one)")
    specs = safe_pickle.load_file(specs_path)
    if getattr(specs, "geobench_class", "") != "TaskSpecifications":
      raise EvalDataError(f"{specs_path}: holds {type(specs).__name__}, not TaskSpecifications")
    self.kind, self.num_classes, self.class_names = _label_spec(specs, specs_path)
    if self.kind != info.kind:
      raise EvalDataError(f"{specs_path}: label type is {self.kind}, but {task} is a {info.kind} "
                          "task")

    self.sample_names = _read_partition(dataset_dir, partition, split)
    self._files = [os.path.join(dataset_dir, f"{n}.hdf5") for n in self.sample_names]
    missing = [f for f in self._files if not os.path.isfile(f)]
    if missing:
      raise EvalDataError(
          f"{_partition_path(dataset_dir, partition)}: {len(missing)} sample(s) of split "
          f"{_SPLIT_KEYS[split]!r} have no .hdf5 file, e.g. {missing[:3]}")

    # The reference band set: the task's bands_info, checked against the split's first sample.
    first = self._files[0]
    first_infos = self._with_file(first, lambda fp: [i for _, i in _band_entries(fp, first)[0]])
    first_names = {_info_name(i, first) for i in first_infos}
    infos = specs.bands_info if specs.bands_info else first_infos
    self._band_names = tuple(_info_name(i, specs_path) for i in infos)
    if set(self._band_names) != first_names:
      raise EvalDataError(
          f"{first}: the split's first sample lacks {sorted(set(self._band_names) - first_names)}"
          f" and adds {sorted(first_names - set(self._band_names))} to the bands of {specs_path}")
    self._groups, self.skipped_bands = _plan_groups(infos, specs_path)
    if not self._groups:
      raise EvalDataError(f"{specs_path}: no Sentinel-2 or Sentinel-1 band among "
                          f"{list(self._band_names)}")
    units = {"s2": info.s2_units, "s1": "linear"}
    self.inputs = {g: SourceGroup(tuple(c for _, c in bands), units[g])
                   for g, bands in self._groups.items()}

  def __len__(self) -> int:
    return len(self._files)

  def _load(self, i: int) -> dict[str, Any]:
    path = self._files[i]
    arrays, label = self._with_file(path, lambda fp: self._read(fp, path))
    shape = tuple(int(max(a.shape[k] for a in arrays.values())) for k in (0, 1))
    out: dict[str, Any] = {}
    for group, bands in self._groups.items():
      out[group] = np.stack([_resample(arrays[name], shape, path, name) for name, _ in bands],
                            axis=-1)
    if self.kind == "segmentation" and np.shape(label) != shape:
      raise EvalDataError(f"{path}: label map has shape {np.shape(label)}, the bands {shape}")
    try:
      out["label"] = check_label(self, label, path)
    except EvalDataError:
      raise
    except (TypeError, ValueError) as e:
      raise EvalDataError(f"{path}: unreadable {self.kind} label {label!r} ({e})") from e
    out["id"] = self.sample_names[i]
    return out

  def _read(self, fp: h5py.File, path: str) -> tuple[dict[str, np.ndarray], Any]:
    """The file's bands (name -> 2-D array) and its raw label."""
    entries, label_ds, attrs = _band_entries(fp, path)
    names = [_info_name(info, path) for _, info in entries]
    if len(set(names)) != len(names):
      raise EvalDataError(f"{path}: bands repeat ({len(names)} bands, {len(set(names))} names); "
                          "multi-date samples are not supported")
    if set(names) != set(self._band_names):
      missing = sorted(set(self._band_names) - set(names))
      extra = sorted(set(names) - set(self._band_names))
      raise EvalDataError(f"{path}: {len(names)} bands where the split's first sample has "
                          f"{len(self._band_names)}; missing {missing or 'none'}, unexpected "
                          f"{extra or 'none'}")
    by_name = dict(zip(names, (ds for ds, _ in entries)))
    wanted = [name for bands in self._groups.values() for name, _ in bands]
    arrays = {name: _read_2d(fp, by_name[name], path) for name in wanted}
    if self.kind == "segmentation":
      if label_ds is None:
        raise EvalDataError(f"{path}: no 'label' dataset for a segmentation task")
      label = _read_2d(fp, label_ds, path)
    else:
      if "label" not in attrs:
        raise EvalDataError(f"{path}: attrs['pickle'] has no 'label'")
      label = attrs["label"]
    return arrays, label

  @staticmethod
  def _with_file(path: str, fn):
    """Run fn(h5 file); any HDF5 / layout failure becomes one EvalDataError naming the file."""
    try:
      with h5py.File(path, "r") as fp:
        return fn(fp)
    except EvalDataError:
      raise
    except (OSError, KeyError, ValueError, TypeError, AttributeError) as e:
      raise EvalDataError(f"{path}: cannot read the HDF5 sample ({type(e).__name__}: {e})") from e


def _label_spec(specs: Any, where: str) -> tuple[str, int, tuple[str, ...]]:
  lt = specs.label_type
  kind = _KINDS.get(getattr(lt, "geobench_class", ""))
  if kind is None:
    raise EvalDataError(f"{where}: unsupported label type {lt!r}")
  n = getattr(lt, "n_classes", None)
  try:
    n = int(n)
  except (TypeError, ValueError):
    n = 0
  if n <= 0:
    raise EvalDataError(f"{where}: label type has no positive n_classes ({lt.n_classes!r})")
  names = lt.class_names
  return kind, n, names if len(names) == n else ()


def _partition_path(dataset_dir: str, partition: str) -> str:
  return os.path.join(dataset_dir, f"{partition}_partition.json")


def _read_partition(dataset_dir: str, partition: str, split: str) -> list[str]:
  path = _partition_path(dataset_dir, partition)
  if not os.path.isfile(path):
    found = sorted(os.path.basename(p)[:-len("_partition.json")]
                   for p in glob.glob(os.path.join(glob.escape(dataset_dir), "*_partition.json")))
    raise EvalDataError(f"{path}: no partition {partition!r}; the folder has {found or 'none'}")
  try:
    with open(path) as f:
      content = json.load(f)
  except (OSError, ValueError) as e:
    raise EvalDataError(f"{path}: cannot read the partition ({e})") from e
  key = _SPLIT_KEYS[split]
  names = content.get(key) if isinstance(content, dict) else None
  if not names:
    raise EvalDataError(f"{path}: split {key!r} is missing or empty")
  if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
    raise EvalDataError(f"{path}: split {key!r} is not a list of sample names")
  bad = [n for n in names if not n or "/" in n or "\\" in n or n in (".", "..")]
  if bad:
    raise EvalDataError(f"{path}: split {key!r} has sample names that are not file names: "
                        f"{bad[:3]}")
  return names


def _band_entries(fp: h5py.File, path: str) -> tuple[list[tuple[str, Any]], str | None, dict]:
  """[(h5 dataset name, band info)] in the file's bands_order, the label dataset, the attrs."""
  if "pickle" not in fp.attrs:
    raise EvalDataError(f"{path}: no attrs['pickle'] (not a GEO-Bench sample)")
  attrs = safe_pickle.loads_repr(fp.attrs["pickle"], path)
  if not isinstance(attrs, dict):
    raise EvalDataError(f"{path}: attrs['pickle'] holds a {type(attrs).__name__}, expected a dict")
  order = attrs.get("bands_order") or list(fp.keys())
  entries, label_ds = [], None
  for ds in order:
    if ds not in fp:
      raise EvalDataError(f"{path}: bands_order names {ds!r}, which the file does not hold")
    if ds.startswith("label"):
      label_ds = ds
      continue
    band_attrs = attrs.get(ds)
    info = band_attrs.get("band_info") if isinstance(band_attrs, dict) else None
    if info is None:
      raise EvalDataError(f"{path}: band {ds!r} has no band_info in attrs['pickle']")
    entries.append((ds, info))
  return entries, label_ds, attrs


def _info_name(info: Any, where: str) -> str:
  name = getattr(info, "name", None)
  if not isinstance(name, str):
    raise EvalDataError(f"{where}: band info {info!r} has no name")
  return name


def _plan_groups(infos: list, where: str) -> tuple[dict[str, list[tuple[str, str]]], tuple]:
  """Group -> [(descriptor, canonical name)] in bands_info order, and the descriptors left out."""
  groups: dict[str, list[tuple[str, str]]] = {}
  skipped = []
  for info in infos:
    name, cls = _info_name(info, where), getattr(info, "geobench_class", "")
    if cls == "Sentinel2":
      if name not in S2_DESCRIPTORS:
        raise EvalDataError(f"{where}: unknown Sentinel-2 band descriptor {name!r}")
      groups.setdefault("s2", []).append((name, S2_DESCRIPTORS[name]))
    elif cls == "Sentinel1" and name in S1_DESCRIPTORS:
      groups.setdefault("s1", []).append((name, S1_DESCRIPTORS[name]))
    elif cls == "Sentinel1" and name not in S1_LEFT_OUT:
      raise EvalDataError(f"{where}: unknown Sentinel-1 band descriptor {name!r}")
    else:
      skipped.append(name)
  return groups, tuple(skipped)


def _read_2d(fp: h5py.File, ds: str, path: str) -> np.ndarray:
  a = np.asarray(fp[ds][()])
  if a.ndim == 3 and a.shape[-1] == 1:
    a = a[..., 0]
  if a.ndim != 2 or 0 in a.shape:
    raise EvalDataError(f"{path}: dataset {ds!r} has shape {a.shape}, expected (H, W)")
  return a


def _resample(a: np.ndarray, shape: tuple[int, ...], path: str, name: str) -> np.ndarray:
  a = a.astype(np.float32, copy=False)
  if a.shape == shape:
    return a
  if len(shape) != 2 or a.ndim != 2:
    raise EvalDataError(f"{path}: band {name!r} of shape {a.shape} cannot be resampled to {shape}")
  return harmonize.resample_array(a, shape)
