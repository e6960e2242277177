"""Reader defects found with defective copies of the real Major-TOM-schema fixture (issue #8).

Each test copies `majortom_fixture_bigearthnet` (6 BigEarthNet S2 L2A + S1 cells of 120 x 120 px)
into tmp_path, breaks one band of one row group, and checks what prepare does with it.
"""
import json
import math
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from terrafm_jax.data import contract as contract_lib
from terrafm_jax.data import prepare as prepare_lib
from terrafm_jax.data.errors import BadInputError

TILE = 60          # 120 px fixture cells -> 2 x 2 tiles
ROW = 1            # the row group we break (grid cell 582U_47L in both modalities)
CELL = "582U_47L"


@pytest.fixture()
def fixture_copy(eo_samples, tmp_path):
  src = os.path.join(eo_samples, "majortom_fixture_bigearthnet")
  dst = str(tmp_path / "majortom")
  shutil.copytree(src, dst)
  return dst


def _part(root, modality):
  folder = {"s1": "Core-S1RTC", "s2_l2a": "Core-S2L2A"}[modality]
  return os.path.join(root, folder, "images", "part_00001.parquet")


def _rewrite_row(path, row, edit):
  """Rewrite a fixture part (one row per row group) with `edit(dict)` applied to row `row`."""
  rows = pq.read_table(path).to_pylist()
  assert rows[row]["grid_cell"] == CELL
  edit(rows[row])
  schema = pq.read_schema(path)
  with pq.ParquetWriter(path, schema, compression="zstd") as w:
    for r in rows:
      w.write_table(pa.Table.from_pylist([r], schema=schema))


def _read_tif(data):
  from rasterio.io import MemoryFile
  with MemoryFile(data) as mf, mf.open(driver="GTiff") as f:
    return f.read(1), tuple(f.transform)[:6], f.crs.to_string(), f.nodata


def _encode(arr, *, driver="GTiff", transform=None, crs=None, nodata=None):
  import warnings
  from rasterio.errors import NotGeoreferencedWarning
  from rasterio.io import MemoryFile
  from rasterio.transform import Affine
  arr = arr if arr.ndim == 3 else arr[None]
  kw = dict(driver=driver, width=arr.shape[2], height=arr.shape[1], count=arr.shape[0],
            dtype=arr.dtype)
  if transform is not None:
    kw.update(transform=Affine(*transform), crs=crs, nodata=nodata)
  with MemoryFile() as mf, warnings.catch_warnings():
    warnings.simplefilter("ignore", NotGeoreferencedWarning)
    with mf.open(**kw) as f:
      f.write(arr)
    return bytes(mf.read())


def _edit_band(root, modality, column, fn):
  """Decode band `column` of row ROW, apply fn(data) in place, write it back as GeoTIFF."""
  def edit(row):
    data, tr, crs, nodata = _read_tif(row[column])
    data = data.copy()
    fn(data)
    row[column] = _encode(data, transform=tr, crs=crs, nodata=nodata)
  _rewrite_row(_part(root, modality), ROW, edit)


def _run(root, **kw):
  opts = prepare_lib.PrepareOptions(tile_size=TILE, cells_per_shard=8, **kw)
  jobs, _ = prepare_lib.plan_units(root, opts, parts_dir="/nonexistent")
  result = prepare_lib.UnitResult()
  tiles = [t for j in jobs for t in prepare_lib.iter_unit(j, result)]
  return tiles, result


def _expect_hard_error(root, kind, modality, column):
  """Default mode: one BadInputError naming file / row group / column; skip mode: cell skipped."""
  path = _part(root, modality)
  with pytest.raises(BadInputError) as e:
    _run(root)
  err = e.value
  assert (err.kind, err.file, err.row_group, err.column) == (kind, path, ROW, column), err
  msg = str(err)
  assert path in msg and f"row group {ROW}" in msg and repr(column) in msg
  tiles, result = _run(root, on_error="skip")
  assert result.counts["cells_skipped"] == 1 and result.skipped_by_kind == {kind: 1}
  assert len(tiles) == 20 and CELL not in {t.grid_cell for t in tiles}
  return err


# ------------------------------------------------------- 1. bytes and georeference of every band


@pytest.mark.parametrize("column,source", [("B03", "thumbnail"), ("B05", "png16"),
                                           ("vh", "thumbnail")])
def test_band_that_is_not_a_geotiff_is_rejected(fixture_copy, column, source):
  modality = "s1" if column == "vh" else "s2_l2a"

  def edit(row):
    if source == "thumbnail":   # the row's real PNG thumbnail, 120 x 120 like a 10 m band
      row[column] = row["thumbnail"]
    else:                       # a single-band uint16 PNG of the band's native size
      data, *_ = _read_tif(row[column])
      row[column] = _encode(data, driver="PNG")
  _rewrite_row(_part(fixture_copy, modality), ROW, edit)
  err = _expect_hard_error(fixture_copy, "not_geotiff", modality, column)
  assert "GeoTIFF" in str(err)


@pytest.mark.parametrize("column,crs", [("B05", "EPSG:32630"), ("B04", None)])
def test_band_in_another_crs_is_rejected(fixture_copy, column, crs):
  def edit(row):
    data, tr, _, nodata = _read_tif(row[column])
    if crs is None:            # a plain TIFF: no CRS, no geotransform
      row[column] = _encode(data)
    else:
      row[column] = _encode(data, transform=tr, crs=crs, nodata=nodata)
  _rewrite_row(_part(fixture_copy, "s2_l2a"), ROW, edit)
  err = _expect_hard_error(fixture_copy, "wrong_crs", "s2_l2a", column)
  assert (crs or "missing") in str(err) and "EPSG:32629" in str(err)


@pytest.mark.parametrize("column,change", [
    ("B8A", lambda a, b, c, d, e, f: (a, b, c + 200.0, d, e, f)),     # origin shifted 200 m
    ("B11", lambda a, b, c, d, e, f: (a / 2, b, c, d, e / 2, f)),     # 10 m pixels on a 20 m band
    ("vh", lambda a, b, c, d, e, f: (a, b, c, d, e, f - 30.0)),       # S1 band shifted 30 m
])
def test_band_with_inconsistent_geotransform_is_rejected(fixture_copy, column, change):
  modality = "s1" if column == "vh" else "s2_l2a"

  def edit(row):
    data, tr, crs, nodata = _read_tif(row[column])
    row[column] = _encode(data, transform=change(*tr), crs=crs, nodata=nodata)
  _rewrite_row(_part(fixture_copy, modality), ROW, edit)
  _expect_hard_error(fixture_copy, "wrong_geotransform", modality, column)


def test_multiband_geotiff_is_rejected(fixture_copy):
  def edit(row):
    data, tr, crs, nodata = _read_tif(row["B12"])
    row["B12"] = _encode(np.stack([data, data]), transform=tr, crs=crs, nodata=nodata)
  _rewrite_row(_part(fixture_copy, "s2_l2a"), ROW, edit)
  err = _expect_hard_error(fixture_copy, "wrong_band_count", "s2_l2a", "B12")
  assert "2 bands" in str(err)


# ------------------------------------------------------- 2. blame the band that is wrong


@pytest.mark.parametrize("column", ["B02", "vv"])
def test_wrong_size_names_the_reference_band(fixture_copy, column):
  modality = "s1" if column == "vv" else "s2_l2a"

  def edit(row):
    data, tr, crs, nodata = _read_tif(row[column])
    row[column] = _encode(data[:100, :100].copy(), transform=tr, crs=crs, nodata=nodata)
  _rewrite_row(_part(fixture_copy, modality), ROW, edit)
  err = _expect_hard_error(fixture_copy, "wrong_size", modality, column)
  assert "(100, 100)" in str(err) and "(120, 120)" in str(err)


# ------------------------------------------------------- 3. one bad modality of a tile


def _tiles_by_id(tiles):
  return {(t.grid_cell, t.tile_row, t.tile_col): t for t in tiles}


def _s1_nodata_left_half(data):
  data[:, :TILE] = -32768.0       # the S1 swath ends inside the cell: tiles (0, 0) and (1, 0)


def test_s1_swath_edge_marks_only_s1_unavailable(fixture_copy):
  clean, _ = _run(fixture_copy)
  for col in ("vv", "vh"):
    _edit_band(fixture_copy, "s1", col, _s1_nodata_left_half)
  tiles, result = _run(fixture_copy)                       # default mode: no error
  assert len(tiles) == 24 and result.counts["tiles_skipped"] == 0
  assert result.counts["tiles_degraded"] == 2
  assert result.unavailable_by_kind == {"all_nodata": {"s1": 2}}
  got, want = _tiles_by_id(tiles), _tiles_by_id(clean)
  for (r, c) in ((0, 0), (1, 0)):
    t = got[(CELL, r, c)]
    assert t.available.tolist() == [False, False, True]
    assert "s1" not in t.arrays and t.meta["unavailable_s1"] == "all_nodata"
    np.testing.assert_array_equal(t.arrays["s2_l2a"], want[(CELL, r, c)].arrays["s2_l2a"])
  for (r, c) in ((0, 1), (1, 1)):
    t = got[(CELL, r, c)]
    assert t.available.tolist() == [True, False, True]
    np.testing.assert_array_equal(t.arrays["s1"], want[(CELL, r, c)].arrays["s1"])
  # skip mode degrades the same way (nothing is skipped)
  tiles_skip, result_skip = _run(fixture_copy, on_error="skip")
  assert len(tiles_skip) == 24 and result_skip.unavailable_by_kind == {"all_nodata": {"s1": 2}}


def test_nan_in_s1_marks_only_s1_unavailable(fixture_copy):
  def fn(data):
    data[10, 70] = np.nan         # tile (0, 1)
  _edit_band(fixture_copy, "s1", "vv", fn)
  tiles, result = _run(fixture_copy)
  assert len(tiles) == 24 and result.unavailable_by_kind == {"nan": {"s1": 1}}
  t = _tiles_by_id(tiles)[(CELL, 0, 1)]
  assert t.available.tolist() == [False, False, True] and t.meta["unavailable_s1"] == "nan"
  assert not result.errors and len(result.unavailable) == 1
  err = result.unavailable[0]
  assert (err["kind"], err["file"], err["row_group"], err["column"], err["modality"]) == (
      "nan", _part(fixture_copy, "s1"), ROW, "vv", "s1")
  assert CELL in err["grid_cell"] and "tile (0, 1)" in err["reason"]
  # a required modality that becomes unavailable drops the tile
  tiles_req, result_req = _run(fixture_copy, require=("s1", "s2_l2a"))
  assert len(tiles_req) == 23 and result_req.counts["tiles_skipped"] == 1
  assert (CELL, 0, 1) not in _tiles_by_id(tiles_req)


def test_s2_nodata_tile_keeps_valid_s1(fixture_copy):
  for col in contract_lib.S2_BANDS:
    f = contract_lib.BAND_GSD_M[col] // 10

    def fn(data, f=f):
      data[math.ceil(TILE / f):, :math.ceil(TILE / f)] = 0    # tile (1, 0)
    _edit_band(fixture_copy, "s2_l2a", col, fn)
  tiles, result = _run(fixture_copy)
  assert len(tiles) == 24 and result.unavailable_by_kind == {"all_nodata": {"s2_l2a": 1}}
  t = _tiles_by_id(tiles)[(CELL, 1, 0)]
  assert t.available.tolist() == [True, False, False] and "s2_l2a" not in t.arrays
  assert np.isfinite(t.arrays["s1"].astype(np.float32)).all()
  # when S1 is missing there too, no modality is left: the tile is dropped, prepare goes on
  for col in ("vv", "vh"):
    _edit_band(fixture_copy, "s1", col, _s1_nodata_left_half)
  tiles, result = _run(fixture_copy)
  assert len(tiles) == 23 and (CELL, 1, 0) not in _tiles_by_id(tiles)
  assert result.counts["tiles_skipped"] == 1 and result.skipped_by_kind == {"all_nodata": 1}
  assert [(e["skipped"], e["grid_cell"]) for e in result.errors] == [("tile", CELL)]
  assert result.unavailable_by_kind == {"all_nodata": {"s1": 2, "s2_l2a": 1}}


def test_prepare_writes_unavailable_modality_like_an_absent_one(fixture_copy, tmp_path):
  import pandas as pd
  import tensorflow_datasets as tfds
  for col in ("vv", "vh"):
    _edit_band(fixture_copy, "s1", col, _s1_nodata_left_half)
  out = str(tmp_path / "prepared")
  d = prepare_lib.prepare(fixture_copy, out, prepare_lib.PrepareOptions(
      tile_size=TILE, cells_per_shard=4, num_workers=1))
  index = pd.read_parquet(os.path.join(d, "index.parquet"))
  assert len(index) == 24
  bad = (index.grid_cell == CELL) & (index.tile_col == 0)
  assert (~index.has_s1[bad]).all() and index.has_s1[~bad].all() and index.has_s2_l2a.all()
  assert (index.unavailable_s1[bad] == "all_nodata").all()
  assert (index.unavailable_s1[~bad] == "").all()
  ds = tfds.data_source(f"{prepare_lib.DATASET_NAME}/tile{TILE}", data_dir=out, split="train")
  for i in np.flatnonzero(bad.to_numpy()):
    ex = ds[int(i)]
    assert ex["available"].tolist() == [False, False, True]
    assert not ex["s1"].any() and ex["s2_l2a"].any()
  report = json.load(open(os.path.join(d, "report.json")))
  assert report["modality_unavailable_by_kind"] == {"all_nodata": {"s1": 2}}
  assert report["counts"]["tiles_degraded"] == 2 and report["counts"]["tiles_written"] == 24
  assert [(e["kind"], e["modality"], e["column"]) for e in report["unavailable"]] == [
      ("all_nodata", "s1", "vv")] * 2 and not report["errors"]
