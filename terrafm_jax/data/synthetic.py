"""Synthetic Major-TOM: the exact published parquet schema, filled with plausible S1/S2 data.

It lets the README's pretraining command run without downloads (data/builtin.py writes it beside
the real scenes and prepares it), and it exercises the production reader (GeoTIFF bytes at native GSD, metadata rows, +1000 offsets, N9999 products, nodata, clouds).

    write_synthetic_majortom(root, SyntheticConfig(num_cells=16, cell_size=128, tile_size=64))
      -> root/Core-S1RTC, root/Core-S2L1C, root/Core-S2L2A (metadata.parquet + images/part_*.parquet)
         root/worldcover.parquet (per-tile WorldCover histograms, climate / region strata)
    make_labelled_set(num_tiles, *, tile_size, seed) -> dict of harmonised tiles + "label"
      held-out tiles from the same generator (another seed) for k-NN checks.

The scene model: each cell draws 1-3 WorldCover classes from a long-tailed prior (mangroves and moss
rare) with Dirichlet proportions, laid out as contiguous regions of a smooth random field. Classes
have distinct mean spectra (BOA reflectance x 1e4), distinct texture (1/f^beta Gaussian random
fields; stripes for cropland, fine grain for built-up) and distinct S1 backscatter; NIR and red move
against each other with vegetation vigour; VV/VH follow land cover and texture, with gamma speckle
(4.5 looks). L1C = a per-band gain x BOA + path radiance (both measured on real L1C/L2A
pairs), plus cirrus B10. Cloud blobs in some products,
nodata corners in a few, +1000 offsets per processing baseline (N0400/N0509: yes, N0208/N0301: no,
N9999: either; the truth is in the extra metadata column `synthetic_offset`).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Sequence

import numpy as np

from terrafm_jax.data import contract as contract_lib
from terrafm_jax.data import grid as grid_lib
from terrafm_jax.data import harmonize
from terrafm_jax.data import landcover as lc_lib
from terrafm_jax.data import majortom

# Long-tailed global class prior (WorldCover order, DATA.md 3).
CLASS_PRIOR = np.array([0.26, 0.09, 0.17, 0.13, 0.05, 0.11, 0.03, 0.10, 0.03, 0.006, 0.014])
CLASS_PRIOR = CLASS_PRIOR / CLASS_PRIOR.sum()

# Mean BOA spectra x 1e4, bands B01 B02 B03 B04 B05 B06 B07 B08 B8A B09 B11 B12 (contract order).
# Tree cover, grassland, cropland, bare and snow are measured on real L2A pixels: the class means
# of the five TerraMind scenes of eo_samples through their land-cover maps (data/real_scenes.py's
# LULC -> WorldCover table; offsets removed; docs/RESULTS.md 2.1, "What it took"). The other classes keep
# published-style signatures (their real pixels there are too few, one scene, or turbid water).
SPECTRA = np.array([
    [195, 204, 345, 249, 652, 1838, 2260, 2452, 2545, 2560, 1183, 564],      # tree cover *
    [400, 500, 800, 900, 1300, 2000, 2300, 2500, 2600, 2600, 2600, 1800],    # shrubland
    [575, 682, 990, 1295, 1727, 2273, 2530, 2636, 2847, 2851, 3281, 2442],   # grassland *
    [326, 407, 684, 837, 1240, 1964, 2237, 2421, 2531, 2559, 2369, 1639],    # cropland *
    [900, 1000, 1100, 1200, 1350, 1500, 1600, 1700, 1750, 1750, 2000, 1800],  # built-up
    [1771, 2309, 2815, 3133, 3422, 3445, 3540, 3697, 3709, 3195, 4491, 4154],  # bare *
    [6352, 6287, 5625, 5758, 5950, 5970, 5817, 6245, 5690, 5589, 956, 1014],  # snow and ice *
    [400, 500, 500, 300, 250, 200, 180, 150, 130, 100, 60, 40],              # water
    [350, 450, 700, 550, 900, 1600, 1900, 2100, 2100, 2100, 1100, 600],      # wetland
    [250, 320, 600, 320, 900, 2500, 3000, 3300, 3400, 3400, 1300, 550],      # mangroves
    [600, 700, 900, 1000, 1300, 1700, 1900, 2000, 2050, 2050, 2100, 1500],   # moss / lichen
], np.float64)
VEGETATION = np.array([1, .6, .8, .9, 0, .1, 0, 0, .7, 1, .4])   # NIR/red vigour coupling
TEXTURE = np.array([.18, .15, .12, .2, .35, .15, .05, .04, .12, .15, .12])  # log-amplitude
TEXTURE_BETA = np.array([2.5, 2.5, 3.0, 2.5, 1.4, 2.2, 3.0, 3.5, 3.0, 2.5, 2.5])
# VV, VH dB; the * classes measured on the same real pixels (S1 RTC of the TerraMind scenes).
S1_DB = np.array([[-8.6, -14.5], [-10.0, -16.5], [-12.3, -17.6], [-11.6, -18.1], [-4.0, -11.0],
                  [-16.7, -21.6], [-14.3, -21.7], [-21.0, -27.0], [-9.5, -16.0], [-7.0, -12.5],
                  [-13.0, -20.0]])
# L1C = TOA_GAIN * BOA + PATH_RADIANCE per band (B09 floored at 150 DN): least squares between
# the co-registered L1C and L2A of the five TerraMind scenes on 16 x 16 px block means (r >= 0.99,
# B09 0.94). B09 matters most: TOA water-vapour absorption keeps L1C B09 at ~1/3 of L2A's.
TOA_GAIN = np.array([0.740, 0.721, 0.658, 0.767, 0.810, 0.844, 0.872, 0.783, 0.898, 0.536, 0.921,
                     0.849])
PATH_RADIANCE = np.array([1163, 835, 567, 359, 258, 255, 263, 299, 235, -434, 3, 2], np.float64)
TOA_FLOOR = np.array([0, 0, 0, 0, 0, 0, 0, 0, 0, 150, 0, 0], np.float64)
CLOUD = np.array([5200, 5400, 5500, 5600, 5700, 5800, 5800, 5900, 5900, 4000, 3500, 2800.])
L1C_COLUMNS = contract_lib.S2_BANDS[:10] + ("B10",) + contract_lib.S2_BANDS[10:]  # stored order
GENERATOR_VERSION = 2   # 2: spectra, S1 and L1C from real pixels (1: the first hand-set model)
HF = "https://huggingface.co/datasets/Major-TOM/{folder}/resolve/main/images/part_{part:05d}.parquet"


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
  num_cells: int = 16
  cell_size: int = 128            # 10 m pixels per side (Major-TOM: 1068)
  tile_size: int = 64             # for the per-tile land-cover table (Major-TOM: 534)
  seed: int = 0
  rows_per_part: int = 16         # samples (row groups) per images/part_*.parquet
  p_missing: tuple[float, float, float] = (0.1, 0.05, 0.05)  # per modality (s1, l1c, l2a)
  p_cloudy: float = 0.3
  p_offset_baseline: float = 0.45  # N0400 / N0509
  p_n9999: float = 0.2             # N9999, offset or not (decided per tile at prepare time)
  p_nodata_corner: float = 0.1


def grf(rng: np.random.Generator, shape: tuple[int, int], beta: float) -> np.ndarray:
  """Zero-mean, unit-std Gaussian random field with a 1/f^beta power spectrum."""
  h, w = shape
  fy = np.fft.fftfreq(h)[:, None]
  fx = np.fft.rfftfreq(w)[None, :]
  f = np.sqrt(fy ** 2 + fx ** 2)
  f[0, 0] = 1.0
  spec = (rng.normal(size=f.shape) + 1j * rng.normal(size=f.shape)) * f ** (-beta / 2)
  spec[0, 0] = 0
  x = np.fft.irfft2(spec, s=shape)
  return (x - x.mean()) / max(x.std(), 1e-12)


def _class_map(rng: np.random.Generator, n: int) -> np.ndarray:
  """(n, n) WorldCover class indices: 1-3 classes as contiguous regions of a smooth field."""
  k = rng.choice([1, 2, 3], p=[0.3, 0.45, 0.25])
  classes = rng.choice(len(CLASS_PRIOR), size=k, replace=False, p=CLASS_PRIOR)
  props = rng.dirichlet(np.full(k, 2.0))
  field = grf(rng, (n, n), 3.5)
  ranks = np.argsort(np.argsort(field.ravel())).reshape(n, n) / (n * n)
  edges = np.cumsum(props)[:-1]
  return classes[np.searchsorted(edges, ranks, side="right")]


def _render_scene(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
  """The physical scene of one cell on the 10 m grid: classes, BOA, S1 dB."""
  cls = _class_map(rng, n)
  tex = np.zeros((n, n))
  for c in np.unique(cls):
    tex = np.where(cls == c, TEXTURE[c] * grf(rng, (n, n), TEXTURE_BETA[c]), tex)
  if (cls == 3).any():  # cropland parcels: stripes with a random orientation and period
    th, per = rng.uniform(0, np.pi), rng.uniform(6, 16)
    yy, xx = np.mgrid[:n, :n]
    stripes = np.sign(np.sin((xx * np.cos(th) + yy * np.sin(th)) * 2 * np.pi / per))
    tex = np.where(cls == 3, tex + 0.15 * stripes, tex)
  vigour = grf(rng, (n, n), 2.0) * VEGETATION[cls] * 0.25
  boa = SPECTRA[cls] * np.exp(tex)[..., None]
  boa[..., 3] *= np.exp(-vigour)           # red darker with vigour
  boa[..., 6:9] *= np.exp(vigour)[..., None]   # B07, B08, B8A brighter
  boa *= np.exp(0.03 * rng.normal(size=boa.shape))  # per-band noise
  s1 = S1_DB[cls] + (2.5 * tex + 1.0 * vigour)[..., None]
  return {"cls": cls, "boa": boa, "s1_db": s1}


def _cloud_alpha(rng: np.random.Generator, n: int) -> np.ndarray:
  cover = rng.uniform(0.05, 0.7)
  f = grf(rng, (n, n), 3.0)
  thr = np.quantile(f, 1 - cover)
  return np.clip((f - thr) * 2.0, 0, 1)


def _nodata_corner(rng: np.random.Generator, n: int) -> np.ndarray:
  """A swath-edge triangle in one corner (never a whole 2x2 tile: legs < 0.6 n)."""
  yy, xx = np.mgrid[:n, :n]
  leg = rng.uniform(0.2, 0.55) * n
  corner = rng.integers(4)
  if corner & 1:
    xx = n - 1 - xx
  if corner & 2:
    yy = n - 1 - yy
  return xx + yy < leg


def to_native(x: np.ndarray, factor: int, valid: np.ndarray) -> np.ndarray:
  """Block-average a 10 m band to a `factor`-times coarser grid of ceil(n / factor) pixels."""
  n = x.shape[0]
  m = math.ceil(n / factor)
  pad = m * factor - n
  xp = np.pad(np.where(valid, x, 0.0), ((0, pad), (0, pad)), mode="edge")
  vp = np.pad(valid.astype(np.float64), ((0, pad), (0, pad)), mode="edge")
  xs = xp.reshape(m, factor, m, factor).sum((1, 3))
  vs = vp.reshape(m, factor, m, factor).sum((1, 3))
  return np.where(vs >= factor * factor / 2, xs / np.maximum(vs, 1), 0.0)


def _s2_dn(values: np.ndarray, valid: np.ndarray, offset: bool) -> np.ndarray:
  dn = np.clip(np.rint(values), 1, 65535 - 1000)
  if offset:
    dn = dn + 1000
  return np.where(valid, dn, 0).astype(np.uint16)


@dataclasses.dataclass
class Product:
  modality: str
  product_id: str
  timestamp: str
  bands: dict[str, np.ndarray]     # native-GSD arrays by column name
  offset: bool | None
  cloud_cover: float
  nodata: float
  cloud_mask: np.ndarray | None


def _baseline(rng: np.random.Generator, cfg: SyntheticConfig) -> tuple[str, bool]:
  u = rng.uniform()
  if u < cfg.p_offset_baseline:
    return str(rng.choice(["0400", "0509"])), True
  if u < cfg.p_offset_baseline + cfg.p_n9999:
    return "9999", bool(rng.uniform() < 0.5)
  return str(rng.choice(["0208", "0301"])), False


def _s2_product(rng, cfg, scene, level: str, mgrs: str, date: str) -> Product:
  n = scene["cls"].shape[0]
  refl = scene["boa"].copy()
  b10 = rng.uniform(5, 40) + 3 * np.abs(grf(rng, (n, n), 3.0))
  if level == "L1C":
    refl = np.maximum(TOA_GAIN * refl + PATH_RADIANCE, TOA_FLOOR)
  cloudy = rng.uniform() < cfg.p_cloudy
  alpha = _cloud_alpha(rng, n) if cloudy else np.zeros((n, n))
  refl = (1 - alpha[..., None]) * refl + alpha[..., None] * CLOUD
  b10 = b10 + alpha * rng.uniform(300, 900)
  valid = ~(_nodata_corner(rng, n) if rng.uniform() < cfg.p_nodata_corner else np.zeros((n, n),
                                                                                       bool))
  baseline, offset = _baseline(rng, cfg)
  columns = L1C_COLUMNS if level == "L1C" else contract_lib.S2_BANDS
  bands = {}
  for col in columns:
    x = b10 if col == "B10" else refl[..., contract_lib.S2_BANDS.index(col)]
    f = contract_lib.BAND_GSD_M[col] // 10
    native = x if f == 1 else to_native(x, f, valid)
    nvalid = valid if f == 1 else native > 0
    bands[col] = _s2_dn(native, nvalid, offset)
  sat = "S2A" if rng.uniform() < 0.5 else "S2B"
  pid = (f"{sat}_MSI{level}_{date}_N{baseline}_R{rng.integers(1, 144):03d}_T{mgrs}_"
         f"{date[:8]}T{rng.integers(100000, 235959):06d}")
  return Product(f"s2_{level.lower()}", pid, iso_time(date), bands, offset,
                  float(100 * (alpha > 0.5).mean()), float(1 - valid.mean()),
                  (alpha > 0.5).astype(np.uint8))


def _s1_product(rng, cfg, scene, date: str) -> Product:
  n = scene["cls"].shape[0]
  lin = 10 ** (scene["s1_db"] / 10) * rng.gamma(4.5, 1 / 4.5, size=(n, n, 2))
  valid = ~(_nodata_corner(rng, n) if rng.uniform() < cfg.p_nodata_corner else np.zeros((n, n),
                                                                                       bool))
  lin = np.where(valid[..., None], lin, harmonize.S1_NODATA).astype(np.float32)
  pid = (f"S1A_IW_GRDH_1SDV_{date}_{date[:9]}{int(date[9:]) + 25:06d}_0"
         f"{rng.integers(10000, 99999)}_0{rng.integers(10000, 99999):X}_{rng.integers(4096):04X}")
  return Product("s1", pid, iso_time(date), {"vv": lin[..., 0], "vh": lin[..., 1]}, None, 0.0,
                  float(1 - valid.mean()), None)


def iso_time(date: str) -> str:
  return f"{date[:4]}-{date[4:6]}-{date[6:8]} {date[9:11]}:{date[11:13]}:{date[13:15]}"


def _geotiff(arr: np.ndarray, transform, crs: str, nodata=None, driver="GTiff") -> bytes:
  from rasterio.io import MemoryFile  # pylint: disable=g-import-not-at-top
  from rasterio.transform import Affine  # pylint: disable=g-import-not-at-top
  import warnings  # pylint: disable=g-import-not-at-top
  from rasterio.errors import NotGeoreferencedWarning  # pylint: disable=g-import-not-at-top
  arr = arr if arr.ndim == 3 else arr[None]
  with MemoryFile() as mf, warnings.catch_warnings():
    warnings.simplefilter("ignore", NotGeoreferencedWarning)  # PNG thumbnails carry no CRS
    kw = dict(driver=driver, width=arr.shape[2], height=arr.shape[1], count=arr.shape[0],
              dtype=arr.dtype)
    if driver == "GTiff":
      kw.update(crs=crs, transform=Affine(*transform), nodata=nodata)
    with mf.open(**kw) as f:
      f.write(arr)
    return bytes(mf.read())


def _thumbnail(p: Product) -> bytes:
  if p.modality == "s1":
    db = 10 * np.log10(np.maximum(np.stack([p.bands["vv"], p.bands["vh"]]), 1e-10))
    rgb = np.stack([db[0], db[0] + db[1], db[1]])
    lo, hi = rgb.min((1, 2), keepdims=True), rgb.max((1, 2), keepdims=True)
    rgb = (rgb - lo) / np.maximum(hi - lo, 1e-6)
  else:
    x = np.stack([p.bands[b] for b in ("B04", "B03", "B02")]).astype(np.float64)
    rgb = np.clip(1.3 * (x / 10000) ** 0.6, 0, 1)
  return _geotiff((rgb * 255).astype(np.uint8), None, "", driver="PNG")


@dataclasses.dataclass
class Cell:
  name: str
  row: int
  col: int
  lat: float
  lon: float
  crs: str
  transform: tuple[float, ...]
  scene: dict[str, np.ndarray]
  products: dict[str, Product]
  climate: str
  region: str


def _cell_location(rng: np.random.Generator, used: set[str]) -> tuple[int, int]:
  while True:
    row = int(rng.integers(-600, 800))
    col = int(rng.integers(-grid_lib.n_cols(row) // 2, grid_lib.n_cols(row) // 2))
    if grid_lib.cell_name(row, col) not in used:
      used.add(grid_lib.cell_name(row, col))
      return row, col


def climate_zone(lat: float) -> str:
  a = abs(lat)
  return "A" if a < 15 else "B" if a < 30 else "C" if a < 45 else "D" if a < 60 else "E"


def region_of(lon: float) -> str:
  return ("americas" if lon < -30 else "europe_africa" if lon < 60 else "asia_oceania")


def _make_cell(rng: np.random.Generator, cfg: SyntheticConfig, n: int, used: set[str],
               force_all: bool = False) -> Cell:
  from rasterio.warp import transform as warp_transform  # pylint: disable=g-import-not-at-top
  row, col = _cell_location(rng, used)
  lat, lon = grid_lib.cell_bottom_left(row, col)
  epsg = grid_lib.utm_epsg(lat, lon)
  xs, ys = warp_transform("EPSG:4326", f"EPSG:{epsg}", [lon], [lat])
  x0, y0 = round(xs[0]) - 340, round(ys[0]) - 340   # Major-TOM's margin around the cell
  transform = (10.0, 0.0, float(x0), 0.0, -10.0, float(y0 + 10 * n))
  scene = _render_scene(rng, n)
  day = rng.integers(0, 365 * 5)
  products = {}
  for k, m in enumerate(contract_lib.MODALITIES):
    if not force_all and rng.uniform() < cfg.p_missing[k]:
      continue
    d = np.datetime64("2018-01-01") + np.timedelta64(int(day + rng.integers(-60, 60)), "D")
    date = f"{str(d).replace('-', '')}T{rng.integers(0, 24):02d}{rng.integers(60):02d}" \
           f"{rng.integers(60):02d}"
    mgrs = f"{(int((lon + 180) // 6) + 1):02d}{'CDEFGHJKLMNPQRSTUVWX'[min(19, int((lat + 80) // 8))]}" \
           f"{'ABCDEFGH'[rng.integers(8)]}{'ABCDEFGHJK'[rng.integers(10)]}"
    if m == "s1":
      products[m] = _s1_product(rng, cfg, scene, date)
    else:
      products[m] = _s2_product(rng, cfg, scene, "L1C" if m == "s2_l1c" else "L2A", mgrs, date)
  if not products:  # every cell has at least one modality
    return _make_cell(rng, cfg, n, used, force_all=True)
  return Cell(grid_lib.cell_name(row, col), row, col, lat, lon, f"EPSG:{epsg}", transform,
               scene, products, climate_zone(lat), region_of(lon))


def _rasters(cell: Cell, m: str) -> dict[str, harmonize.Raster]:
  a, b, c, d, e, f = cell.transform
  out = {}
  for col, arr in cell.products[m].bands.items():
    g = contract_lib.BAND_GSD_M[col.upper()] / 10
    out[col] = harmonize.Raster(arr, (a * g, b, c, d, e * g, f), cell.crs,
                                harmonize.S1_NODATA if m == "s1" else None)
  return out


def cell_codes(cell: Cell) -> np.ndarray:
  """(n, n) WorldCover codes of a cell (0 = unlabelled): a real cell carries its own."""
  if "codes" in cell.scene:
    return cell.scene["codes"]
  return np.asarray(lc_lib.CODES, np.uint8)[cell.scene["cls"]]


def tile_landcover(cls: np.ndarray, tile_size: int) -> list[tuple[int, int, lc_lib.LandCover]]:
  return tile_landcover_codes(np.asarray(lc_lib.CODES, np.uint8)[cls], tile_size)


def tile_landcover_codes(codes: np.ndarray, tile_size: int
                         ) -> list[tuple[int, int, lc_lib.LandCover]]:
  n = codes.shape[0] // tile_size
  return [(r, c, lc_lib.hist_from_codes(codes[r * tile_size:(r + 1) * tile_size,
                                              c * tile_size:(c + 1) * tile_size]))
          for r in range(n) for c in range(n)]


def write_synthetic_majortom(root: str, cfg: SyntheticConfig,
                             extra_cells: Sequence[Cell] = ()) -> dict[str, Any]:
  """Write the three Core-* folders and worldcover.parquet under `root`; returns a summary.

  `extra_cells` (real scenes, data/real_scenes.py) are written after the synthetic cells, in
  the same schema; their grid cells must not collide with each other.
  """
  import pandas as pd  # pylint: disable=g-import-not-at-top
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  if cfg.cell_size < cfg.tile_size:
    raise ValueError(f"cell_size {cfg.cell_size} < tile_size {cfg.tile_size}")
  rng = np.random.default_rng(cfg.seed)
  used: set[str] = set()
  meta: dict[str, list[dict[str, Any]]] = {m: [] for m in contract_lib.MODALITIES}
  writers: dict[str, Any] = {}
  counts = {m: 0 for m in contract_lib.MODALITIES}
  lc_rows = []
  used.update(c.name for c in extra_cells)
  if len(used) != len(extra_cells):
    raise ValueError("extra_cells: two cells share a grid cell name")
  try:
    cells = [_make_cell(rng, cfg, cfg.cell_size, used) for _ in range(cfg.num_cells)]
    for cell in cells + list(extra_cells):
      for r, c, lc in tile_landcover_codes(cell_codes(cell), cfg.tile_size):
        lc_rows.append({"grid_cell": cell.name, "tile_row": r, "tile_col": c,
                        **{k: float(v) for k, v in zip(lc_lib.HIST_COLUMNS, lc.hist)},
                        "wc_nodata": lc.nodata_frac, "climate": cell.climate,
                        "region": cell.region})
      for m, p in cell.products.items():
        folder = majortom.MODALITY_FOLDERS[m]
        part = counts[m] // cfg.rows_per_part + 1
        row_group = counts[m] % cfg.rows_per_part
        counts[m] += 1
        path = os.path.join(root, folder, "images", f"part_{part:05d}.parquet")
        rasters = _rasters(cell, m)
        row = {"product_id": p.product_id, "grid_cell": cell.name,
               "product_datetime": p.timestamp, "thumbnail": _thumbnail(p)}
        for col, r in rasters.items():
          row[col] = _geotiff(r.data, r.transform, cell.crs, r.nodata)
        if p.cloud_mask is not None:
          row["cloud_mask"] = _geotiff(p.cloud_mask, cell.transform, cell.crs)
        table = pa.Table.from_pylist([row])
        key = (m, part)
        if key not in writers:
          for k in [k for k in writers if k[0] == m]:
            writers.pop(k).close()
          os.makedirs(os.path.dirname(path), exist_ok=True)
          writers[key] = pq.ParquetWriter(path, table.schema, compression="zstd")
        writers[key].write_table(table)   # one row group per sample, as Major-TOM
        lat_c, lon_c = grid_lib.cell_bottom_left(cell.row, cell.col)
        rec = {"grid_cell": cell.name, "grid_row_u": cell.row, "grid_col_r": cell.col,
               "product_id": p.product_id, "timestamp": p.timestamp,
               "cloud_cover": p.cloud_cover, "nodata": p.nodata,
               "centre_lat": lat_c + grid_lib.DLAT / 2,
               "centre_lon": lon_c + 180.0 / grid_lib.n_cols(cell.row),
               "crs": cell.crs, "parquet_url": HF.format(folder=folder, part=part),
               "parquet_row": row_group,
               "synthetic_offset": -1 if p.offset is None else int(p.offset)}
        if m == "s1":
          rec.pop("cloud_cover")
        meta[m].append(rec)
  finally:
    for w in writers.values():
      w.close()
  for m, rows in meta.items():
    if rows:
      pd.DataFrame(rows).to_parquet(
          os.path.join(root, majortom.MODALITY_FOLDERS[m], "metadata.parquet"), index=False)
  pd.DataFrame(lc_rows).to_parquet(os.path.join(root, "worldcover.parquet"), index=False)
  summary = {"config": dataclasses.asdict(cfg), "products": counts, "cells": cfg.num_cells,
             "real_cells": [c.name for c in extra_cells]}
  with open(os.path.join(root, "synthetic.json"), "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=2)
  return summary


def make_labelled_set(num_tiles: int, *, tile_size: int, seed: int) -> dict[str, np.ndarray]:
  """Held-out labelled tiles (one per synthetic cell of `tile_size` px, all three modalities).

  The tiles go through the production harmonisation (native GSD -> 10 m, offsets, dB), so they
  match prepared tiles. Returns "s1" (N,T,T,2) float32 dB (NaN nodata), "s2_l1c", "s2_l2a"
  (N,T,T,12) uint16, "label" (N,) int32 dominant WorldCover class, "hist" (N, 11) float32.
  """
  from terrafm_jax.data import tiling  # pylint: disable=g-import-not-at-top
  cfg = SyntheticConfig(num_cells=num_tiles, cell_size=tile_size, tile_size=tile_size,
                        seed=seed, p_missing=(0.0, 0.0, 0.0), p_nodata_corner=0.0)
  rng = np.random.default_rng(seed)
  used: set[str] = set()
  out: dict[str, list[np.ndarray]] = {m: [] for m in contract_lib.MODALITIES}
  labels, hists = [], []
  for i in range(num_tiles):
    cell = _make_cell(rng, cfg, tile_size, used, force_all=True)
    refs = {m: majortom.ProductRef(m, cell.name, "<synthetic>", i, cell.products[m].product_id)
            for m in cell.products}
    data = majortom.cell_from_rasters(refs, {m: _rasters(cell, m) for m in cell.products})
    (tile,) = tiling.tile_cell(data, tile_size=tile_size, cell_ordinal=i)
    for m in contract_lib.MODALITIES:
      out[m].append(tile.arrays[m].astype(np.float32) if m == "s1" else tile.arrays[m])
    (_, _, lc), = tile_landcover(cell.scene["cls"], tile_size)
    labels.append(lc.dominant)
    hists.append(lc.hist)
  res = {m: np.stack(v) for m, v in out.items()}
  res["label"] = np.asarray(labels, np.int32)
  res["hist"] = np.stack(hists).astype(np.float32)
  return res
