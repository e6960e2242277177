"""Major-TOM reader on real samples (BigEarthNet fixture, TerraMind offsets) and on bad input."""
import glob
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from terrafm_jax.data import contract as contract_lib
from terrafm_jax.data import harmonize
from terrafm_jax.data import majortom
from terrafm_jax.data import prepare as prepare_lib
from terrafm_jax.data import synthetic
from terrafm_jax.data import tiling
from terrafm_jax.data.errors import BadInputError

# S2 / S1 BigEarthNet patch of each fixture cell (eo_samples README, section 2).
PAIRS = {"536U_101R": ("S2A_MSIL2A_20170613T101031_87_48",
                       "S1A_IW_GRDH_1SDV_20170613T165043_33UUP_87_48")}


def _fixture(eo_samples):
  root = os.path.join(eo_samples, "majortom_fixture_bigearthnet")
  folders = majortom.find_modality_folders(root)
  assert set(folders) == {"s1", "s2_l2a"}
  return {m: majortom.MajorTomFolder(p, m) for m, p in folders.items()}


def test_fixture_cells_join_and_band_order(eo_samples):
  import rasterio
  idx = _fixture(eo_samples)
  assert len(idx["s2_l2a"].refs) == 6 and set(idx["s1"].refs) == set(idx["s2_l2a"].refs)
  cell = majortom.load_cell({m: ix.refs["536U_101R"] for m, ix in idx.items()})
  assert cell.shape == (120, 120) and cell.crs == "EPSG:32633"
  s2, s1 = cell.modalities["s2_l2a"].data, cell.modalities["s1"].data
  assert s2.shape == (120, 120, 12) and s1.shape == (120, 120, 2)
  s2_name, s1_name = PAIRS["536U_101R"]
  ben = os.path.join(eo_samples, "bigearthnet_mm_examples")
  for i, band in enumerate(contract_lib.S2_BANDS):
    with rasterio.open(os.path.join(ben, "BigEarthNet-S2-Example", s2_name,
                                    f"{s2_name}_{band}.tif")) as f:
      native, tr = f.read(1), tuple(f.transform)[:6]
    if native.shape == (120, 120):
      np.testing.assert_array_equal(s2[..., i], native)            # 10 m bands untouched
    else:
      f_ = 120 // native.shape[0]
      want = harmonize.resample_to_grid(harmonize.Raster(native, tr, "EPSG:32633", 0),
                                        (120, 120), cell.transform)
      np.testing.assert_allclose(s2[..., i], want, rtol=1e-6)
      # the fine pixels inside coarse pixel k stay within its neighbours' range
      k = native.shape[0] // 2
      block = s2[k * f_:(k + 1) * f_, k * f_:(k + 1) * f_, i]
      nb = native[k - 1:k + 2, k - 1:k + 2]
      assert nb.min() - 1e-3 <= block.min() and block.max() <= nb.max() + 1e-3
  for i, pol in enumerate(("VV", "VH")):
    with rasterio.open(os.path.join(ben, "BigEarthNet-S1-Example", s1_name,
                                    f"{s1_name}_{pol}.tif")) as f:
      db = f.read(1)
    np.testing.assert_allclose(s1[..., i], db, atol=1e-3)       # linear -> dB round trip


def test_fixture_tiles_split_positions(eo_samples):
  idx = _fixture(eo_samples)
  cell = majortom.load_cell({m: ix.refs["582U_47L"] for m, ix in idx.items()})
  tiles = tiling.tile_cell(cell, tile_size=60, cell_ordinal=5)
  assert [(t.tile_row, t.tile_col) for t in tiles] == [(0, 0), (0, 1), (1, 0), (1, 1)]
  t01 = tiles[1]
  assert t01.tile_index == 5 * tiling.TILE_STRIDE + 1
  np.testing.assert_array_equal(t01.arrays["s2_l2a"],
                                harmonize.to_dn_uint16(cell.modalities["s2_l2a"].data[0:60, 60:120]))
  np.testing.assert_array_equal(tiles[2].arrays["s1"],
                                cell.modalities["s1"].data[60:120, 0:60].astype(np.float16))
  assert t01.meta["offset_s2_l2a"] == 0 and t01.meta["offset_source_s2_l2a"] == "baseline"
  assert t01.available.tolist() == [True, False, True]


@pytest.mark.parametrize("sample,l1c,l2a", [
    ("282D_485L_3_3", True, False), ("38D_378R_2_3", False, False),
    ("433D_629L_3_1", True, True), ("609U_541L_3_0", True, False),
    ("637U_59R_1_3", False, False)])
def test_offset_detection_on_terramind_samples(eo_samples, sample, l1c, l2a):
  import rasterio
  base = os.path.join(eo_samples, "terramind_majortom")
  for level, want in (("S2L1C", l1c), ("S2L2A", l2a)):
    with rasterio.open(os.path.join(base, level, f"{sample}.tif")) as f:
      bands = list(f.read().astype(np.uint16))
    # no product id (TerraMesh): the decision is data-driven
    assert harmonize.offset_decision(None, bands) == (want, "detected"), (sample, level)


# ---------------------------------------------------------------- bad input


@pytest.fixture()
def tiny(tmp_path):
  cfg = synthetic.SyntheticConfig(num_cells=3, cell_size=64, tile_size=32, seed=11,
                                  rows_per_part=8, p_missing=(0, 0, 0), p_nodata_corner=0)
  synthetic.write_synthetic_majortom(str(tmp_path), cfg)
  return str(tmp_path)


def _part(root, folder):
  return glob.glob(os.path.join(root, folder, "images", "part_*.parquet"))[0]


def _rewrite(path, fn, drop=None):
  rows = pq.read_table(path).to_pylist()
  fn(rows)
  if drop:
    for r in rows:
      r.pop(drop)
  with pq.ParquetWriter(path, pa.Table.from_pylist(rows[:1]).schema) as w:
    for r in rows:
      w.write_table(pa.Table.from_pylist([r]))


def _run(root, **kw):
  opts = prepare_lib.PrepareOptions(tile_size=32, cells_per_shard=8, **kw)
  jobs, _ = prepare_lib.plan_units(root, opts, parts_dir="/nonexistent")
  result = prepare_lib.UnitResult()
  tiles = [t for j in jobs for t in prepare_lib.iter_unit(j, result)]
  return tiles, result


def _expect(root, kind, file=None, row_group=None, column=None):
  with pytest.raises(BadInputError) as e:
    _run(root)
  err = e.value
  assert err.kind == kind, err
  msg = str(err)
  if file is not None:
    assert err.file == file and file in msg
  if row_group is not None:
    assert err.row_group == row_group and f"row group {row_group}" in msg
  if column is not None:
    assert err.column == column and repr(column) in msg
  tiles, result = _run(root, on_error="skip")
  assert sum(result.skipped_by_kind.values()) >= 1 and result.skipped_by_kind.get(kind)
  assert result.errors[0]["kind"] == kind
  return tiles, result


def test_good_tiny_set_has_no_error(tiny):
  tiles, result = _run(tiny)
  assert len(tiles) == 12 and result.counts["tiles_written"] == 12
  assert not result.skipped_by_kind


def test_truncated_parquet(tiny):
  path = _part(tiny, "Core-S2L2A")
  data = open(path, "rb").read()
  with open(path, "wb") as f:
    f.write(data[: len(data) // 2])
  tiles, result = _expect(tiny, "corrupt_parquet", file=path)
  assert result.counts["cells_skipped"] == 3 and len(tiles) == 0


def test_missing_band_column(tiny):
  path = _part(tiny, "Core-S2L1C")
  _rewrite(path, lambda rows: None, drop="B05")
  tiles, _ = _expect(tiny, "missing_column", file=path, row_group=0, column="B05")
  assert not tiles


def test_band_of_wrong_size(tiny):
  path = _part(tiny, "Core-S2L2A")
  r0 = pq.read_table(path).to_pylist()[1]
  bad = synthetic._geotiff(np.ones((10, 10), np.uint16), (20.0, 0, 0, 0, -20.0, 0), "EPSG:32633")

  def fn(rows):
    rows[1]["B05"] = bad
  _rewrite(path, fn)
  tiles, result = _expect(tiny, "wrong_size", file=path, row_group=1, column="B05")
  assert len(tiles) == 8 and result.counts["cells_skipped"] == 1
  assert r0["grid_cell"] not in {t.grid_cell for t in tiles}


def _edit_band(rows, i, column, edit):
  r = majortom.decode_geotiff(rows[i][column], file="x", row_group=i, column=column)
  data = edit(r.data.copy())
  rows[i][column] = synthetic._geotiff(data, r.transform, r.crs, r.nodata)


def test_nan_tile_marks_s1_unavailable(tiny):
  path = _part(tiny, "Core-S1RTC")

  def fn(rows):
    def edit(a):
      a[40, 5] = np.nan   # tile (1, 0)
      return a
    _edit_band(rows, 2, "vv", edit)
  _rewrite(path, fn)
  for on_error in ("error", "skip"):     # a per-modality defect, not an error: S1 left out
    tiles, result = _run(tiny, on_error=on_error)
    assert len(tiles) == 12 and result.counts["tiles_skipped"] == 0
    assert result.unavailable_by_kind == {"nan": {"s1": 1}} and not result.skipped_by_kind
    (bad,) = [t for t in tiles if "unavailable_s1" in t.meta]
    assert (bad.tile_row, bad.tile_col) == (1, 0) and bad.available.tolist() == [False, True, True]
    err = result.unavailable[0]
    assert (err["kind"], err["file"], err["row_group"], err["column"]) == ("nan", path, 2, "vv")


def test_all_nodata_tile_marks_s2_unavailable(tiny):
  path = _part(tiny, "Core-S2L2A")

  def fn(rows):
    for col in contract_lib.S2_BANDS:
      def edit(a, col=col):
        f = contract_lib.BAND_GSD_M[col] // 10
        a[: -(-32 // f), : -(-32 // f)] = 0   # the native pixels covering tile (0, 0)
        return a
      _edit_band(rows, 0, col, edit)
  _rewrite(path, fn)
  tiles, result = _run(tiny)
  assert len(tiles) == 12 and result.counts["tiles_degraded"] == 1
  assert result.unavailable_by_kind == {"all_nodata": {"s2_l2a": 1}}
  (bad,) = [t for t in tiles if "unavailable_s2_l2a" in t.meta]
  assert (bad.tile_row, bad.tile_col) == (0, 0) and bad.available.tolist() == [True, True, False]
  err = result.unavailable[0]
  assert (err["kind"], err["file"], err["row_group"]) == ("all_nodata", path, 0)


def test_mismatched_modalities(tiny):
  path = _part(tiny, "Core-S1RTC")

  def fn(rows):
    for col in ("vv", "vh"):
      r = majortom.decode_geotiff(rows[0][col], file="x", row_group=0, column=col)
      a, b, c, d, e, f = r.transform
      rows[0][col] = synthetic._geotiff(r.data, (a, b, c + 50_000, d, e, f), r.crs, r.nodata)
  _rewrite(path, fn)
  tiles, result = _expect(tiny, "mismatch", file=path, row_group=0, column="vv")
  assert len(tiles) == 8 and result.counts["cells_skipped"] == 1


def test_small_shift_is_reprojected_not_rejected(tiny):
  path = _part(tiny, "Core-S1RTC")

  def fn(rows):
    for col in ("vv", "vh"):
      r = majortom.decode_geotiff(rows[0][col], file="x", row_group=0, column=col)
      a, b, c, d, e, f = r.transform
      rows[0][col] = synthetic._geotiff(r.data, (a, b, c + 10.0, d, e, f), r.crs, r.nodata)
  _rewrite(path, fn)
  tiles, result = _run(tiny)
  assert len(tiles) == 12 and result.counts["cells_realigned"] == 1
  with pytest.raises(BadInputError, match="grid differs"):
    _run(tiny, align="error")
