"""Index of a Major-TOM modality folder: which products exist locally and where (DATA.md 2.1, 2.2).

Layout per modality folder: `metadata.parquet` (one row per product: `grid_cell`, `product_id`,
`parquet_url`, `parquet_row`, ...) and `images/part_*.parquet`, one sample per row group. Only the
files present locally are used (a partial download is fine): metadata rows pointing at absent parts
are counted and ignored. Without `metadata.parquet` the image parts are scanned instead.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from terrafm_jax.data.errors import BadInputError

MODALITY_FOLDERS: dict[str, str] = {
    "s1": "Core-S1RTC", "s2_l1c": "Core-S2L1C", "s2_l2a": "Core-S2L2A"}


@dataclasses.dataclass(frozen=True)
class ProductRef:
  """Where one product (one grid cell of one modality) is stored."""
  modality: str
  grid_cell: str
  file: str
  row_group: int
  product_id: str | None = None
  timestamp: str | None = None
  centre_lat: float | None = None
  centre_lon: float | None = None


def _local_image_path(folder: str, url: str) -> str:
  """`https://.../Core-S2L2A/resolve/main/images/part_01000.parquet` -> `<folder>/images/...`."""
  tail = url.replace("\\", "/").split("/")
  if "images" in tail:
    tail = tail[tail.index("images"):]
  else:
    tail = ["images", tail[-1]]
  return os.path.join(folder, *tail)


def open_parquet(path: str) -> pq.ParquetFile:
  try:
    return pq.ParquetFile(path)
  except (pa.ArrowException, OSError) as e:
    raise BadInputError(f"cannot open parquet file: {e}", file=path,
                        kind="corrupt_parquet") from None


@functools.lru_cache(maxsize=8)
def _cached_parquet_version(path: str, mtime_ns: int, size: int) -> pq.ParquetFile:
  del mtime_ns, size  # part of the cache key only: a rewritten file is reopened
  return open_parquet(path)


def cached_parquet(path: str) -> pq.ParquetFile:
  """`open_parquet`, cached per (path, mtime, size) so that consecutive row groups reuse it."""
  try:
    st = os.stat(path)
  except OSError as e:
    raise BadInputError(f"cannot open parquet file: {e}", file=path,
                        kind="missing_file") from None
  return _cached_parquet_version(path, st.st_mtime_ns, st.st_size)


def read_row_group(pf: pq.ParquetFile, path: str, row_group: int, columns: Iterable[str],
                   where_cell: str | None) -> pa.Table:
  """One sample (row group) of an image part, restricted to `columns`, checked to hold one row."""
  columns = list(columns)
  names = set(pf.schema_arrow.names)
  for c in columns:
    if c not in names:
      raise BadInputError("band column missing from the image parquet", file=path,
                          row_group=row_group, column=c, grid_cell=where_cell,
                          kind="missing_column")
  if not 0 <= row_group < pf.metadata.num_row_groups:
    raise BadInputError(f"row group out of range (file has {pf.metadata.num_row_groups})",
                        file=path, row_group=row_group, grid_cell=where_cell,
                        kind="corrupt_parquet")
  try:
    t = pf.read_row_group(row_group, columns=columns)
  except (pa.ArrowException, OSError) as e:
    raise BadInputError(f"cannot read row group: {e}", file=path, row_group=row_group,
                        grid_cell=where_cell, kind="corrupt_parquet") from None
  if t.num_rows != 1:
    raise BadInputError(f"expected one sample per row group, found {t.num_rows}", file=path,
                        row_group=row_group, grid_cell=where_cell, kind="corrupt_parquet")
  return t


class MajorTomFolder:
  """Index of the locally available products of one Major-TOM modality folder."""

  def __init__(self, folder: str, modality: str):
    if modality not in MODALITY_FOLDERS:
      raise ValueError(f"unknown modality {modality!r}; expected one of {tuple(MODALITY_FOLDERS)}")
    self.folder = os.path.abspath(folder)
    self.modality = modality
    self.missing_files = 0
    self.duplicates = 0
    self.refs: dict[str, ProductRef] = {}
    meta = os.path.join(self.folder, "metadata.parquet")
    if os.path.exists(meta):
      self._from_metadata(meta)
    else:
      self._from_scan()

  def _add(self, ref: ProductRef) -> None:
    if ref.grid_cell in self.refs:
      self.duplicates += 1  # Core sets hold one product per cell; keep the first
      return
    self.refs[ref.grid_cell] = ref

  def _from_metadata(self, meta: str) -> None:
    try:
      table = pq.read_table(meta)
    except (pa.ArrowException, OSError) as e:
      raise BadInputError(f"cannot read metadata: {e}", file=meta,
                          kind="corrupt_parquet") from None
    for col in ("grid_cell", "parquet_url", "parquet_row"):
      if col not in table.column_names:
        raise BadInputError("metadata lacks a required column", file=meta, column=col,
                            kind="missing_column")
    cols = table.to_pydict()
    n = table.num_rows
    exists: dict[str, bool] = {}
    for i in range(n):
      path = _local_image_path(self.folder, cols["parquet_url"][i])
      if path not in exists:
        exists[path] = os.path.exists(path)
      if not exists[path]:
        self.missing_files += 1
        continue
      self._add(ProductRef(
          modality=self.modality, grid_cell=str(cols["grid_cell"][i]), file=path,
          row_group=int(cols["parquet_row"][i]),
          product_id=cols.get("product_id", [None] * n)[i],
          timestamp=None if cols.get("timestamp") is None else str(cols["timestamp"][i]),
          centre_lat=cols.get("centre_lat", [None] * n)[i],
          centre_lon=cols.get("centre_lon", [None] * n)[i]))

  def _from_scan(self) -> None:
    images = os.path.join(self.folder, "images")
    if not os.path.isdir(images):
      raise BadInputError("neither metadata.parquet nor images/ found", file=self.folder,
                          kind="missing_file")
    for name in sorted(os.listdir(images)):
      if not name.endswith(".parquet"):
        continue
      path = os.path.join(images, name)
      pf = open_parquet(path)
      for rg in range(pf.metadata.num_row_groups):
        t = read_row_group(pf, path, rg, ["grid_cell", "product_id"], where_cell=None)
        self._add(ProductRef(modality=self.modality, grid_cell=str(t["grid_cell"][0].as_py()),
                             file=path, row_group=rg,
                             product_id=t["product_id"][0].as_py()))


def find_modality_folders(root: str) -> dict[str, str]:
  """The `Core-*` folders present under `root` (or `root` itself if it is one), by modality."""
  out = {}
  for m, name in MODALITY_FOLDERS.items():
    if os.path.basename(os.path.normpath(root)) == name:
      out[m] = root
    elif os.path.isdir(os.path.join(root, name)):
      out[m] = os.path.join(root, name)
  return out
