"""End-to-end runs of the embedding step on synthetic Major-TOM and the real fixture.

One CLI run (subprocess) checks the published schema and the geometry against the band GeoTIFFs
read independently here; the other runs call `embed()` in-process with the same random Mu/8 model
(same XLA flags as the subprocesses, so the same parameters and vectors).
"""
from __future__ import annotations

import glob
import hashlib
import os
import shutil

import geopandas
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import shapely

from terrafm_jax.data.errors import BadInputError
from terrafm_jax.embed import COLUMNS, embed

FOLDER = {"s2_l2a": "Core-S2L2A", "s1": "Core-S1RTC"}


def read_parts(out: str) -> pd.DataFrame:
  files = sorted(glob.glob(os.path.join(out, "part_*.parquet")))
  return pd.concat([pq.read_table(f).to_pandas() for f in files], ignore_index=True)


def assert_same_rows(a: pd.DataFrame, b: pd.DataFrame, exact: bool = True) -> None:
  assert list(a["unique_id"]) == list(b["unique_id"])
  for c in COLUMNS:
    if c == "embedding":
      x, y = np.stack(a[c]), np.stack(b[c])
      if exact:
        np.testing.assert_array_equal(x, y)
      else:
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    elif c == "pixel_bbox":
      assert [list(v) for v in a[c]] == [list(v) for v in b[c]]
    else:
      assert list(a[c]) == list(b[c]), c


def cell_source(raw: str, modality: str, grid_cell: str):
  """(metadata row, reference band bounds, CRS, transform) read straight from the image parquet."""
  from rasterio.io import MemoryFile
  folder = os.path.join(raw, FOLDER[modality])
  meta = pd.read_parquet(os.path.join(folder, "metadata.parquet"))
  row = meta[meta.grid_cell == grid_cell].iloc[0]
  path = os.path.join(folder, "images", os.path.basename(row.parquet_url))
  col = "vv" if modality == "s1" else "B02"
  data = pq.ParquetFile(path).read_row_group(int(row.parquet_row), columns=[col])[col][0].as_py()
  with MemoryFile(data) as mf, mf.open(driver="GTiff") as f:
    return row, tuple(f.bounds), f.crs.to_string(), tuple(f.transform)[:6]


def check_geometry(gdf, raw: str, modality: str) -> None:
  """Footprints inside the cell's WGS84 bounds, centre inside, UTM footprint = pixel_bbox."""
  from pyproj import Transformer
  from rasterio.warp import transform_bounds
  for cell, rows in gdf.groupby("grid_cell"):
    meta, bounds, crs, tr = cell_source(raw, modality, cell)
    lo_x, lo_y, hi_x, hi_y = transform_bounds(crs, "EPSG:4326", *bounds, densify_pts=51)
    eps = 1e-7
    to_wgs = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    for _, r in rows.iterrows():
      g = r.geometry
      assert g.geom_type == "Polygon" and g.is_valid
      gx0, gy0, gx1, gy1 = g.bounds
      assert lo_x - eps <= gx0 and gx1 <= hi_x + eps and lo_y - eps <= gy0 and gy1 <= hi_y + eps
      assert g.contains(shapely.Point(float(r.centre_lon), float(r.centre_lat)))
      assert r.utm_crs == crs == meta.crs
      c0, r0, c1, r1 = r.pixel_bbox
      want = (tr[2] + c0 * tr[0], tr[5] + r1 * tr[4], tr[2] + c1 * tr[0], tr[5] + r0 * tr[4])
      utm = shapely.from_wkt(r.utm_footprint)
      np.testing.assert_allclose(utm.bounds, want)
      assert bounds[0] <= want[0] and want[2] <= bounds[2] and bounds[1] <= want[1] \
          and want[3] <= bounds[3]
      xs, ys = to_wgs.transform(*np.asarray(utm.exterior.coords).T)
      np.testing.assert_allclose(np.stack([xs, ys], 1), np.asarray(g.exterior.coords), atol=1e-9)
      assert (r.grid_row_u, r.grid_col_r) == (meta.grid_row_u, meta.grid_col_r)
      assert r.timestamp == str(meta.timestamp)


@pytest.fixture(scope="module")
def full_out(syn_raw, model, make_opts, cli_background, tmp_path_factory) -> str:
  """An uninterrupted in-process run with the same options as the CLI run (which it starts)."""
  del cli_background
  out = str(tmp_path_factory.mktemp("embed_full") / "out")
  embed(make_opts(syn_raw, out), model=model)
  return out


def test_overlapping_strides_give_the_same_vector(syn_raw, model, make_opts, full_out, tmp_path):
  embed(make_opts(syn_raw, str(tmp_path / "s16"), fragment_stride=16), model=model)
  dense = read_parts(str(tmp_path / "s16"))
  assert len(dense) == 6 * 9 and dense.unique_id.is_unique
  base = read_parts(full_out).set_index("unique_id")
  common = dense[dense.unique_id.isin(base.index)]
  assert len(common) == len(base)       # every stride-32 fragment is also a stride-16 fragment
  got = np.stack(common.embedding)
  want = np.stack(base.loc[common.unique_id, "embedding"])
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_process_slices_and_rows_per_part(syn_raw, model, make_opts, full_out, tmp_path):
  out = str(tmp_path / "sliced")
  r1 = embed(make_opts(syn_raw, out, process_index=1, process_count=2), model=model)
  assert r1["this_run"]["parts_written"] == 1 and r1["parts_finished"] == 1
  r0 = embed(make_opts(syn_raw, out, process_index=0, process_count=2), model=model)
  assert r0["this_run"]["parts_written"] == 2 and r0["parts_finished"] == 3
  assert_same_rows(read_parts(out), read_parts(full_out))
  out = str(tmp_path / "rows")
  report = embed(make_opts(syn_raw, out, rows_per_part=12), model=model)   # 4 fragments per cell
  assert report["cells_per_part"] == 3
  assert sorted(os.path.basename(p) for p in glob.glob(os.path.join(out, "part_*"))) == [
      "part_00000-00002.parquet", "part_00003-00005.parquet"]


def _corrupt_band(raw: str, dst: str, row_group: int, column: str) -> str:
  """Copy of `raw` whose S2L2A row group `row_group` holds PNG bytes in `column`; its cell."""
  shutil.copytree(raw, dst)
  path = os.path.join(dst, "Core-S2L2A", "images", "part_00001.parquet")
  rows = pq.read_table(path).to_pylist()
  rows[row_group][column] = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
  schema = pq.read_schema(path)
  with pq.ParquetWriter(path, schema, compression="zstd") as w:
    for r in rows:
      w.write_table(pa.Table.from_pylist([r], schema=schema))
  return rows[row_group]["grid_cell"]


def test_corrupt_cell_raises_or_is_skipped_and_counted(syn_raw, model, make_opts, full_out,
                                                       tmp_path):
  raw = str(tmp_path / "raw")
  bad_cell = _corrupt_band(syn_raw, raw, 1, "B03")
  with pytest.raises(BadInputError, match=r"part_00001\.parquet.*row group 1.*'B03'") as e:
    embed(make_opts(raw, str(tmp_path / "raise")), model=model)
  assert e.value.kind == "not_geotiff" and e.value.grid_cell == bad_cell
  report = embed(make_opts(raw, str(tmp_path / "skip"), on_error="skip"), model=model)
  assert report["counts"]["cells_skipped"] == 1 and report["counts"]["cells_read"] == 5
  assert report["skipped_by_kind"] == {"not_geotiff": 1}
  err = report["errors"][0]
  assert (err["row_group"], err["column"], err["grid_cell"]) == (1, "B03", bad_cell)
  assert err["file"].endswith(os.path.join("Core-S2L2A", "images", "part_00001.parquet"))
  got = read_parts(str(tmp_path / "skip"))
  want = read_parts(full_out)
  assert bad_cell not in set(got.grid_cell) and len(got) == 20
  assert_same_rows(got, want[want.grid_cell != bad_cell].reset_index(drop=True))


def test_beam_direct_runner_writes_the_same_parts(syn_raw, model, make_opts, full_out, tmp_path):
  pytest.importorskip("apache_beam")
  out = str(tmp_path / "beam")
  report = embed(make_opts(syn_raw, out, runner="beam",
                           beam_pipeline_options="--runner=DirectRunner"), model=model)
  assert report["this_run"]["parts_written"] == 3
  assert_same_rows(read_parts(out), read_parts(full_out))


def test_real_fixture_single_and_fused(fixture_dir, model, make_opts, tmp_path):
  # 120 px cells, 32 px fragments: corners 0, 32, 64 and the border-aligned 88 -> 4 x 4 per cell.
  kw = dict(fragment_size=32, fragment_stride=32, cells_per_part=4)
  embed(make_opts(fixture_dir, str(tmp_path / "s2"), **kw), model=model)
  s2 = geopandas.read_parquet(str(tmp_path / "s2"))
  assert len(s2) == 6 * 16 and s2.unique_id.is_unique and s2.crs.to_epsg() == 4326
  assert sorted({tuple(b[:2]) for b in s2.pixel_bbox}) == [(c, r) for c in (0, 32, 64, 88)
                                                           for r in (0, 32, 64, 88)]
  check_geometry(s2, fixture_dir, "s2_l2a")
  report = embed(make_opts(fixture_dir, str(tmp_path / "fused"), modality="fused", **kw),
                 model=model)
  assert report["counts"]["rows"] == 6 * 16
  fused = read_parts(str(tmp_path / "fused"))
  ids = [p.split("|") for p in fused.product_id]
  assert all(len(i) == 2 and i[0].startswith("S1") and "MSIL2A" in i[1] for i in ids)
  assert list(fused.pixel_bbox.map(list)) == list(s2.pixel_bbox.map(list))
  assert not np.allclose(np.stack(fused.embedding), np.stack(s2.embedding))


def test_cli_writes_the_published_schema_with_right_geometry(cli_out, syn_raw):
  gdf = geopandas.read_parquet(cli_out)           # the whole folder: parts only
  assert isinstance(gdf, geopandas.GeoDataFrame)
  assert gdf.crs is not None and gdf.crs.to_epsg() == 4326
  assert tuple(gdf.columns) == COLUMNS
  names = sorted(os.path.basename(p) for p in glob.glob(os.path.join(cli_out, "part_*.parquet")))
  assert names == ["part_00000-00001.parquet", "part_00002-00003.parquet",
                   "part_00004-00005.parquet"]
  schema = pq.read_schema(os.path.join(cli_out, names[0]))
  assert schema.field("embedding").type == pa.list_(pa.float32())
  assert schema.field("grid_row_u").type == pa.int16()
  assert schema.field("centre_lat").type == pa.float32()
  assert len(gdf) == 6 * 4 and gdf.unique_id.is_unique
  assert {len(e) for e in gdf.embedding} == {64}
  for _, r in gdf.iterrows():
    key = f"{r.grid_cell}_{r.product_id}_{r.timestamp}_{'_'.join(map(str, r.pixel_bbox))}"
    assert r.unique_id == hashlib.sha256(key.encode()).hexdigest()
    assert r.product_id.startswith("S2") and "MSIL2A" in r.product_id
  check_geometry(gdf, syn_raw, "s2_l2a")
  report = pd.read_json(os.path.join(cli_out, "_report.json"), typ="series")
  assert report["counts"]["rows"] == 24 and report["counts"]["cells_read"] == 6


def test_two_runs_give_the_same_rows(cli_out, full_out):
  assert_same_rows(read_parts(cli_out), read_parts(full_out))


def test_resume_after_a_kill(syn_raw, cli, make_flags, model, make_opts, full_out, tmp_path):
  out = str(tmp_path / "out")
  p = cli(make_flags(syn_raw, out), expect_rc=75, killed_after_parts=1)
  done = glob.glob(os.path.join(out, "part_*.parquet"))
  assert [os.path.basename(d) for d in done] == ["part_00000-00001.parquet"], p.stderr[-2000:]
  half = glob.glob(os.path.join(out, ".part_00002-00003.parquet.tmp-*"))
  assert half, "the killed run should leave its half-written part under a temporary name"
  before = os.stat(done[0])
  report = embed(make_opts(syn_raw, out), model=model)
  assert report["this_run"]["parts_written"] == 2
  after = os.stat(done[0])
  assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
  assert not glob.glob(os.path.join(out, ".part_*"))
  resumed = read_parts(out)
  assert resumed.unique_id.is_unique
  assert_same_rows(resumed, read_parts(full_out))
  assert embed(make_opts(syn_raw, out), model=model)["this_run"]["parts_written"] == 0
  with pytest.raises(ValueError, match="fragment_stride"):
    embed(make_opts(syn_raw, out, fragment_stride=16), model=model)


def test_no_parquet_is_one_clear_error(cli, make_flags, tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  p = cli(make_flags(str(empty), str(tmp_path / "out")), expect_rc=1)
  err = [line for line in p.stderr.splitlines() if "[terrafm] ERROR" in line]
  assert len(err) == 1 and "no Major-TOM parquet found" in err[0] and str(empty) in err[0]
  assert not os.path.exists(tmp_path / "out")
  (empty / "Core-S2L2A" / "images").mkdir(parents=True)
  from terrafm_jax.embed import plan
  with pytest.raises(BadInputError, match="hold no product"):
    plan.plan_cells(str(empty), ("s2_l2a",))
  with pytest.raises(BadInputError, match="not s1"):
    plan.plan_cells(str(empty), ("s1",))
