"""Assembly of one Major-TOM grid cell: every modality's bands on the cell's common 10 m grid.

The reference grid is the 10 m grid of the first modality present among L2A, L1C, S1. Bands are
validated first (majortom/bands.py: GeoTIFF only, CRS, geotransform, band count, size). Other
modalities on another grid are reprojected (bilinear) when `align == "reproject"` and their
footprints overlap; a different 10 m size or footprint is a "mismatch" BadInputError.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np

from terrafm_jax.data import harmonize
from terrafm_jax.data.errors import BadInputError
from terrafm_jax.data.majortom.bands import (BAND_COLUMNS, REFERENCE_COLUMN, check_cell_bands,
                                             read_product)
from terrafm_jax.data.majortom.index import ProductRef

MIN_FOOTPRINT_OVERLAP = 0.95
MODALITY_ORDER = ("s2_l2a", "s2_l1c", "s1")   # the first present gives the cell's reference grid


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


def _nan_on_grid(r: harmonize.Raster, shape, transform, crs, same: bool) -> np.ndarray:
  """Where the band's NaN pixels land on the cell grid (bool (H, W))."""
  nan = ~np.isfinite(r.data)
  if same:
    return nan
  m = harmonize.Raster(nan.astype(np.float32), r.transform, r.crs, -1.0)
  return harmonize.reproject_to_grid(m, shape, transform, crs) > 0


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
  s1 = ref.modality == "s1"
  for k, c in enumerate(columns):
    r = rasters[c]
    if s1:
      if r.data.dtype.kind == "f" and np.isnan(r.data).any():
        bad_column = bad_column or c
        bad |= _nan_on_grid(r, shape, transform, crs, same)
      nodata = harmonize.S1_NODATA if r.nodata is None else r.nodata
      r = dataclasses.replace(r, data=r.data.astype(np.float32), nodata=nodata)
    else:
      r = dataclasses.replace(r, nodata=0)
    if same and r.shape == tuple(shape):
      v = r.data.astype(np.float32)
    elif same:
      v = harmonize.resample_to_grid(r, shape, transform)
    else:
      v = harmonize.reproject_to_grid(r, shape, transform, crs)
    if s1:
      v = np.where(v == r.nodata, np.nan, v)
      v = harmonize.s1_linear_to_db(v, nodata=None)  # nodata already NaN
    out[..., k] = v
  return ModalityData(ref=ref, columns=columns, data=out, bad=bad, bad_column=bad_column,
                      realigned=not same)


def load_cell(refs: Mapping[str, ProductRef], align: str = "reproject") -> CellData:
  """Read, decode, validate and bring every modality of one grid cell onto its 10 m grid."""
  order = [m for m in MODALITY_ORDER if m in refs]
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
  order = [m for m in MODALITY_ORDER if m in refs]
  check_cell_bands({m: refs[m] for m in order}, {m: rasters[m] for m in order})
  base = rasters[order[0]][REFERENCE_COLUMN[order[0]]]
  shape, transform, crs = base.shape, base.transform, base.crs
  mods = {m: _modality_on_grid(refs[m], rasters[m], shape, transform, crs, align) for m in order}
  return CellData(grid_cell=refs[order[0]].grid_cell, shape=shape, transform=transform, crs=crs,
                  modalities=mods)
