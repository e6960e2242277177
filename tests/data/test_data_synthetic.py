"""Synthetic Major-TOM: exact schema, native GSD, determinism, separable classes, built-in set."""
import os

import numpy as np
import pyarrow.parquet as pq

from terrafm_jax.data import builtin
from terrafm_jax.data import contract as contract_lib
from terrafm_jax.data import majortom
from terrafm_jax.data import synthetic


def test_schema_and_native_gsd(synthetic_raw):
  s2 = pq.ParquetFile(os.path.join(synthetic_raw, "Core-S2L1C", "images", "part_00001.parquet"))
  names = s2.schema_arrow.names
  assert names[:4] == ["product_id", "grid_cell", "product_datetime", "thumbnail"]
  assert set(contract_lib.S2_BANDS) | {"B10", "cloud_mask"} <= set(names)
  assert s2.metadata.num_row_groups == 5 and s2.metadata.row_group(0).num_rows == 1
  s1 = pq.ParquetFile(os.path.join(synthetic_raw, "Core-S1RTC", "images", "part_00001.parquet"))
  assert {"vv", "vh"} <= set(s1.schema_arrow.names)
  meta = pq.read_table(os.path.join(synthetic_raw, "Core-S2L2A", "metadata.parquet"))
  for c in ("grid_cell", "grid_row_u", "grid_col_r", "product_id", "timestamp", "cloud_cover",
            "nodata", "centre_lat", "centre_lon", "crs", "parquet_url", "parquet_row"):
    assert c in meta.column_names
  assert meta["parquet_url"][0].as_py().startswith("https://huggingface.co/datasets/Major-TOM/")
  folder = majortom.MajorTomFolder(os.path.join(synthetic_raw, "Core-S2L1C"), "s2_l1c")
  ref = next(iter(folder.refs.values()))
  rasters = majortom.read_product(ref)
  assert rasters["B02"].shape == (64, 64) and rasters["B05"].shape == (32, 32)
  assert rasters["B01"].shape == (11, 11) and rasters["B10"].shape == (11, 11)  # ceil(64 / 6)
  assert rasters["B01"].transform[0] == 60.0 and rasters["B02"].crs.startswith("EPSG:32")
  s1r = majortom.read_product(majortom.MajorTomFolder(
      os.path.join(synthetic_raw, "Core-S1RTC"), "s1").refs[ref.grid_cell])
  assert s1r["vv"].data.dtype == np.float32 and s1r["vv"].nodata == -32768.0


def test_deterministic_from_seed(tmp_path):
  cfg = synthetic.SyntheticConfig(num_cells=2, cell_size=32, tile_size=16, seed=9)
  synthetic.write_synthetic_majortom(str(tmp_path / "a"), cfg)
  synthetic.write_synthetic_majortom(str(tmp_path / "b"), cfg)
  for folder in ("Core-S1RTC", "Core-S2L1C", "Core-S2L2A"):
    ta = pq.read_table(str(tmp_path / "a" / folder / "images" / "part_00001.parquet"))
    tb = pq.read_table(str(tmp_path / "b" / folder / "images" / "part_00001.parquet"))
    assert ta.equals(tb)


def test_labelled_set_classes_are_separable():
  train = synthetic.make_labelled_set(120, tile_size=32, seed=100)
  test = synthetic.make_labelled_set(60, tile_size=32, seed=200)
  assert train["s2_l2a"].shape == (120, 32, 32, 12) and train["label"].dtype == np.int32
  assert (np.bincount(train["label"], minlength=11) > 0).sum() >= 6    # long tail, many classes

  def feat(d):   # per-tile mean log-spectrum of L2A + mean S1 dB
    s2 = np.log1p(d["s2_l2a"].astype(np.float64)).mean((1, 2))
    s1 = np.nanmean(d["s1"], (1, 2)) / 10
    return np.concatenate([s2, s1], 1)

  ftr, fte = feat(train), feat(test)
  d = ((fte[:, None] - ftr[None]) ** 2).sum(-1)
  pred = train["label"][d.argmin(1)]
  assert (pred == test["label"]).mean() > 0.6     # 1-NN on raw spectra; chance ~0.25


def test_ensure_builtin_dataset_is_idempotent(tmp_path):
  d = builtin.ensure_builtin_dataset(str(tmp_path), num_cells=3, cell_size=32, tile_size=16,
                                       seed=1, num_workers=1)
  mtime = os.path.getmtime(os.path.join(d, "index.parquet"))
  assert builtin.ensure_builtin_dataset(str(tmp_path), num_cells=3, cell_size=32,
                                          tile_size=16, seed=1) == d
  assert os.path.getmtime(os.path.join(d, "index.parquet")) == mtime
  assert os.path.exists(os.path.join(d, "contract.json"))
