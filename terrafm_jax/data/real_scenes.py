"""Unlabelled real Sentinel scenes for the built-in pretraining set (never EuroSAT).

The built-in set (data/synthetic.py) mixes its synthetic cells with real scenes read from an
eo_samples folder (the repository's CI and development machines have one beside the checkout):

  terramind_majortom/{S1RTC,S2L1C,S2L2A,LULC}/<cell>.tif   5 co-registered tri-modal 224 px scenes
      (S1 RTC in dB as float64; L1C with B10; L2A; +1000 offsets in some files) and a land-cover
      map in TerraMesh's ESRI-derived coding, translated to WorldCover codes (LULC_TO_WORLDCOVER)
      only to stratify sampling and feed the dual centering, as the real pipeline does;
  copernicusfm_l1c/T60HWB_S2L1C.tif                        one 264 px L1C scene (no land cover);
  bigearthnet_mm_examples/                                 6 European 120 px L2A patches (bands
      at native GSD) with their S1 GRD sigma0 dB pairs (2017-2018; no per-pixel land cover);
  eolearn_l1c/REFERENCE_SCENES.npy                         5 dates of one 100 px L1C patch
      (Slovenia, TOA reflectance 0..1, no georeference: anchored at eo-learn's documented corner).

Each scene is cut into `cell_size` px crops that cover it (overlapping where the size does not
divide; smaller scenes into tile-sized crops); the crops are written as Major-TOM rows by the synthetic writer and go through the same
prepare stage, offset detection and normalisation as every other cell. Offsets are left in the
pixels and decided from the data at prepare time (N9999 products), as for a real product without
a processing baseline. The labelled EuroSAT images are evaluation data and are never read here.
"""
from __future__ import annotations

import dataclasses
import math
import os

import numpy as np

from terrafm_jax.data.errors import BadInputError

# TerraMesh LULC ids -> WorldCover codes. The coding is undocumented; it matches the ESRI 10-class
# legend renumbered 1..9 (water, trees, flooded vegetation, crops, built area, bare ground,
# snow/ice, clouds, rangeland), which the scenes' class spectra confirm (low-NIR water, dark-red
# high-NIR trees, the snow scene all 7, bright bare ground). Clouds (8) and 0 are left unlabelled.
LULC_TO_WORLDCOVER = {1: 80, 2: 10, 3: 90, 4: 40, 5: 50, 6: 60, 7: 70, 8: 0, 9: 30}
_L1C_13 = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11",
           "B12")


@dataclasses.dataclass
class RealScene:
  name: str                          # e.g. "terramind/282D_485L_3_3"
  crs: str
  transform: tuple[float, ...]       # 10 m affine (a, b, c, d, e, f) of pixel (0, 0)
  lat: float
  lon: float
  s2: dict[str, np.ndarray]          # modality -> {band: (H, W) DN as stored} for s2_l1c / s2_l2a
  s1_db: np.ndarray | None           # (H, W, 2) VV, VH in dB, or None
  codes: np.ndarray                  # (H, W) uint8 WorldCover codes (0 = unlabelled)

  @property
  def size(self) -> int:
    return min(self.codes.shape)


def _read(path: str, gsd: float | None = 10.0
          ) -> tuple[np.ndarray, tuple[str, tuple[float, ...], float, float]]:
  """The pixels and (crs, transform, centre lat, centre lon) of one GeoTIFF; `gsd`: the pixel
  size it must have (None: any)."""
  import rasterio  # pylint: disable=g-import-not-at-top
  from rasterio.warp import transform as warp_transform  # pylint: disable=g-import-not-at-top
  try:
    with rasterio.open(path) as f:
      x, t, crs, w, h = f.read(), f.transform, f.crs, f.width, f.height
  except rasterio.errors.RasterioError as err:
    raise BadInputError(f"{path}: not a readable GeoTIFF ({err})") from err
  if crs is None or (gsd is not None and abs(t.a) != gsd):
    raise BadInputError(f"{path}: expected a georeferenced {gsd} m grid, got crs {crs}, pixel "
                        f"{t.a}")
  cx, cy = t.c + t.a * w / 2, t.f + t.e * h / 2
  lon, lat = warp_transform(crs, "EPSG:4326", [cx], [cy])
  return x, (crs.to_string(), (t.a, t.b, t.c, t.d, t.e, t.f), float(lat[0]), float(lon[0]))


def _bands(x: np.ndarray, names: tuple[str, ...], path: str) -> dict[str, np.ndarray]:
  if x.shape[0] != len(names):
    raise BadInputError(f"{path}: {x.shape[0]} bands, expected {len(names)} {names}")
  return {b: x[i] for i, b in enumerate(names)}


def _terramind(folder: str) -> list[RealScene]:
  out = []
  lulc_dir = os.path.join(folder, "LULC")
  for name in sorted(os.listdir(lulc_dir)):
    paths = {k: os.path.join(folder, k, name) for k in ("S1RTC", "S2L1C", "S2L2A", "LULC")}
    for p in paths.values():
      if not os.path.exists(p):
        raise BadInputError(f"{p}: missing (each scene needs S1RTC, S2L1C, S2L2A and LULC)")
    lulc, (crs, transform, lat, lon) = _read(paths["LULC"])
    lut = np.zeros(256, np.uint8)
    for k, v in LULC_TO_WORLDCOVER.items():
      lut[k] = v
    s1, _ = _read(paths["S1RTC"])
    if s1.shape[0] != 2:
      raise BadInputError(f"{paths['S1RTC']}: {s1.shape[0]} bands, expected VV, VH")
    l1c, _ = _read(paths["S2L1C"])
    l2a, _ = _read(paths["S2L2A"])
    out.append(RealScene(
        f"terramind/{os.path.splitext(name)[0]}", crs, transform, lat, lon,
        {"s2_l1c": _bands(l1c, _L1C_13, paths["S2L1C"]),
         "s2_l2a": _bands(l2a, tuple(b for b in _L1C_13 if b != "B10"), paths["S2L2A"])},
        np.moveaxis(s1, 0, -1).astype(np.float64), lut[lulc[0]]))
  return out


def _copernicus(path: str) -> RealScene:
  x, (crs, transform, lat, lon) = _read(path)
  return RealScene("copernicusfm/T60HWB", crs, transform, lat, lon,
                   {"s2_l1c": _bands(x, _L1C_13, path)}, None,
                   np.zeros(x.shape[1:], np.uint8))


def _bigearthnet(folder: str) -> list[RealScene]:
  """BigEarthNet-MM example pairs: 120 px S2 L2A (one file per band at its native GSD) and the
  S1 GRD sigma0 dB patch named by the S1 JSON's corresponding_s2_patch (2017-2018, Europe)."""
  import json  # pylint: disable=g-import-not-at-top
  s2_dir = os.path.join(folder, "BigEarthNet-S2-Example")
  s1_dir = os.path.join(folder, "BigEarthNet-S1-Example")
  s1_of = {}
  for d in sorted(os.listdir(s1_dir)) if os.path.isdir(s1_dir) else []:
    meta = os.path.join(s1_dir, d, f"{d}_labels_metadata.json")
    try:
      with open(meta, encoding="utf-8") as f:
        s1_of[json.load(f)["corresponding_s2_patch"]] = os.path.join(s1_dir, d, d)
    except (OSError, KeyError, ValueError) as err:
      raise BadInputError(f"{meta}: no readable corresponding_s2_patch ({err})") from err
  out = []
  for d in sorted(os.listdir(s2_dir)):
    stem = os.path.join(s2_dir, d, d)
    bands = {}
    for b in _L1C_13:
      if b == "B10":
        continue
      x, _ = _read(f"{stem}_{b}.tif", gsd=None)
      bands[b] = x[0]
    n = bands["B02"].shape[0]
    ref = _read(f"{stem}_B02.tif")[1]
    for b, x in bands.items():        # 20 m / 60 m bands onto the 10 m grid (block copies)
      f = n // x.shape[0]
      if f * x.shape[0] != n:
        raise BadInputError(f"{stem}_{b}.tif: {x.shape[0]} px does not divide B02's {n}")
      bands[b] = np.repeat(np.repeat(x, f, axis=0), f, axis=1)
    s1 = None
    if d in s1_of:
      s1 = np.stack([_read(f"{s1_of[d]}_{p}.tif")[0][0] for p in ("VV", "VH")], -1)
    out.append(RealScene(f"bigearthnet/{d}", ref[0], ref[1], ref[2], ref[3], {"s2_l2a": bands},
                         None if s1 is None else s1.astype(np.float64),
                         np.zeros((n, n), np.uint8)))
  return out


# eo-learn's REFERENCE_SCENES carry no georeference; eo-learn documents the patch's bounding box
# (EPSG:32633, Slovenia) and the pixels are ~10 m, so the grid is anchored at its top-left corner.
_EOLEARN_CRS, _EOLEARN_ORIGIN = "EPSG:32633", (465181.05, 5080254.63)


def _eolearn(path: str) -> list[RealScene]:
  """eo-learn's (5, 101, 100, 13) L1C TOA reflectance time series, as DN (x 1e4), 5 scenes."""
  try:
    x = np.load(path)
  except (OSError, ValueError) as err:
    raise BadInputError(f"{path}: not a readable .npy ({err})") from err
  if x.ndim != 4 or x.shape[-1] != 13:
    raise BadInputError(f"{path}: shape {x.shape}, expected (time, y, x, 13 L1C bands)")
  from rasterio.warp import transform as warp_transform  # pylint: disable=g-import-not-at-top
  n = min(x.shape[1:3])
  x0, y0 = _EOLEARN_ORIGIN
  lon, lat = warp_transform(_EOLEARN_CRS, "EPSG:4326", [x0 + 5 * n], [y0 - 5 * n])
  dn = np.clip(np.rint(x[:, :n, :n] * 10000.0), 1, 65535).astype(np.uint16)
  return [RealScene(f"eolearn/t{t}", _EOLEARN_CRS, (10.0, 0.0, x0, 0.0, -10.0, y0),
                    float(lat[0]), float(lon[0]),
                    {"s2_l1c": {b: dn[t, ..., i] for i, b in enumerate(_L1C_13)}}, None,
                    np.zeros((n, n), np.uint8)) for t in range(len(dn))]


def eo_samples_root() -> str:
  """The eo_samples folder beside the checkout (../shared/eo_samples): the real scenes of the
  built-in set and the evaluation samples (eval/readers/eosamples.py, eval/readers/eurosat.py) default to it."""
  here = os.path.dirname(os.path.abspath(__file__))
  return os.path.normpath(os.path.join(here, "..", "..", "..", "shared", "eo_samples"))


def load_scenes(root: str) -> list[RealScene]:
  """Every real scene under an eo_samples folder; BadInputError naming a missing or bad file."""
  if not os.path.isdir(root):
    raise BadInputError(f"{root}: no such eo_samples folder (the real scenes of the built-in set)")
  tm = os.path.join(root, "terramind_majortom")
  cf = os.path.join(root, "copernicusfm_l1c", "T60HWB_S2L1C.tif")
  if not os.path.isdir(tm):
    raise BadInputError(f"{tm}: missing (the tri-modal real scenes of the built-in set)")
  scenes = _terramind(tm)
  if os.path.exists(cf):
    scenes.append(_copernicus(cf))
  ben = os.path.join(root, "bigearthnet_mm_examples")
  if os.path.isdir(ben):
    scenes += _bigearthnet(ben)
  eol = os.path.join(root, "eolearn_l1c", "REFERENCE_SCENES.npy")
  if os.path.exists(eol):
    scenes += _eolearn(eol)
  return scenes


def crop_origins(size: int, cell: int, stride: int = 0) -> list[int]:
  """Top-left offsets of `cell`-px crops of a `size`-px side: every `stride` px and the last one
  flush with the edge; stride 0: the fewest crops that cover it (evenly spread)."""
  if size < cell:
    return []
  if stride > 0:
    return sorted(set(range(0, size - cell + 1, stride)) | {size - cell})
  n = math.ceil(size / cell)
  return sorted({round(i * (size - cell) / max(n - 1, 1)) for i in range(n)})


def crops(scene: RealScene, cell: int, stride: int = 0, tile: int = 0) -> list[RealScene]:
  """The scene cut into `cell` x `cell` crops (crop_origins) with their own transforms; a scene
  smaller than `cell` is cut into the largest multiple of `tile` that fits (none below `tile`)."""
  if scene.size < cell and tile > 0:
    cell = scene.size // tile * tile
    if cell == 0:
      return []
  out = []
  a, b, c, d, e, f = scene.transform
  for r in crop_origins(scene.codes.shape[0], cell, stride):
    for q in crop_origins(scene.codes.shape[1], cell, stride):
      win = (slice(r, r + cell), slice(q, q + cell))
      out.append(dataclasses.replace(
          scene, name=f"{scene.name}/r{r}c{q}", transform=(a, b, c + a * q, d, e, f + e * r),
          s2={m: {k: v[win] for k, v in bands.items()} for m, bands in scene.s2.items()},
          s1_db=None if scene.s1_db is None else scene.s1_db[win], codes=scene.codes[win]))
  return out
