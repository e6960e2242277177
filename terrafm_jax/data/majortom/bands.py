"""Decoding and validation of the band cells of Major-TOM products (DATA.md 2.1).

Each band cell must hold the bytes of a single-band GeoTIFF at the band's native GSD, all bands of
a product on one grid (same CRS and origin; pixel = the band's GSD; size = ceil(10 m size * 10 /
GSD)). Every violation is a hard `BadInputError` naming file, row group and column, with `kind`:

  corrupt_band        empty cell, or TIFF bytes GDAL cannot read
  not_geotiff         not TIFF bytes (e.g. the PNG thumbnail written into a band column). The bytes
                      are opened with the GTiff driver only: GDAL never sniffs another format.
  wrong_band_count    a GeoTIFF with more than one band
  wrong_crs           no CRS, or another CRS than the product's
  wrong_geotransform  rotated, or pixel size / origin off the product's grid at the band's GSD
  wrong_size          band size inconsistent with the product's 10 m size

Sizes are checked first, then CRS and geotransform. The product's grid and 10 m size are what most
of its bands agree on, so the band that is wrong is the one named, also when it is the reference
band (B02 / vv). A tie (S1 has two bands) is broken by the 10 m size of the cell's other
modalities, then by the reference band. The product grid must be a north-up 10 m grid.
"""
from __future__ import annotations

import math
import warnings
from typing import Callable, Mapping, Sequence, TypeVar

from terrafm_jax.data import contract as contract_lib
from terrafm_jax.data import harmonize
from terrafm_jax.data.errors import BadInputError
from terrafm_jax.data.majortom.index import ProductRef, cached_parquet, read_row_group

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
REFERENCE_GSD_M = 10.0
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")   # classic TIFF and BigTIFF
_OTHER_FORMATS = ((b"\x89PNG", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF8", "GIF"),
                  (b"RIFF", "WebP"), (b"\x00\x00\x00\x0cjP", "JPEG 2000"), (b"BM", "BMP"))
ORIGIN_TOL_M = 0.1          # origins of a product's bands agree to 1 % of a 10 m pixel
PIXEL_RTOL = 1e-3

K = TypeVar("K")


def decode_geotiff(data: bytes | None, *, file: str, row_group: int, column: str,
                   grid_cell: str | None = None) -> harmonize.Raster:
  """Single-band GeoTIFF bytes -> Raster (rasterio MemoryFile with the GTiff driver only)."""
  from rasterio.errors import NotGeoreferencedWarning  # pylint: disable=g-import-not-at-top
  from rasterio.io import MemoryFile  # pylint: disable=g-import-not-at-top
  where = dict(file=file, row_group=row_group, column=column, grid_cell=grid_cell)
  if not data:
    raise BadInputError("empty band cell", kind="corrupt_band", **where)
  head = bytes(data[:12])
  if head[:4] not in TIFF_MAGIC:
    fmt = next((name for magic, name in _OTHER_FORMATS if head.startswith(magic)), None)
    what = f"a {fmt} image" if fmt else f"bytes start with {head[:8]!r}"
    raise BadInputError(f"band cell is not a GeoTIFF ({what})", kind="not_geotiff", **where)
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", NotGeoreferencedWarning)   # reported as wrong_crs below
      with MemoryFile(data) as mf, mf.open(driver="GTiff") as f:
        count = f.count
        arr = f.read(1) if count == 1 else None
        transform = tuple(f.transform)[:6]
        crs = f.crs.to_string() if f.crs else ""
        nodata = f.nodata
  except Exception as e:  # rasterio raises several unrelated types for corrupt bytes
    raise BadInputError(f"cannot decode GeoTIFF: {e}", kind="corrupt_band", **where) from None
  if count != 1:
    raise BadInputError(f"GeoTIFF has {count} bands, expected 1", kind="wrong_band_count",
                        **where)
  return harmonize.Raster(arr, transform, crs, nodata)


def read_product(ref: ProductRef) -> dict[str, harmonize.Raster]:
  """Decoded band rasters of one product, checked against its metadata row."""
  columns = BAND_COLUMNS[ref.modality]
  pf = cached_parquet(ref.file)
  t = read_row_group(pf, ref.file, ref.row_group, ("grid_cell",) + columns, ref.grid_cell)
  cell = t["grid_cell"][0].as_py()
  if cell != ref.grid_cell:
    raise BadInputError(f"row holds grid cell {cell!r} but metadata says {ref.grid_cell!r}",
                        file=ref.file, row_group=ref.row_group, column="grid_cell",
                        grid_cell=ref.grid_cell, kind="mismatch")
  return {c: decode_geotiff(t[c][0].as_py(), file=ref.file, row_group=ref.row_group, column=c,
                            grid_cell=ref.grid_cell) for c in columns}


def _where(ref: ProductRef, column: str) -> dict[str, object]:
  return dict(file=ref.file, row_group=ref.row_group, column=column, grid_cell=ref.grid_cell)


def _ordered(rasters: Mapping[str, harmonize.Raster], modality: str) -> list[str]:
  """Reference column first, then the others in stored order (the order of tie-breaking)."""
  ref_col = REFERENCE_COLUMN[modality]
  return [ref_col] + [c for c in rasters if c != ref_col]


def _votes(keys: Sequence[K], same: Callable[[K, K], bool]) -> list[tuple[K, int]]:
  """(candidate, number of keys agreeing with it) per candidate, in the order given."""
  return [(k, sum(same(k, k2) for k2 in keys)) for k in keys]


def _winner(votes: list[tuple[K, int]], hint: K | None = None) -> tuple[K, int, bool]:
  """(candidate with the most votes, its votes, unique?); ties go to `hint`, else the first."""
  top = max(n for _, n in votes)
  tied = [k for k, n in votes if n == top]
  unique = all(k == tied[0] for k in tied)
  if hint is not None and hint in tied:
    return hint, top, unique
  return tied[0], top, unique


def grid_at_10m(r: harmonize.Raster, gsd: float) -> tuple[float, ...]:
  """(x0, y0, a, e, b, d) of the 10 m grid that band `r` at `gsd` implies."""
  a, b, c, d, e, f = r.transform
  s = REFERENCE_GSD_M / gsd
  return (c, f, a * s, e * s, b, d)


def _same_grid10(g: tuple[float, ...], h: tuple[float, ...]) -> bool:
  return (abs(g[0] - h[0]) <= ORIGIN_TOL_M and abs(g[1] - h[1]) <= ORIGIN_TOL_M
          and abs(g[2] - h[2]) <= PIXEL_RTOL * max(abs(h[2]), 1e-9)
          and abs(g[3] - h[3]) <= PIXEL_RTOL * max(abs(h[3]), 1e-9)
          and abs(g[4] - h[4]) <= 1e-9 and abs(g[5] - h[5]) <= 1e-9)


def check_georeference(rasters: Mapping[str, harmonize.Raster], ref: ProductRef) -> None:
  """Every band has the product's CRS and lies on the product's north-up 10 m grid at its GSD."""
  cols = _ordered(rasters, ref.modality)
  crs, n, _ = _winner(_votes([rasters[c].crs for c in cols], lambda x, y: x == y))
  if not crs:
    raise BadInputError("band carries no CRS", kind="wrong_crs", **_where(ref, cols[0]))
  for c, r in rasters.items():
    if r.crs != crs:
      raise BadInputError(f"band CRS {r.crs or 'missing'} differs from the product's CRS {crs} "
                          f"({n} of {len(cols)} bands)", kind="wrong_crs", **_where(ref, c))
  grids = [grid_at_10m(rasters[c], COLUMN_GSD_M[c]) for c in cols]
  g, n, _ = _winner(_votes(grids, _same_grid10))
  x0, y0, a10, e10, b, d = g
  for c, r in rasters.items():
    gsd = COLUMN_GSD_M[c]
    if not _same_grid10(grid_at_10m(r, gsd), g):
      s = gsd / REFERENCE_GSD_M
      raise BadInputError(
          f"band geotransform {tuple(round(v, 3) for v in r.transform)} is off the product's "
          f"grid ({n} of {len(cols)} bands): expected pixel ({a10 * s:g}, {e10 * s:g}) m at "
          f"origin ({x0:.2f}, {y0:.2f}) for {gsd} m", kind="wrong_geotransform",
          **_where(ref, c))
  if b or d or e10 >= 0 or abs(a10 - REFERENCE_GSD_M) > PIXEL_RTOL * REFERENCE_GSD_M or abs(
      -e10 - REFERENCE_GSD_M) > PIXEL_RTOL * REFERENCE_GSD_M:
    raise BadInputError(
        f"product grid is not a north-up {REFERENCE_GSD_M:g} m grid (10 m band transform "
        f"{tuple(round(v, 3) for v in rasters[cols[0]].transform)})", kind="wrong_geotransform",
        **_where(ref, cols[0]))


def expected_shape(shape10: tuple[int, int], gsd: float) -> tuple[int, int]:
  """Native size of a band at `gsd` on a 10 m grid of `shape10` pixels."""
  f = gsd / REFERENCE_GSD_M
  return (math.ceil(shape10[0] / f), math.ceil(shape10[1] / f))


def _size_votes(rasters: Mapping[str, harmonize.Raster],
                modality: str) -> list[tuple[tuple[int, int], int]]:
  """Candidate 10 m sizes (those of the 10 m bands), each with the number of bands fitting it."""
  cands = [rasters[c].shape for c in _ordered(rasters, modality)
           if COLUMN_GSD_M[c] == REFERENCE_GSD_M]
  return [(s, sum(r.shape == expected_shape(s, COLUMN_GSD_M[c]) for c, r in rasters.items()))
          for s in cands]


def check_sizes(
    refs: Mapping[str, ProductRef],
    rasters: Mapping[str, Mapping[str, harmonize.Raster]]) -> dict[str, tuple[int, int]]:
  """The 10 m size of each product, after checking every band against it (see module doc)."""
  votes = {m: _size_votes(rasters[m], m) for m in refs}
  hint = None
  for m in refs:
    shape, _, unique = _winner(votes[m])
    if unique:
      hint = shape
      break
  out = {}
  for m, ref in refs.items():
    shape, n, _ = _winner(votes[m], hint)
    for c, r in rasters[m].items():
      gsd = COLUMN_GSD_M[c]
      want = expected_shape(shape, gsd)
      if r.shape != want:
        raise BadInputError(
            f"band has shape {r.shape}, expected {want} at {gsd} m for the product's "
            f"{shape[0]}x{shape[1]} 10 m grid ({n} of {len(rasters[m])} bands agree on it)",
            kind="wrong_size", **_where(ref, c))
    out[m] = shape
  return out


def check_cell_bands(refs: Mapping[str, ProductRef],
                     rasters: Mapping[str, Mapping[str, harmonize.Raster]]) -> None:
  """All checks of the module doc on every band of every product of one cell (sizes first)."""
  check_sizes(refs, rasters)
  for m, ref in refs.items():
    check_georeference(rasters[m], ref)
