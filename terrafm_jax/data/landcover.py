"""ESA WorldCover labels per tile (DATA.md 3): 11-class histogram, dominant class, strata.

Two inputs are accepted:
  * a table (parquet or csv) with `grid_cell`, optionally `tile_row` / `tile_col` (per-tile rows;
    without them a cell's histogram is used for each of its tiles), one column per class named
    `wc_10`, `wc_20`, ..., `wc_100` (fractions or pixel counts, normalised here), optionally
    `wc_nodata` (fraction of pixels without a class), `climate` and `region` (strata labels);
  * a folder of WorldCover GeoTIFFs (EPSG:4326, uint8 codes): each tile's UTM footprint is
    reprojected with nearest resampling onto a `step`-times coarser copy of the tile grid.
"""
from __future__ import annotations

import dataclasses
import glob
import os
from typing import Sequence

import numpy as np

from terrafm_jax.data.errors import BadInputError

CODES: tuple[int, ...] = (10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 100)
CLASS_NAMES: tuple[str, ...] = (
    "tree_cover", "shrubland", "grassland", "cropland", "built_up", "bare_sparse",
    "snow_ice", "permanent_water", "herbaceous_wetland", "mangroves", "moss_lichen")
NUM_CLASSES = len(CODES)
WATER = CODES.index(80)
HIST_COLUMNS: tuple[str, ...] = tuple(f"wc_{c}" for c in CODES)
UNKNOWN_LABEL = -1

_LUT = np.full(256, -1, np.int16)
for _i, _c in enumerate(CODES):
  _LUT[_c] = _i


@dataclasses.dataclass(frozen=True)
class LandCover:
  hist: np.ndarray          # (11,) float32, sums to 1 over classified pixels (0 if none)
  nodata_frac: float        # fraction of pixels without a WorldCover class
  climate: str = ""
  region: str = ""

  @property
  def dominant(self) -> int:
    return int(np.argmax(self.hist)) if self.hist.sum() > 0 else UNKNOWN_LABEL


def hist_from_codes(codes: np.ndarray) -> LandCover:
  """Histogram of WorldCover codes (0 / unknown codes count as nodata)."""
  idx = _LUT[np.asarray(codes, np.uint8).ravel()]
  valid = idx >= 0
  counts = np.bincount(idx[valid], minlength=NUM_CLASSES).astype(np.float64)
  n = max(int(valid.sum()), 1)
  return LandCover(hist=(counts / n).astype(np.float32),
                   nodata_frac=float(1.0 - valid.sum() / max(idx.size, 1)))


class LandCoverTable:
  """Per-cell or per-tile WorldCover histograms from a table."""

  def __init__(self, path: str):
    import pandas as pd  # pylint: disable=g-import-not-at-top
    try:
      df = pd.read_csv(path) if path.endswith(".csv") else pd.read_parquet(path)
    except Exception as e:  # pandas / pyarrow raise many types for unreadable files
      raise BadInputError(f"cannot read land-cover table: {e}", file=path,
                          kind="corrupt_parquet") from None
    for col in ("grid_cell",) + HIST_COLUMNS:
      if col not in df.columns:
        raise BadInputError("land-cover table lacks a column", file=path, column=col,
                            kind="missing_column")
    self.path = path
    self.per_tile = "tile_row" in df.columns and "tile_col" in df.columns
    hist = df[list(HIST_COLUMNS)].to_numpy(np.float64)
    if (hist < 0).any() or not np.isfinite(hist).all():
      raise BadInputError("negative or non-finite class values", file=path, column="wc_*",
                          kind="bad_value")
    total = hist.sum(1, keepdims=True)
    hist = np.where(total > 0, hist / np.maximum(total, 1e-12), 0.0).astype(np.float32)
    nodata = (df["wc_nodata"].to_numpy(np.float64) if "wc_nodata" in df.columns
              else np.where(total[:, 0] > 0, 0.0, 1.0))
    climate = df["climate"].astype(str).to_numpy() if "climate" in df.columns else None
    region = df["region"].astype(str).to_numpy() if "region" in df.columns else None
    self._rows: dict[tuple, LandCover] = {}
    cells = df["grid_cell"].astype(str).to_numpy()
    rows = df["tile_row"].to_numpy() if self.per_tile else None
    cols = df["tile_col"].to_numpy() if self.per_tile else None
    for i, cell in enumerate(cells):
      key = (cell, int(rows[i]), int(cols[i])) if self.per_tile else (cell,)
      self._rows[key] = LandCover(hist[i], float(nodata[i]),
                                  "" if climate is None else climate[i],
                                  "" if region is None else region[i])

  def lookup(self, grid_cell: str, tile_row: int, tile_col: int, **_) -> LandCover | None:
    key = (grid_cell, tile_row, tile_col) if self.per_tile else (grid_cell,)
    return self._rows.get(key)


class WorldCoverRasters:
  """Histograms from WorldCover GeoTIFF tiles (any CRS; normally EPSG:4326 3x3 degree tiles)."""

  def __init__(self, folder: str, step: int = 4):
    import rasterio  # pylint: disable=g-import-not-at-top
    self.folder = folder
    self.step = step
    self._files = []
    for path in sorted(glob.glob(os.path.join(folder, "**", "*.tif"), recursive=True)):
      try:
        with rasterio.open(path) as f:
          self._files.append((path, f.crs.to_string(), tuple(f.bounds)))
      except Exception as e:  # rasterio raises several types for unreadable files
        raise BadInputError(f"cannot open WorldCover GeoTIFF: {e}", file=path,
                            kind="corrupt_band") from None
    if not self._files:
      raise BadInputError("no WorldCover GeoTIFF found", file=folder, kind="missing_file")

  def lookup(self, grid_cell: str, tile_row: int, tile_col: int, *, shape: Sequence[int],
             transform: Sequence[float], crs: str) -> LandCover | None:
    import rasterio  # pylint: disable=g-import-not-at-top
    from rasterio.transform import Affine  # pylint: disable=g-import-not-at-top
    from rasterio.warp import Resampling, reproject, transform_bounds  # pylint: disable=g-import-not-at-top
    del grid_cell, tile_row, tile_col
    a, b, c, d, e, f = transform
    h, w = max(1, shape[0] // self.step), max(1, shape[1] // self.step)
    dst_tr = Affine(a * shape[1] / w, b, c, d, e * shape[0] / h, f)
    x0, x1 = c, c + a * shape[1]
    y0, y1 = f + e * shape[0], f
    out = np.zeros((h, w), np.uint8)
    hit = False
    for path, fcrs, fb in self._files:
      tb = transform_bounds(crs, fcrs, min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
      if tb[0] >= fb[2] or tb[2] <= fb[0] or tb[1] >= fb[3] or tb[3] <= fb[1]:
        continue
      hit = True
      part = np.zeros((h, w), np.uint8)
      with rasterio.open(path) as src:
        reproject(source=rasterio.band(src, 1), destination=part, dst_transform=dst_tr,
                  dst_crs=crs, src_nodata=0, dst_nodata=0, resampling=Resampling.nearest)
      out = np.where(out == 0, part, out)  # mosaic across 3-degree tile edges
    return hist_from_codes(out) if hit else None


def open_landcover(path: str | None, step: int = 4):
  """A table (file) or GeoTIFF folder provider, or None."""
  if path is None:
    return None
  if os.path.isdir(path):
    return WorldCoverRasters(path, step=step)
  return LandCoverTable(path)
