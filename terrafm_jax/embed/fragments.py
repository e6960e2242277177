"""The fragment grid over a Major-TOM cell and the footprint of every fragment.

A fragment is a `size` x `size` window of the cell's 10 m grid (the grid the reader puts every band
and modality on). Along each axis the top-left corners are 0, stride, 2*stride, ... as long as the
fragment stays fully inside the cell; with `cover_border` (default) one more fragment is aligned to
the far edge when the regular positions leave a strip uncovered, so the whole cell is embedded.
That is Major-TOM's `border_shift=True` (`src/embedder/grid_cell_fragment.py`, `fragment_fn`): the
published expansions use size 224 with a target overlap of 10 %, which on a 1068 px cell means
stride 211 and corners 0, 211, 422, 633, 844 (5 x 5 fragments); `size=224, stride=211` reproduces
that grid exactly. The default here, stride = size = 224, gives corners 0, 224, 448, 672 and the
border fragment 844. Fragments are numbered row-major (fragment row, then column).

Footprints come from the cell's affine transform and CRS (the band GeoTIFFs' own georeference,
passed through by `majortom.load_cell`): the UTM box of the pixel window, and that box's four
corners reprojected to WGS84 with pyproj (`always_xy`), as the published expansions do. The centre
is the centroid of the WGS84 polygon (published: `geometry.centroid`).

`pixel_bbox` = [col_min, row_min, col_max, row_max] in cell pixels (end-exclusive), the order the
published `crop_footprint` documents ("[min_col, min_row, max_col, max_row]") and uses to derive
`utm_footprint`. (The published embedder fills it from `fragment_fn`'s (row, col) offsets, so in the
published files pixel_bbox and utm_footprint agree with each other but describe the transposed
window for fragments off the diagonal; here the window embedded is the window described.)
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
from typing import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Fragment:
  """One fragment window: rows [row0, row0 + size), columns [col0, col0 + size)."""
  index: int
  frag_row: int
  frag_col: int
  row0: int
  col0: int
  size: int

  @property
  def rows(self) -> slice:
    return slice(self.row0, self.row0 + self.size)

  @property
  def cols(self) -> slice:
    return slice(self.col0, self.col0 + self.size)

  @property
  def pixel_bbox(self) -> list[int]:
    """[col_min, row_min, col_max, row_max], end-exclusive (see the module doc)."""
    return [self.col0, self.row0, self.col0 + self.size, self.row0 + self.size]


def axis_positions(n: int, size: int, stride: int, cover_border: bool = True) -> list[int]:
  """Start offsets of the fragments along one axis of `n` px (empty if `size` > `n`)."""
  if size <= 0 or stride <= 0:
    raise ValueError(f"fragment size and stride must be positive, got {size} and {stride}")
  if size > n:
    return []
  pos = list(range(0, n - size + 1, stride))
  if cover_border and pos[-1] + size < n:
    pos.append(n - size)
  return pos


def fragment_grid(shape: tuple[int, int], size: int, stride: int,
                  cover_border: bool = True) -> list[Fragment]:
  """Every fragment of a cell of `shape` (H, W) px, row-major."""
  rows = axis_positions(shape[0], size, stride, cover_border)
  cols = axis_positions(shape[1], size, stride, cover_border)
  return [Fragment(i * len(cols) + j, i, j, r, c, size)
          for i, r in enumerate(rows) for j, c in enumerate(cols)]


@functools.lru_cache(maxsize=64)
def _to_wgs84(crs: str):
  from pyproj import Transformer  # pylint: disable=g-import-not-at-top
  return Transformer.from_crs(crs, "EPSG:4326", always_xy=True)


@dataclasses.dataclass
class Footprints:
  """Per fragment: UTM polygon (WKT), WGS84 polygon (WKB) and the WGS84 centroid."""
  utm_wkt: list[str]
  wgs84_wkb: list[bytes]
  centre_lat: np.ndarray   # float64; stored as float32 like the published expansions
  centre_lon: np.ndarray
  wgs84: list             # shapely Polygons, for tests and bbox metadata


def footprints(fragments: Sequence[Fragment], transform: Sequence[float], crs: str) -> Footprints:
  """Footprints of `fragments` on the grid `transform` (rasterio Affine[:6], north-up) in `crs`."""
  import shapely  # pylint: disable=g-import-not-at-top
  a, b, c, d, e, f = transform
  if b or d:
    raise ValueError(f"footprints need a north-up grid, got transform {tuple(transform)}")
  if not fragments:
    return Footprints([], [], np.zeros(0), np.zeros(0), [])
  c0 = np.array([fr.col0 for fr in fragments], np.float64)
  r0 = np.array([fr.row0 for fr in fragments], np.float64)
  s = np.array([fr.size for fr in fragments], np.float64)
  xa, xb = c + c0 * a, c + (c0 + s) * a
  ya, yb = f + r0 * e, f + (r0 + s) * e
  minx, maxx = np.minimum(xa, xb), np.maximum(xa, xb)
  miny, maxy = np.minimum(ya, yb), np.maximum(ya, yb)
  utm = shapely.box(minx, miny, maxx, maxy)
  # Corners in the order shapely.box writes them, reprojected together (one pyproj call per cell).
  cx = np.stack([maxx, maxx, minx, minx], 1)
  cy = np.stack([miny, maxy, maxy, miny], 1)
  lon, lat = _to_wgs84(crs).transform(cx.ravel(), cy.ravel())
  lon = np.asarray(lon).reshape(-1, 4)
  lat = np.asarray(lat).reshape(-1, 4)
  if not (np.isfinite(lon).all() and np.isfinite(lat).all()):
    raise ValueError(f"footprint corners cannot be reprojected from {crs} to WGS84 "
                     f"(transform {tuple(transform)})")
  rings = np.concatenate([np.stack([lon, lat], -1), np.stack([lon[:, :1], lat[:, :1]], -1)], 1)
  wgs = shapely.polygons(rings)
  cen = shapely.centroid(wgs)
  return Footprints(utm_wkt=[p.wkt for p in utm], wgs84_wkb=list(shapely.to_wkb(wgs)),
                    centre_lat=shapely.get_y(cen), centre_lon=shapely.get_x(cen),
                    wgs84=list(wgs))


def unique_id(grid_cell: str, product_id: str, timestamp: str, fragment: Fragment) -> str:
  """sha256 hex of (grid cell, product id(s), timestamp(s), pixel window).

  The published expansions hash `f"{geometry}_{timestamp}_{product_id}_{embedding}"`, which ties
  the id to the float formatting of one model's vector and to the WKT printing of one shapely
  version. This id keeps their form (a 64-character sha256 hex digest of what identifies the
  sample) but hashes the fragment's identity only, so it is reproducible on any machine and the
  same fragment has the same id in the expansions of two models (join them on `unique_id`).
  """
  key = (f"{grid_cell}_{product_id}_{timestamp}_"
         f"{'_'.join(str(v) for v in fragment.pixel_bbox)}")
  return hashlib.sha256(key.encode()).hexdigest()
