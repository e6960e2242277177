"""Harmonisation of Major-TOM bands into the units of the input contract (DATA.md 2.3, 2.5, 2.6).

* S2: the +1000 offset of processing baseline >= 04.00 is removed (decided per tile from the data for
  N9999 products and products without an id), 20 m / 60 m bands are resampled to the 10 m grid with
  pixel-centre-aligned bilinear interpolation that ignores nodata (0) neighbours, B10 is dropped.
* S1: linear power -> dB with the nodata value masked (NaN in the output).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Mapping, Sequence

import numpy as np

S2_OFFSET = 1000
# Baselines at or above 04.00 carry BOA_ADD_OFFSET / RADIO_ADD_OFFSET = -1000 (DATA.md 2.3).
OFFSET_FIRST_BASELINE = 400
UNKNOWN_BASELINE = 9999
# Data-driven detection (DATA.md 2.6): the minimum over bands of the per-band 0.1 % quantile of valid
# pixels is >= ~1000 with the offset, and far lower without it (dark water / cirrus / SWIR pixels).
DETECT_QUANTILE = 0.001
DETECT_THRESHOLD = 900.0
S1_NODATA = -32768.0
S1_MIN_LINEAR = 1e-10

_BASELINE_RE = re.compile(r"_N(\d{4})_")


@dataclasses.dataclass(frozen=True)
class Raster:
  """One band with its georeference (an axis-aligned affine transform, as in Major-TOM)."""
  data: np.ndarray
  transform: tuple[float, float, float, float, float, float]  # rasterio Affine[:6]: a b c d e f
  crs: str
  nodata: float | None = None

  @property
  def shape(self) -> tuple[int, int]:
    return self.data.shape  # type: ignore[return-value]


def parse_baseline(product_id: str | None) -> int | None:
  """The processing baseline NXXXX of an S2 product id as an int (e.g. 400), None if absent."""
  if not product_id:
    return None
  m = _BASELINE_RE.search(product_id)
  return int(m.group(1)) if m else None


def min_band_quantile(bands: Sequence[np.ndarray], quantile: float = DETECT_QUANTILE,
                      nodata: float = 0) -> float:
  """Minimum over bands of the per-band `quantile` of valid pixels (inf if no valid pixel)."""
  qs = []
  for b in bands:
    v = b[b != nodata]
    if v.size:
      qs.append(float(np.quantile(v, quantile)))
  return min(qs) if qs else float("inf")


def detect_offset(bands: Sequence[np.ndarray], threshold: float = DETECT_THRESHOLD,
                  quantile: float = DETECT_QUANTILE) -> bool:
  """Data-driven +1000 offset decision (DATA.md 2.6); pass all bands, B10 included for L1C.

  Not B02 alone: on snow B02 stays above 1000 without an offset while SWIR stays at ~150.
  """
  return min_band_quantile(bands, quantile) >= threshold


def offset_decision(product_id: str | None, bands: Sequence[np.ndarray],
                    threshold: float = DETECT_THRESHOLD) -> tuple[bool, str]:
  """(offset present?, how it was decided: 'baseline' or 'detected')."""
  n = parse_baseline(product_id)
  if n is None or n >= UNKNOWN_BASELINE:
    return detect_offset(bands, threshold), "detected"
  return n >= OFFSET_FIRST_BASELINE, "baseline"


def remove_offset(dn: np.ndarray) -> np.ndarray:
  """DN - 1000 clamped at 1, keeping 0 as nodata (so DN 1000 -> 1, not 0)."""
  x = dn.astype(np.int32)
  out = np.where(x == 0, 0, np.maximum(x - S2_OFFSET, 1))
  return out.astype(np.uint16)


def _axis_weights(n_out: int, out_origin: float, out_step: float, n_src: int, src_origin: float,
                  src_step: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Neighbour indices and weights that map output pixel centres onto source pixel centres."""
  centres = out_origin + (np.arange(n_out) + 0.5) * out_step
  u = (centres - src_origin) / src_step - 0.5  # fractional source index (pixel centres at k)
  u = np.clip(u, 0.0, n_src - 1.0)
  i0 = np.floor(u).astype(np.int64)
  i1 = np.minimum(i0 + 1, n_src - 1)
  w1 = (u - i0).astype(np.float64)
  nearest = np.clip(np.rint(u).astype(np.int64), 0, n_src - 1)
  return i0, i1, w1, nearest


def resample_to_grid(src: Raster, shape: tuple[int, int],
                     transform: Sequence[float]) -> np.ndarray:
  """Bilinear resampling of an axis-aligned band onto another grid of the same CRS (float32).

  Pixel centres are aligned through the transforms (a 20 m pixel k covers 10 m pixels 2k, 2k+1).
  Nodata neighbours get zero weight; an output pixel whose nearest source pixel is nodata is nodata.
  """
  a, b, c, d, e, f = src.transform
  ta, tb, tc, td, te, tf = transform
  if b or d or tb or td:
    raise ValueError("resample_to_grid needs axis-aligned (north-up) transforms")
  h, w = src.data.shape
  ry0, ry1, wy, ny = _axis_weights(shape[0], tf, te, h, f, e)
  rx0, rx1, wx, nx = _axis_weights(shape[1], tc, ta, w, c, a)
  x = src.data.astype(np.float64)
  if src.nodata is not None:
    valid = (x != src.nodata) & np.isfinite(x)
  else:
    valid = np.isfinite(x)
  xv = np.where(valid, x, 0.0)
  m = valid.astype(np.float64)

  def interp(z: np.ndarray) -> np.ndarray:
    rows = z[ry0] * (1 - wy)[:, None] + z[ry1] * wy[:, None]
    return rows[:, rx0] * (1 - wx)[None, :] + rows[:, rx1] * wx[None, :]

  num, den = interp(xv), interp(m)
  out = np.where(den > 0, num / np.maximum(den, 1e-12), 0.0)
  near_valid = valid[ny][:, nx]
  fill = src.nodata if src.nodata is not None else np.nan
  return np.where(near_valid, out, fill).astype(np.float32)


def resample_array(x: np.ndarray, shape: tuple[int, int], nodata: float | None = None
                   ) -> np.ndarray:
  """`resample_to_grid` for a band without georeference that covers the same extent as `shape`
  (e.g. a 20 m band of a benchmark patch onto its 10 m grid): pixel-centre aligned bilinear."""
  h, w = x.shape
  src = Raster(x, (1.0 / w, 0.0, 0.0, 0.0, -1.0 / h, 1.0), "", nodata)
  return resample_to_grid(src, shape, (1.0 / shape[1], 0.0, 0.0, 0.0, -1.0 / shape[0], 1.0))


def reproject_to_grid(src: Raster, shape: tuple[int, int], transform: Sequence[float],
                      crs: str) -> np.ndarray:
  """Bilinear reprojection onto another CRS/grid (for modalities on different UTM grids)."""
  from rasterio.transform import Affine  # pylint: disable=g-import-not-at-top
  from rasterio.warp import Resampling, reproject  # pylint: disable=g-import-not-at-top
  nodata = src.nodata if src.nodata is not None else np.nan
  dst = np.full(shape, nodata, np.float32)
  reproject(source=src.data.astype(np.float32), destination=dst,
            src_transform=Affine(*src.transform), src_crs=src.crs, src_nodata=nodata,
            dst_transform=Affine(*transform), dst_crs=crs, dst_nodata=nodata,
            resampling=Resampling.bilinear)
  return dst


def to_dn_uint16(x: np.ndarray) -> np.ndarray:
  """Round resampled S2 values back to uint16 DN; a valid pixel never rounds to nodata 0."""
  y = np.rint(np.nan_to_num(x, nan=0.0))
  valid = (x > 0) & np.isfinite(x)
  y = np.where(valid, np.clip(y, 1, 65535), 0)
  return y.astype(np.uint16)


def s1_linear_to_db(x: np.ndarray, nodata: float | None = S1_NODATA) -> np.ndarray:
  """10*log10(max(x, 1e-10)) in float32, NaN where x is nodata (negative values clamp first)."""
  x = x.astype(np.float32)
  mask = ~np.isfinite(x)
  if nodata is not None:
    mask |= x == nodata
  db = 10.0 * np.log10(np.maximum(x, S1_MIN_LINEAR))
  return np.where(mask, np.nan, db).astype(np.float32)


def stack_s2(bands: Mapping[str, np.ndarray], order: Sequence[str]) -> np.ndarray:
  """(H, W, C) uint16 in contract order; B10 and any extra band are left out by `order`."""
  return np.stack([bands[b] for b in order], axis=-1)
