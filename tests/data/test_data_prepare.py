"""Prepare: TFDS layout readable without TensorFlow, index = records, stats, resume, land cover."""
import json
import os
import sys

import numpy as np
import pandas as pd
import pytest

from terrafm_jax.data import contract as contract_lib
from terrafm_jax.data import landcover as lc_lib
from terrafm_jax.data import prepare as prepare_lib


def test_tfds_data_source_reads_records_in_index_order(prepared):
  import tensorflow_datasets as tfds
  out_dir = prepared.split(f"{os.sep}{prepare_lib.DATASET_NAME}{os.sep}")[0]
  ds = tfds.data_source("majortom_tiles/tile32", data_dir=out_dir, split="train")
  index = pd.read_parquet(os.path.join(prepared, "index.parquet"))
  assert len(ds) == len(index) == 48          # 12 cells x 4 tiles
  assert (index["record"].to_numpy() == np.arange(len(index))).all()
  assert index["tile_index"].is_monotonic_increasing
  for i in (0, 17, len(ds) - 1):
    ex = ds[i]
    assert ex["tile_index"] == index["tile_index"][i]
    assert ex["grid_cell"].decode() == index["grid_cell"][i]
    assert ex["s2_l2a"].shape == (32, 32, 12) and ex["s2_l2a"].dtype == np.uint16
    assert ex["s1"].shape == (32, 32, 2) and ex["s1"].dtype == np.float16
    assert ex["available"].tolist() == [index[f"has_{m}"][i] for m in contract_lib.MODALITIES]
    for m in contract_lib.MODALITIES:
      if not ex["available"][contract_lib.MODALITIES.index(m)]:
        assert not ex[m].any()
    assert ex["label"] == index["label"][i]
  assert "tensorflow" not in sys.modules


def test_index_landcover_matches_table_and_contract_stats(prepared, synthetic_raw):
  index = pd.read_parquet(os.path.join(prepared, "index.parquet"))
  table = pd.read_parquet(os.path.join(synthetic_raw, "worldcover.parquet"))
  merged = index.merge(table, on=["grid_cell", "tile_row", "tile_col"], suffixes=("", "_t"))
  assert len(merged) == len(index)
  for c in lc_lib.HIST_COLUMNS:
    np.testing.assert_allclose(merged[c], merged[c + "_t"], atol=1e-6)
  hist = index[list(lc_lib.HIST_COLUMNS)].to_numpy()
  np.testing.assert_array_equal(index["label"], hist.argmax(1))
  assert set(index["climate"]) <= set("ABCDE")
  # contract statistics are the band statistics of what was written
  c = contract_lib.InputContract.from_json(os.path.join(prepared, "contract.json"))
  stats = json.load(open(os.path.join(prepared, "band_stats.json")))
  np.testing.assert_allclose(c["s2_l2a"].mean, stats["s2_l2a"]["mean"])
  assert c["s2_l2a"].bands == contract_lib.S2_BANDS
  assert "computed by terrafm_jax.data.prepare" in c["s2_l2a"].stats_source
  import tensorflow_datasets as tfds
  ds = tfds.data_source("majortom_tiles/tile32", data_dir=prepared.split(
      f"{os.sep}{prepare_lib.DATASET_NAME}{os.sep}")[0], split="train")
  x = np.stack([ds[i]["s2_l2a"] for i in range(len(ds)) if ds[i]["available"][2]])
  valid = x[..., 3] > 0
  np.testing.assert_allclose(c["s2_l2a"].mean[3], x[..., 3][valid].mean(), rtol=1e-6)
  np.testing.assert_allclose(c["s2_l2a"].std[3], x[..., 3][valid].std(ddof=1), rtol=1e-4)


def test_offset_decisions_match_synthetic_truth(prepared, synthetic_raw):
  index = pd.read_parquet(os.path.join(prepared, "index.parquet"))
  report = json.load(open(os.path.join(prepared, "report.json")))
  n_detected = 0
  for m, folder in (("s2_l1c", "Core-S2L1C"), ("s2_l2a", "Core-S2L2A")):
    meta = pd.read_parquet(os.path.join(synthetic_raw, folder, "metadata.parquet"))
    truth = dict(zip(meta["product_id"], meta["synthetic_offset"]))
    rows = index[index[f"has_{m}"]]
    got = rows[f"offset_{m}"].to_numpy()
    want = rows[f"product_id_{m}"].map(truth).to_numpy()
    np.testing.assert_array_equal(got, want)
    n_detected += int((rows[f"offset_source_{m}"] == "detected").sum())
    assert sum(report["offset_decisions"][m].values()) == len(rows)
  assert n_detected > 0   # N9999 products were decided from the data


def test_resume_skips_finished_shards(synthetic_raw, tmp_path):
  opts = prepare_lib.PrepareOptions(tile_size=32, cells_per_shard=4, num_workers=1,
                                    max_cells=8)
  out = str(tmp_path)
  parts = os.path.join(out, "_parts", "tile32")
  os.makedirs(parts)
  jobs, _ = prepare_lib.plan_units(synthetic_raw, opts, parts)
  assert len(jobs) == 2
  prepare_lib.write_unit_local(jobs[0])          # an "interrupted" run finished unit 0 only
  first = os.path.join(parts, "unit_00000.array_record")
  os.utime(first, (1, 1))
  # a half-written unit 1 (no .json marker) must be redone
  open(os.path.join(parts, "unit_00001.array_record.tmp"), "wb").write(b"garbage")
  d = prepare_lib.prepare(synthetic_raw, out, opts)
  n = json.load(open(os.path.join(d, "prepare.json")))["num_records"]
  assert n == 32
  shard0 = os.path.join(d, "majortom_tiles-train.array_record-00000-of-00002")
  assert os.stat(shard0).st_mtime == 1          # the finished shard was not rewritten
  assert not os.path.exists(parts)
  assert prepare_lib.prepare(synthetic_raw, out, opts) == d   # complete: skipped
  with pytest.raises(ValueError, match="other options"):
    os.makedirs(parts)
    prepare_lib.write_unit_local(jobs[0])
    prepare_lib.unit_done(prepare_lib.UnitJob(
        0, jobs[0].cells, 32, prepare_lib.PrepareOptions(tile_size=32, cells_per_shard=3),
        parts), need_shard=True)


def test_parallel_workers_and_required_modalities(synthetic_raw, tmp_path, prepared):
  opts = prepare_lib.PrepareOptions(tile_size=32, cells_per_shard=3, num_workers=2,
                                    require=contract_lib.MODALITIES)
  d = prepare_lib.prepare(synthetic_raw, str(tmp_path), opts)
  index = pd.read_parquet(os.path.join(d, "index.parquet"))
  full = pd.read_parquet(os.path.join(prepared, "index.parquet"))
  want = full[full.has_s1 & full.has_s2_l1c & full.has_s2_l2a]
  assert 0 < len(index) == len(want) < len(full)
  assert (index["label"] == -1).all()              # no land cover given
  report = json.load(open(os.path.join(d, "report.json")))
  assert report["plan"]["cells_missing_required"] == 12 - len(index) // 4


def test_worldcover_geotiffs_give_the_table_histograms(synthetic_raw, tmp_path):
  import rasterio
  from rasterio.transform import from_origin
  from rasterio.warp import Resampling, reproject
  from terrafm_jax.data import majortom
  # Render the synthetic class maps into an EPSG:4326 WorldCover-like GeoTIFF per cell.
  wc_dir = tmp_path / "wc"
  wc_dir.mkdir()
  folder = majortom.MajorTomFolder(os.path.join(synthetic_raw, "Core-S2L2A"), "s2_l2a")
  table = pd.read_parquet(os.path.join(synthetic_raw, "worldcover.parquet"))
  cells = sorted(folder.refs)[:2]
  for i, name in enumerate(cells):
    cell = majortom.load_cell({"s2_l2a": folder.refs[name]})
    rows = table[table.grid_cell == name]
    codes = np.zeros(cell.shape, np.uint8)
    # tile-level truth only: paint each tile with its dominant class
    for _, r in rows.iterrows():
      dom = lc_lib.CODES[int(np.argmax(r[list(lc_lib.HIST_COLUMNS)].to_numpy()))]
      codes[r.tile_row * 32:(r.tile_row + 1) * 32, r.tile_col * 32:(r.tile_col + 1) * 32] = dom
    from rasterio.warp import transform_bounds
    a, _, c, _, e, f = cell.transform
    b = transform_bounds(cell.crs, "EPSG:4326", c - 200, f + e * 64 - 200, c + a * 64 + 200,
                         f + 200)
    res = 1 / 12000
    w, h = int((b[2] - b[0]) / res) + 1, int((b[3] - b[1]) / res) + 1
    dst = np.zeros((h, w), np.uint8)
    tr = from_origin(b[0], b[3], res, res)
    reproject(codes, dst, src_transform=rasterio.Affine(*cell.transform), src_crs=cell.crs,
              dst_transform=tr, dst_crs="EPSG:4326", resampling=Resampling.nearest,
              src_nodata=0, dst_nodata=0)
    with rasterio.open(wc_dir / f"wc_{i}.tif", "w", driver="GTiff", width=w, height=h, count=1,
                       dtype="uint8", crs="EPSG:4326", transform=tr, nodata=0) as out:
      out.write(dst, 1)
  provider = lc_lib.WorldCoverRasters(str(wc_dir), step=2)
  for name in cells:
    cell = majortom.load_cell({"s2_l2a": folder.refs[name]})
    for _, r in table[table.grid_cell == name].iterrows():
      a, b_, c, d, e, f = cell.transform
      tr = (a, b_, c + r.tile_col * 32 * a, d, e, f + r.tile_row * 32 * e)
      lc = provider.lookup(name, r.tile_row, r.tile_col, shape=(32, 32), transform=tr,
                           crs=cell.crs)
      dom = int(np.argmax(r[list(lc_lib.HIST_COLUMNS)].to_numpy()))
      assert lc is not None and lc.dominant == dom and lc.hist[dom] > 0.8


def test_beam_direct_runner_writes_the_same_records(synthetic_raw, tmp_path, prepared):
  beam = pytest.importorskip("apache_beam")
  from apache_beam.options.pipeline_options import PipelineOptions
  import tensorflow_datasets as tfds
  opts = prepare_lib.PrepareOptions(
      tile_size=32, cells_per_shard=4, runner="beam", max_cells=4,
      landcover=os.path.join(synthetic_raw, "worldcover.parquet"))
  d = prepare_lib.prepare(synthetic_raw, str(tmp_path), opts,
                          beam_options=PipelineOptions(["--runner=DirectRunner"]))
  del beam
  index = pd.read_parquet(os.path.join(d, "index.parquet"))
  ref_index = pd.read_parquet(os.path.join(prepared, "index.parquet"))
  assert len(index) == 16
  ds = tfds.data_source("majortom_tiles/tile32", data_dir=str(tmp_path), split="train")
  ref = tfds.data_source("majortom_tiles/tile32", data_dir=prepared.split(
      f"{os.sep}{prepare_lib.DATASET_NAME}{os.sep}")[0], split="train")
  for i in range(16):
    assert ds[i]["tile_index"] == index["tile_index"][i] == ref_index["tile_index"][i]
    for m in contract_lib.MODALITIES:
      np.testing.assert_array_equal(ds[i][m], ref[i][m])


def _prepare_cli(args, tmp_path):
  import subprocess
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=repo)
  return subprocess.run([sys.executable, "-m", "terrafm_jax.data.prepare", *args], cwd=tmp_path,
                        env=env, capture_output=True, text=True, timeout=300)


def test_cli_takes_config_overrides_and_writes_what_the_api_writes(prepared, synthetic_raw,
                                                                    tmp_path):
  out = tmp_path / "cli"
  p = _prepare_cli([f"--config.majortom_dir={synthetic_raw}", f"--config.out_dir={out}",
                    "--config.tile_size=32", "--config.cells_per_shard=4",
                    "--config.num_workers=1",
                    f"--config.landcover={os.path.join(synthetic_raw, 'worldcover.parquet')}"],
                   tmp_path)
  assert p.returncode == 0, p.stderr[-3000:]
  summary = json.loads(p.stdout[p.stdout.index("{"):])
  assert summary["counts"]["tiles_written"] == 48
  pd.testing.assert_frame_equal(pd.read_parquet(os.path.join(summary["dataset_dir"],
                                                             "index.parquet")),
                                pd.read_parquet(os.path.join(prepared, "index.parquet")))


@pytest.mark.parametrize("args,message", [
    (["--config.out_dir=/tmp/x"], "--config.majortom_dir is required"),
    (["--config.majortom_dir=/tmp/x", "--config.out_dir=/tmp/y", "--config.on_error=skipp"],
     "on_error must be 'error' or 'skip'"),
    (["--config.majortom_dir=/tmp/x", "--config.out_dir=/tmp/y", "--config.tile_size=big"],
     "tile_size"),
    (["--config.majortom_dir=/nonexistent", "--config.out_dir=/tmp/y"], "/nonexistent"),
])
def test_cli_bad_config_is_one_clear_error(args, message, tmp_path):
  p = _prepare_cli(args, tmp_path)
  assert p.returncode in (1, 2) and message in p.stderr, p.stderr[-2000:]


def test_cli_wrong_majortom_folder_writes_nothing(tmp_path):
  empty = tmp_path / "not_majortom"
  empty.mkdir()
  for src in (tmp_path / "nonexistent", empty):
    out = tmp_path / "out"
    p = _prepare_cli([f"--config.majortom_dir={src}", f"--config.out_dir={out}"], tmp_path)
    assert p.returncode == 1, p.stderr[-2000:]
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("[terrafm] ERROR: FileNotFoundError") and str(src) in last, last
    assert not out.exists()
