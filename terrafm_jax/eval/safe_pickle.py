"""Allow-list unpickling of GEO-Bench metadata, without importing geobench.

GEO-Bench stores its metadata as pickles: `task_specs.pkl` (a `TaskSpecifications`) and, in every
sample, `h5file.attrs["pickle"]` = `str(pickle.dumps(dict))` (band infos, dates, transforms, the
classification label). Plain `pickle.load` would run whatever a file names, so `SafeUnpickler`
resolves only the globals listed here:

  * geobench classes (under every module name geobench has pickled them as: `geobench.*`,
    `geobench.io.*`, `ccb.io.*`) map to the lightweight stand-ins below, which only keep their
    state; the reader needs `name` of band infos, `n_classes` / class names of label types and the
    fields of `TaskSpecifications`;
  * `affine.Affine` and `rasterio.crs.CRS` (a band's transform / crs) also map to stand-ins, so no
    GDAL code runs while unpickling;
  * numpy arrays, scalars and dtypes (`numpy.core.*` as numpy 1 writes them, `numpy._core.*` as
    numpy 2 does), through wrappers that refuse object dtypes and ndarray subclasses;
  * datetime types, `collections.OrderedDict`, `set` / `frozenset` / `slice`, and `_codecs.encode`
    restricted to latin-1 (protocol 2 spells bytes that way).

Anything else is an EvalDataError naming the file and the `module.name` asked for.
"""
from __future__ import annotations

import ast
import builtins
import codecs
import collections
import datetime
import io
import pickle
from typing import Any, Callable

import numpy as np

from terrafm_jax.eval.dataset import EvalDataError

try:  # numpy >= 2
  from numpy._core import multiarray as _multiarray
  from numpy._core import numeric as _numeric
except ImportError:  # numpy 1.x
  from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]
  from numpy.core import numeric as _numeric  # type: ignore[no-redef]


class StandIn:
  """Keeps the pickled state of a class we refuse to import; `geobench_class` names the original."""
  geobench_class = ""

  def __new__(cls, *args, **kwargs):
    obj = super().__new__(cls)
    obj._args = args  # NEWOBJ arguments (e.g. Affine's six coefficients)
    return obj

  def __init__(self, *args, **kwargs):  # only reached through REDUCE-style pickles
    self._args = args
    self.__dict__.update(kwargs)

  def __setstate__(self, state):
    # (dict, slots) tuples come from classes with __slots__; other states are kept as they are.
    if isinstance(state, tuple) and len(state) == 2 and all(
        s is None or isinstance(s, dict) for s in state):
      for part in state:
        self.__dict__.update(part or {})
    elif isinstance(state, dict):
      self.__dict__.update(state)
    else:
      self._state = state

  def __repr__(self):
    return f"<{self.geobench_class or type(self).__name__} stand-in>"


class BandInfo(StandIn):
  """geobench BandInfo and subclasses: `name` is the band descriptor, e.g. "04 - Red"."""
  name: str | None = None
  alt_names: tuple = ()
  spatial_resolution: float | None = None


class LabelType(StandIn):
  """geobench label types; `n_classes` and the class names live under differing attribute names."""
  n_classes: int | None = None

  @property
  def class_names(self) -> tuple[str, ...]:
    names = self.__dict__.get("_class_names") or self.__dict__.get("class_name")
    return tuple(str(n) for n in names) if names is not None else ()


class TaskSpecifications(StandIn):
  """geobench TaskSpecifications: dataset_name, bands_info, label_type, patch_size, ..."""
  dataset_name: str | None = None
  bands_info: list | None = None
  label_type: Any = None
  patch_size: Any = None


class Metric(StandIn):
  """Old task_specs reference metric classes (eval_loss = Accuracy) by name only."""


def _stand_in(name: str, base: type) -> type:
  return type(name, (base,), {"geobench_class": name})


class SegmentationClasses(BandInfo, LabelType):
  """geobench SegmentationClasses is both the label band's info and the label type."""
  geobench_class = "SegmentationClasses"


_BAND_INFOS = ("BandInfo", "SpectralBand", "Sentinel1", "Sentinel2", "Landsat8", "Mask",
               "ElevationBand", "MultiBand", "HyperSpectralBands", "CloudProbability")
_LABELS = ("LabelType", "Classification", "SemanticSegmentation", "MultiLabelClassification",
           "Detection")
_METRICS = ("Accuracy", "SegmentationAccuracy", "MultilabelAccuracy")

GEOBENCH_CLASSES: dict[str, type] = {
    **{n: _stand_in(n, BandInfo) for n in _BAND_INFOS},
    **{n: _stand_in(n, LabelType) for n in _LABELS},
    **{n: _stand_in(n, Metric) for n in _METRICS},
    "SegmentationClasses": SegmentationClasses,
    "TaskSpecifications": _stand_in("TaskSpecifications", TaskSpecifications),
}
GEOBENCH_MODULES = frozenset({
    "geobench", "geobench.dataset", "geobench.label", "geobench.task",
    "geobench.io", "geobench.io.dataset", "geobench.io.label", "geobench.io.task",
    "ccb", "ccb.io", "ccb.io.dataset", "ccb.io.label", "ccb.io.task",
})


class Affine(StandIn):
  """affine.Affine stand-in: the six coefficients (a, b, c, d, e, f) in `_args`."""
  geobench_class = "affine.Affine"


class CRS(StandIn):
  """rasterio.crs.CRS stand-in: the WKT string in `_state`."""
  geobench_class = "rasterio.crs.CRS"


def _no_object_dtype(dtype: Any, what: str) -> None:
  if np.dtype(dtype).hasobject:
    raise pickle.UnpicklingError(f"{what} with an object dtype is not allowed")


def _dtype(*args, **kwargs) -> np.dtype:
  dtype = np.dtype(*args, **kwargs)
  _no_object_dtype(dtype, "numpy.dtype")
  return dtype


def _reconstruct(subtype, shape, dtype) -> np.ndarray:
  if subtype is not np.ndarray:
    raise pickle.UnpicklingError(f"ndarray subclass {subtype!r} is not allowed")
  _no_object_dtype(dtype, "numpy array")
  return _multiarray._reconstruct(subtype, shape, dtype)


def _scalar(dtype, *args) -> Any:
  _no_object_dtype(dtype, "numpy scalar")
  return _multiarray.scalar(dtype, *args)


def _frombuffer(buf, dtype, shape, order) -> np.ndarray:
  _no_object_dtype(dtype, "numpy array")
  return _numeric._frombuffer(buf, dtype, shape, order)


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
  if codecs.lookup(encoding).name != "iso8859-1":
    raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} is not allowed")
  return codecs.encode(text, encoding)


_ALLOWED: dict[tuple[str, str], Callable] = {
    ("numpy", "dtype"): _dtype,
    ("numpy", "ndarray"): np.ndarray,
    ("_codecs", "encode"): _latin1_encode,
    ("affine", "Affine"): Affine,
    ("rasterio.crs", "CRS"): CRS,
    ("collections", "OrderedDict"): collections.OrderedDict,
    **{("datetime", n): getattr(datetime, n)
       for n in ("date", "datetime", "time", "timedelta", "timezone")},
    **{(m, n): getattr(builtins, n)
       for m in ("builtins", "__builtin__") for n in ("set", "frozenset", "slice")},
}
for _np in ("numpy.core", "numpy._core"):
  _ALLOWED[(f"{_np}.multiarray", "_reconstruct")] = _reconstruct
  _ALLOWED[(f"{_np}.multiarray", "scalar")] = _scalar
  _ALLOWED[(f"{_np}.numeric", "_frombuffer")] = _frombuffer


class SafeUnpickler(pickle.Unpickler):
  """Resolves only allow-listed globals; `where` (the file) goes into every error message."""

  def __init__(self, file, where: str):
    super().__init__(file)
    self.where = where

  def find_class(self, module: str, name: str) -> Any:
    if module in GEOBENCH_MODULES and name in GEOBENCH_CLASSES:
      return GEOBENCH_CLASSES[name]
    if (module, name) in _ALLOWED:
      return _ALLOWED[(module, name)]
    raise EvalDataError(f"{self.where}: the pickle asks for {module}.{name}, which is not on the "
                        "GEO-Bench allow-list; refusing to load it")


def loads(data: bytes, where: str) -> Any:
  """Unpickle `data` through the allow-list; any failure is an EvalDataError naming `where`."""
  try:
    return SafeUnpickler(io.BytesIO(data), where).load()
  except EvalDataError:
    raise
  except Exception as e:  # truncated or malformed pickles raise many types
    raise EvalDataError(f"{where}: cannot unpickle ({type(e).__name__}: {e})") from e


def load_file(path: str) -> Any:
  """Unpickle a file (e.g. task_specs.pkl) through the allow-list."""
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise EvalDataError(f"{path}: cannot read ({e})") from e
  return loads(data, path)


def loads_repr(text: Any, where: str) -> Any:
  """Unpickle a pickle stored as the repr of a bytes object (GEO-Bench's h5 attrs["pickle"])."""
  if isinstance(text, bytes):
    text = text.decode("ascii", errors="replace")
  try:
    data = ast.literal_eval(str(text))
  except (ValueError, SyntaxError, MemoryError, RecursionError) as e:
    raise EvalDataError(f"{where}: attrs['pickle'] is not a bytes literal ({e})") from e
  if not isinstance(data, bytes):
    raise EvalDataError(f"{where}: attrs['pickle'] holds a {type(data).__name__}, expected bytes")
  return loads(data, where)
