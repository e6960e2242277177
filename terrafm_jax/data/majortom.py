"""Reader for Major-TOM Core-S1RTC / Core-S2L1C / Core-S2L2A as published (DATA.md 2.1, 2.2).

Layout per modality folder: `metadata.parquet` (one row per product: `grid_cell`, `product_id`,
`parquet_url`, `parquet_row`, ...) and `images/part_*.parquet`, one sample per row group, each band
column holding the bytes of a single-band GeoTIFF at the band's native resolution. Only the files
present locally are used (a partial download is fine): metadata rows pointing at absent parts are
counted and ignored. Without `metadata.parquet` the image parts are scanned instead.

    folder = MajorTomFolder("/data/Core-S2L2A", "s2_l2a")
    cell = load_cell({"s2_l2a": folder.refs["454U_120R"], ...})   # harmonised 10 m arrays

Every problem raises `BadInputError` naming the file, row group and column.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Iterable, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from terrafm_jax.data import contract as contract_lib
from terrafm_jax.data import harmonize
from terrafm_jax.data.errors import BadInputError

MODALITY_FOLDERS: dict[str, str] = {
    "s1": "Core-S1RTC", "s2_l1c": "Core-S2L1C", "s2_l2a": "Core-S2L2A"}
# Band columns as stored, in contract order; L1C additionally stores B10 (read for the offset
# decision, then dropped).
BAND_COLUMNS: dict[str, tuple[str, ...]] = {
    "s1": ("vv", "vh"),
    "s2_l1c": contract_lib.S2_BANDS + ("B10",),
    "s2_l2a": contract_lib.S2_BANDS,
}
REFERENCE_COLUMN = {"s1": "vv", "s2_l1c": "B02", "s2_l2a": "B02"}
COLUMN_GSD_M = {c: contract_lib.BAND_GSD_M[c.upper()] for cols in BAND_COLUMNS.values()
                for c in cols}
MIN_FOOTPRINT_OVERLAP = 0.95


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


@dataclasses.dataclass
class ModalityData:
  """One modality of a cell on the common 10 m grid, before the per-tile S2 offset decision."""
  ref: ProductRef
  columns: tuple[str, ...]
  data: np.ndarray          # (H, W, len(columns)) float32; S2 nodata 0, S1 dB with NaN nodata
  bad: np.ndarray           # (H, W) bool: NaN in the input (not the documented nodata value)
  bad_column: str | None    # first column that had NaN, for the error message
  realigned: bool = False   # reprojected from another grid


@dataclasses.dataclass
class CellData:
  grid_cell: str
  shape: tuple[int, int]
  transform: tuple[float, ...]
  crs: str
  modalities: dict[str, ModalityData]


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


def read_row_group(pf: pq.ParquetFile, path: str, row_group: int, columns: Iterable[str],
                   where_cell: str | None) -> pa.Table:
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


def decode_geotiff(data: bytes | None, *, file: str, row_group: int, column: str,
                   grid_cell: str | None = None) -> harmonize.Raster:
  """Single-band GeoTIFF bytes -> Raster (rasterio MemoryFile, as Major-TOM's `read_tif_bytes`)."""
  from rasterio.io import MemoryFile  # pylint: disable=g-import-not-at-top
  if not data:
    raise BadInputError("empty band cell", file=file, row_group=row_group, column=column,
                        grid_cell=grid_cell, kind="corrupt_band")
  try:
    with MemoryFile(data) as mf, mf.open() as f:
      arr = f.read(1)
      transform = tuple(f.transform)[:6]
      crs = f.crs.to_string() if f.crs else ""
      nodata = f.nodata
  except Exception as e:  # rasterio raises several unrelated types for corrupt bytes
    raise BadInputError(f"cannot decode GeoTIFF: {e}", file=file, row_group=row_group,
                        column=column, grid_cell=grid_cell, kind="corrupt_band") from None
  return harmonize.Raster(arr, transform, crs, nodata)


@functools.lru_cache(maxsize=8)
def _cached_parquet_version(path: str, mtime_ns: int, size: int) -> pq.ParquetFile:
  del mtime_ns, size  # part of the cache key only: a rewritten file is reopened
  return open_parquet(path)


def _cached_parquet(path: str) -> pq.ParquetFile:
  try:
    st = os.stat(path)
  except OSError as e:
    raise BadInputError(f"cannot open parquet file: {e}", file=path,
                        kind="missing_file") from None
  return _cached_parquet_version(path, st.st_mtime_ns, st.st_size)


def read_product(ref: ProductRef) -> dict[str, harmonize.Raster]:
  """Decoded band rasters of one product, checked against its metadata row."""
  columns = BAND_COLUMNS[ref.modality]
  pf = _cached_parquet(ref.file)
  t = read_row_group(pf, ref.file, ref.row_group, ("grid_cell",) + columns, ref.grid_cell)
  cell = t["grid_cell"][0].as_py()
  if cell != ref.grid_cell:
    raise BadInputError(f"row holds grid cell {cell!r} but metadata says {ref.grid_cell!r}",
                        file=ref.file, row_group=ref.row_group, column="grid_cell",
                        grid_cell=ref.grid_cell, kind="mismatch")
  return {c: decode_geotiff(t[c][0].as_py(), file=ref.file, row_group=ref.row_group, column=c,
                            grid_cell=ref.grid_cell) for c in columns}


def _footprint_overlap(r: harmonize.Raster, shape, transform, crs) -> float:
  from rasterio.warp import transform_bounds  # pylint: disable=g-import-not-at-top

  def bounds(tr, sh):
    a, _, c, _, e, f = tr
    xs = (c, c + a * sh[1])
    ys = (f, f + e * sh[0])
    return min(xs), min(ys), max(xs), max(ys)

  rb = bounds(transform, shape)
  mb = bounds(r.transform, r.shape)
  if r.crs != crs:
    mb = transform_bounds(r.crs, crs, *mb)
  w = max(0.0, min(rb[2], mb[2]) - max(rb[0], mb[0]))
  h = max(0.0, min(rb[3], mb[3]) - max(rb[1], mb[1]))
  return w * h / max((rb[2] - rb[0]) * (rb[3] - rb[1]), 1e-9)


def _same_grid(r: harmonize.Raster, shape, transform, crs) -> bool:
  if r.crs != crs or r.shape != tuple(shape):
    return False
  tol = 1e-3 * abs(transform[0])
  return all(abs(x - y) <= tol for x, y in zip(r.transform, transform))


def _check_band_shapes(rasters: Mapping[str, harmonize.Raster], ref: ProductRef) -> None:
  ref_col = REFERENCE_COLUMN[ref.modality]
  h, w = rasters[ref_col].shape
  for c, r in rasters.items():
    gsd = COLUMN_GSD_M[c]
    want = (math.ceil(h * 10 / gsd), math.ceil(w * 10 / gsd))
    if r.shape != want:
      raise BadInputError(
          f"band has shape {r.shape}, expected {want} at {gsd} m for a {h}x{w} 10 m grid",
          file=ref.file, row_group=ref.row_group, column=c, grid_cell=ref.grid_cell,
          kind="wrong_size")


def _modality_on_grid(ref: ProductRef, rasters: Mapping[str, harmonize.Raster], shape,
                      transform, crs, align: str) -> ModalityData:
  columns = BAND_COLUMNS[ref.modality]
  base = rasters[REFERENCE_COLUMN[ref.modality]]
  same = _same_grid(base, shape, transform, crs)
  if not same:
    overlap = _footprint_overlap(base, shape, transform, crs)
    if align != "reproject" or overlap < MIN_FOOTPRINT_OVERLAP or base.shape != tuple(shape):
      raise BadInputError(
          f"grid differs from the cell's reference grid ({base.crs} {base.shape} vs {crs} "
          f"{tuple(shape)}, footprint overlap {overlap:.1%})", file=ref.file,
          row_group=ref.row_group, column=REFERENCE_COLUMN[ref.modality],
          grid_cell=ref.grid_cell, kind="mismatch")
  out = np.empty(tuple(shape) + (len(columns),), np.float32)
  bad = np.zeros(shape, bool)
  bad_column = None
  for k, c in enumerate(columns):
    r = rasters[c]
    if ref.modality == "s1":
      if r.data.dtype.kind == "f" and np.isnan(r.data).any():
        bad_column = bad_column or c
      nodata = harmonize.S1_NODATA if r.nodata is None else r.nodata
      r = dataclasses.replace(r, data=r.data.astype(np.float32), nodata=nodata)
    else:
      r = dataclasses.replace(r, nodata=0)
    if same and r.shape == tuple(shape):
      v = r.data.astype(np.float32)
      if ref.modality == "s1":
        v = np.where(v == r.nodata, np.nan, v)
    elif same:
      v = harmonize.resample_to_grid(r, shape, transform)
      if ref.modality == "s1":
        v = np.where(v == r.nodata, np.nan, v)
    else:
      v = harmonize.reproject_to_grid(r, shape, transform, crs)
      if ref.modality == "s1":
        v = np.where(v == r.nodata, np.nan, v)
    if ref.modality == "s1":
      nan_in = ~np.isfinite(r.data) if r.shape == tuple(shape) else np.zeros(shape, bool)
      bad |= nan_in
      v = harmonize.s1_linear_to_db(v, nodata=None)  # nodata already NaN
    out[..., k] = v
  return ModalityData(ref=ref, columns=columns, data=out, bad=bad, bad_column=bad_column,
                      realigned=not same)


def load_cell(refs: Mapping[str, ProductRef], align: str = "reproject") -> CellData:
  """Read, decode and bring every modality of one grid cell onto the cell's 10 m grid.

  The reference grid is the 10 m grid of the first modality present among L2A, L1C, S1. Other
  modalities on another grid are reprojected (bilinear) when `align == "reproject"` and their
  footprints overlap; a different 10 m size or footprint is a "mismatch" BadInputError.
  """
  order = [m for m in ("s2_l2a", "s2_l1c", "s1") if m in refs]
  if not order:
    raise ValueError("load_cell needs at least one modality")
  cells = {refs[m].grid_cell for m in order}
  if len(cells) != 1:
    r = refs[order[1]]
    raise BadInputError(f"modalities belong to different grid cells {sorted(cells)}",
                        file=r.file, row_group=r.row_group, column="grid_cell", kind="mismatch")
  return cell_from_rasters(refs, {m: read_product(refs[m]) for m in order}, align)


def cell_from_rasters(refs: Mapping[str, ProductRef],
                      rasters: Mapping[str, Mapping[str, harmonize.Raster]],
                      align: str = "reproject") -> CellData:
  """`load_cell` on already decoded rasters (one dict of band columns per modality)."""
  order = [m for m in ("s2_l2a", "s2_l1c", "s1") if m in refs]
  for m in order:
    _check_band_shapes(rasters[m], refs[m])
  base = rasters[order[0]][REFERENCE_COLUMN[order[0]]]
  shape, transform, crs = base.shape, base.transform, base.crs
  mods = {m: _modality_on_grid(refs[m], rasters[m], shape, transform, crs, align) for m in order}
  return CellData(grid_cell=refs[order[0]].grid_cell, shape=shape, transform=transform, crs=crs,
                  modalities=mods)
