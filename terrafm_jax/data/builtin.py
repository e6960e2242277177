"""The built-in pretraining set of the smoke run: synthetic cells and real scenes, prepared once.

    ensure_builtin_dataset(root, *, num_cells, cell_size, tile_size, seed, real_root, real_stride)
      -> the prepared dataset directory that `pipeline.make_train_iterator` reads

Synthetic cells come from data/synthetic.py; the unlabelled real scenes of an eo_samples folder
(data/real_scenes.py) become cells of the same Major-TOM schema here (`real_cell`), and the whole
set goes through the production prepare stage.
"""
from __future__ import annotations

import os

import numpy as np

from terrafm_jax.data import contract as contract_lib
from terrafm_jax.data import grid as grid_lib
from terrafm_jax.data import prepare
from terrafm_jax.data import real_scenes
from terrafm_jax.data import synthetic


def real_cell(scene, used: set[str]) -> synthetic.Cell:
  """A cell from a real scene crop (data/real_scenes.py), written as Major-TOM rows.

  S2 bands are block-averaged to their native GSD and keep their stored DN (offsets included:
  N9999 product ids make prepare decide them from the data); S1 dB becomes Major-TOM's linear
  power. The grid cell is the one holding the crop's centre, or the next free row north of it
  (Major-TOM keys products by cell, and the crops of one scene share a cell).
  """
  row, col = grid_lib.parse_cell(grid_lib.latlon_to_cell(scene.lat, scene.lon))
  while grid_lib.cell_name(row, col) in used:
    row += 1
  used.add(grid_lib.cell_name(row, col))
  n = scene.size
  valid = np.ones((n, n), bool)
  date = "20200101T000000"   # the scenes carry no S2 acquisition time; placeholder
  products = {}
  for m, bands in scene.s2.items():
    level = "L1C" if m == "s2_l1c" else "L2A"
    native = {}
    for b, x in bands.items():
      f = contract_lib.BAND_GSD_M[b] // 10
      v = x.astype(np.float64) if f == 1 else synthetic.to_native(x.astype(np.float64), f, valid)
      native[b] = np.clip(np.rint(v), 1, 65535).astype(np.uint16)
    pid = f"S2A_MSI{level}_{date}_N9999_R000_T00XXX_{date}"
    products[m] = synthetic.Product(m, pid, synthetic.iso_time(date), native, None, 0.0, 0.0,
                                    np.zeros((n, n), np.uint8))
  if scene.s1_db is not None:
    lin = (10.0 ** (scene.s1_db / 10.0)).astype(np.float32)
    pid = f"S1A_IW_GRDH_1SDV_{date}_{date}_000000_000000_0000"
    products["s1"] = synthetic.Product("s1", pid, synthetic.iso_time(date),
                                       {"vv": lin[..., 0], "vh": lin[..., 1]}, None, 0.0, 0.0, None)
  lat, lon = grid_lib.cell_bottom_left(row, col)
  return synthetic.Cell(grid_lib.cell_name(row, col), row, col, lat, lon, scene.crs,
                        scene.transform, {"codes": scene.codes}, products,
                        synthetic.climate_zone(scene.lat), synthetic.region_of(scene.lon))


def ensure_builtin_dataset(root: str, *, num_cells: int = 64, cell_size: int = 128,
                           tile_size: int = 64, seed: int = 0, num_workers: int = 0,
                           real_root: str = "", real_stride: int = 0) -> str:
  """Write synthetic Major-TOM under `root/majortom` (once) and prepare it under `root/prepared`.

  `real_root`: an eo_samples folder whose unlabelled real scenes (data/real_scenes.py) are cut
  into `cell_size` crops every `real_stride` px (0: the fewest that cover each scene) and written
  beside the synthetic cells. Both steps are skipped when
  already done with the same parameters; returns the prepared dataset directory (the argument of
  `pipeline.make_train_iterator`).
  """
  cfg = synthetic.SyntheticConfig(num_cells=num_cells, cell_size=cell_size, tile_size=tile_size, seed=seed)
  extra: list[synthetic.Cell] = []
  if real_root:
    used: set[str] = set()
    extra = [real_cell(c, used) for s in real_scenes.load_scenes(real_root)
             for c in real_scenes.crops(s, cell_size, real_stride, tile_size)]
  # The generator's version is in the folder name: a changed scene model never reuses a set
  # written by an older one.
  tag = (f"v{synthetic.GENERATOR_VERSION}_n{num_cells}_c{cell_size}_t{tile_size}_s{seed}"
         + (f"_real{len(extra)}s{real_stride}" if extra else ""))
  raw = os.path.join(root, "majortom", tag)
  marker = os.path.join(raw, "synthetic.json")
  if not os.path.exists(marker):
    tmp = raw + ".tmp"
    if os.path.exists(tmp):
      import shutil  # pylint: disable=g-import-not-at-top
      shutil.rmtree(tmp)
    os.makedirs(tmp)
    synthetic.write_synthetic_majortom(tmp, cfg, extra)
    os.replace(tmp, raw)
  return prepare.prepare(
      raw, os.path.join(root, "prepared", tag),
      prepare.PrepareOptions(tile_size=tile_size, landcover=os.path.join(raw, "worldcover.parquet"),
                             num_workers=num_workers))
