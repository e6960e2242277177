"""Real eo_samples scenes in the built-in set: crops, land cover, units, through prepare."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import rasterio

from terrafm_jax.data import real_scenes
from terrafm_jax.data import builtin
from terrafm_jax.data.errors import BadInputError


def test_crop_origins_cover_the_scene():
  assert real_scenes.crop_origins(224, 128) == [0, 96]
  assert real_scenes.crop_origins(264, 128) == [0, 68, 136]
  assert real_scenes.crop_origins(256, 128) == [0, 128]
  assert real_scenes.crop_origins(128, 128) == [0]
  assert real_scenes.crop_origins(120, 128) == []


def test_scenes_crops_and_units(eo_samples):
  scenes = real_scenes.load_scenes(eo_samples)
  names = [s.name for s in scenes]
  assert names[:5] == ["terramind/282D_485L_3_3", "terramind/38D_378R_2_3",
                       "terramind/433D_629L_3_1", "terramind/609U_541L_3_0",
                       "terramind/637U_59R_1_3"] and names[5] == "copernicusfm/T60HWB"
  assert [n.split("/")[0] for n in names[6:]] == ["bigearthnet"] * 6 + ["eolearn"] * 5
  assert not any("eurosat" in n.lower() for n in names)       # evaluation data never trains
  ben = scenes[6]
  stem = os.path.join(eo_samples, "bigearthnet_mm_examples", "BigEarthNet-S2-Example",
                      ben.name.split("/")[1], ben.name.split("/")[1])
  with rasterio.open(f"{stem}_B05.tif") as f:                  # 20 m: 60 px
    np.testing.assert_array_equal(ben.s2["s2_l2a"]["B05"][::2, ::2], f.read(1))
  assert ben.s1_db.shape == (120, 120, 2) and -40 < ben.s1_db.mean() < 0 and ben.crs == "EPSG:32633"
  eol = np.load(os.path.join(eo_samples, "eolearn_l1c", "REFERENCE_SCENES.npy"))
  np.testing.assert_array_equal(scenes[12].s2["s2_l1c"]["B8A"],
                                np.rint(eol[0, :100, :100, 8] * 1e4).astype(np.uint16))
  assert [c.size for c in real_scenes.crops(ben, 128, 0, 64)] == [64] * 4
  snow = scenes[3]
  assert set(np.unique(snow.codes)) == {70}                    # the snow scene: LULC 7 -> 70
  assert set(np.unique(np.concatenate([s.codes.ravel() for s in scenes]))) <= {
      0, 10, 30, 40, 50, 60, 70, 80, 90}
  s = scenes[0]
  with rasterio.open(os.path.join(eo_samples, "terramind_majortom", "S2L1C",
                                  "282D_485L_3_3.tif")) as f:
    b8a = f.read(9)                                            # 9th band of the file: B8A
  np.testing.assert_array_equal(s.s2["s2_l1c"]["B8A"], b8a)
  crops = real_scenes.crops(s, 128)
  assert len(crops) == 4 and crops[3].name.endswith("/r96c96")
  np.testing.assert_array_equal(crops[3].s2["s2_l2a"]["B04"], s.s2["s2_l2a"]["B04"][96:, 96:])
  a, _, c, _, e, f = s.transform
  assert crops[3].transform[2] == c + 96 * a and crops[3].transform[5] == f + 96 * e
  cell = builtin.real_cell(crops[3], set())
  lin = cell.products["s1"].bands["vv"]
  np.testing.assert_allclose(10 * np.log10(lin), crops[3].s1_db[..., 0], atol=1e-4)
  assert cell.products["s2_l1c"].bands["B01"].shape == (22, 22)          # 60 m, ceil(128 / 6)
  assert cell.products["s2_l1c"].bands["B05"].shape == (64, 64)          # 20 m


def test_missing_folder_is_named(tmp_path):
  with pytest.raises(BadInputError, match=str(tmp_path / "nowhere")):
    real_scenes.load_scenes(str(tmp_path / "nowhere"))
  os.makedirs(tmp_path / "x" / "terramind_majortom" / "LULC")
  open(tmp_path / "x" / "terramind_majortom" / "LULC" / "a.tif", "wb").close()
  with pytest.raises(BadInputError, match="S1RTC/a.tif: missing"):
    real_scenes.load_scenes(str(tmp_path / "x"))


def test_builtin_set_with_real_scenes(eo_samples, tmp_path):
  prepared = builtin.ensure_builtin_dataset(str(tmp_path), num_cells=2, cell_size=128,
                                              tile_size=64, real_root=eo_samples)
  index = pd.read_parquet(os.path.join(prepared, "index.parquet"))
  # 2 synthetic cells + 5 x 4 TerraMind crops + 9 Copernicus-FM crops of 128 px, 4 tiles each;
  # 6 BigEarthNet x 4 and 5 eo-learn x 4 crops of 64 px, one tile each.
  assert len(index) == (2 + 20 + 9) * 4 + 24 + 20
  assert index["has_s2_l1c"].sum() == (2 + 20 + 9) * 4 + 20
  assert index["has_s1"].sum() >= 20 * 4 + 24
  # The snow scene's tiles are labelled snow and ice (WorldCover index 6).
  assert (index["label"] == 6).sum() >= 16
