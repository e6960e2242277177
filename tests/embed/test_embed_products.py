"""Embedding products as evaluation features: our own embeddings of the real Major-TOM fixture
joined to labels this test writes, by grid cell and by geometry, compared on the same samples."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import geopandas
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from terrafm_jax.embed import embed
from terrafm_jax.eval import product_probes
from terrafm_jax.eval import products
from terrafm_jax.eval.dataset import EvalDataError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QUICK = product_probes.ProbeSettings(ks=(5,), epochs=50, lrs=(1e-2, 1e-1), num_bootstrap=500)


@pytest.fixture(scope="module")
def fixture_products(fixture_dir, model, make_opts, tmp_path_factory):
  """{"s2": folder, "fused": folder}: 6 real cells x 16 fragments of 32 px each."""
  root = tmp_path_factory.mktemp("products")
  kw = dict(fragment_size=32, fragment_stride=32, cells_per_part=4)
  out = {}
  for name, modality in (("s2", "s2_l2a"), ("fused", "fused")):
    out[name] = str(root / name)
    embed(make_opts(fixture_dir, out[name], modality=modality, **kw), model=model)
  return out


def _rows(folder: str) -> geopandas.GeoDataFrame:
  return geopandas.read_parquet(folder)


def _cell_index(gdf) -> np.ndarray:
  cells = sorted(gdf.grid_cell.unique())
  return np.asarray([cells.index(c) for c in gdf.grid_cell])


def _write_like(src: str, dst: str, embedding: np.ndarray) -> str:
  """A product with the rows of `src` and other embedding vectors (same schema and metadata)."""
  table = pq.read_table(src)
  col = pa.array([list(map(float, e)) for e in embedding], pa.list_(pa.float32()))
  table = table.set_column(table.schema.get_field_index("embedding"), "embedding", col)
  os.makedirs(dst, exist_ok=True)
  pq.write_table(table, os.path.join(dst, "part_00000.parquet"))
  return dst


def test_geometry_join_takes_the_row_under_each_point(fixture_products, tmp_path):
  gdf = _rows(fixture_products["s2"])
  centres = gdf.geometry.representative_point()
  labels = pd.DataFrame({"lon": list(centres.x) + [0.0], "lat": list(centres.y) + [0.0],
                         "label": [f"cell{c}" for c in _cell_index(gdf)] + ["cell0"]})
  labels.to_csv(tmp_path / "points.csv", index=False)
  lab = products.read_labels(str(tmp_path / "points.csv"), "geometry")
  j = products.join_product("s2", fixture_products["s2"], lab)
  # Every fragment's interior point lies under that fragment only; the point at (0, 0) under none.
  assert list(j.rows_per_sample) == [1] * len(gdf) + [0]
  assert j.counts == {"rows": 96, "rows_used": 96, "rows_without_label": 0,
                      "labels_covered": 96, "labels_not_covered": 1}
  np.testing.assert_array_equal(j.features[:-1], np.stack(gdf.embedding).astype(np.float32))


def test_grid_cell_join_means_the_cell_and_counts_what_is_left(fixture_products, tmp_path):
  gdf = _rows(fixture_products["s2"])
  cells = sorted(gdf.grid_cell.unique())
  labels = pd.DataFrame({"grid_cell": cells[:5] + ["999U_999R"], "label": list("ababab")})
  labels.to_csv(tmp_path / "cells.csv", index=False)
  lab = products.read_labels(str(tmp_path / "cells.csv"), "grid_cell")
  j = products.join_product("s2", fixture_products["s2"], lab)
  assert j.counts == {"rows": 96, "rows_used": 80, "rows_without_label": 16,
                      "labels_covered": 5, "labels_not_covered": 1}
  want = np.stack(gdf[gdf.grid_cell == cells[2]].embedding).mean(0)
  np.testing.assert_allclose(j.features[2], want, rtol=1e-6, atol=1e-7)


def test_probes_score_planted_products_and_compare_them_paired(fixture_products, tmp_path):
  gdf = _rows(fixture_products["s2"])
  y = _cell_index(gdf)
  part = sorted(os.listdir(fixture_products["s2"]))
  part = os.path.join(fixture_products["s2"], next(p for p in part if p.endswith(".parquet")))
  # The planted products keep only the first part's rows: the label's one-hot (+ noise), and the
  # same vectors dealt to the wrong rows.
  first = pq.read_table(part).to_pandas()
  yy = np.asarray([sorted(gdf.grid_cell.unique()).index(c) for c in first.grid_cell])
  rng = np.random.default_rng(0)
  planted = np.eye(6)[yy] + 0.05 * rng.standard_normal((len(yy), 6))
  _write_like(part, str(tmp_path / "planted"), planted)
  _write_like(part, str(tmp_path / "shuffled"), planted[rng.permutation(len(yy))])
  centres = gdf.geometry.representative_point()
  pd.DataFrame({"lon": centres.x, "lat": centres.y, "label": [f"c{v}" for v in y]}).to_csv(
      tmp_path / "points.csv", index=False)
  rows, summary = product_probes.evaluate(
      {"planted": str(tmp_path / "planted"), "shuffled": str(tmp_path / "shuffled"),
       "ours": fixture_products["s2"]}, str(tmp_path / "points.csv"), join="geometry",
      settings=QUICK)
  # Scored on the samples every product covers: the first part's cells.
  assert summary["num_scored"] == len(first) < 96
  assert summary["products"]["ours"]["labels_covered"] == 96
  acc = {(r.task, r.protocol): r.value for r in rows}
  assert acc[("product:planted", "knn k=5")] == 100.0
  assert acc[("product:planted", "linear")] == 100.0
  assert acc[("product:shuffled", "knn k=5")] < 60.0
  # Real fragments of one scene resemble each other: the cell (4 here) is recognised at twice
  # chance or better.
  assert acc[("product:ours", "knn k=5")] > 50.0
  vs = {(c["b"], c["setting"]): c for c in summary["comparisons"]}
  assert vs[("shuffled", "knn k=5")]["lo"] > 0.2
  assert all(r.details["num_samples"] == len(first) for r in rows)


def test_a_product_against_itself_differs_by_exactly_zero(fixture_products, tmp_path):
  gdf = _rows(fixture_products["s2"])
  pd.DataFrame({"grid_cell": sorted(gdf.grid_cell.unique()), "label": list("aabbcc")}).to_csv(
      tmp_path / "cells.csv", index=False)
  rows, summary = product_probes.evaluate(
      {"a": fixture_products["s2"], "b": fixture_products["s2"]}, str(tmp_path / "cells.csv"),
      protocols=("knn",), settings=QUICK)
  assert [(c["diff"], c["lo"], c["hi"]) for c in summary["comparisons"]] == [(0.0, 0.0, 0.0)]
  assert rows[0].value == rows[1].value


def test_bad_inputs_are_one_clear_error(fixture_products, tmp_path):
  s2 = fixture_products["s2"]
  pd.DataFrame({"grid_cell": ["a", "b"], "klass": [1, 2]}).to_csv(tmp_path / "nolabel.csv")
  with pytest.raises(EvalDataError, match=r"nolabel\.csv: no label column 'label'"):
    products.read_labels(str(tmp_path / "nolabel.csv"), "grid_cell")
  pd.DataFrame({"grid_cell": ["a", "b", "a"], "label": [1, 2, 1]}).to_csv(tmp_path / "dup.csv")
  with pytest.raises(EvalDataError, match=r"dup\.csv: row 2: grid_cell 'a' is labelled twice"):
    products.read_labels(str(tmp_path / "dup.csv"), "grid_cell")
  pd.DataFrame({"grid_cell": ["a"], "label": ["x"]}).to_csv(tmp_path / "mono.csv")
  with pytest.raises(EvalDataError, match="1 distinct label"):
    products.read_labels(str(tmp_path / "mono.csv"), "grid_cell")
  pd.DataFrame({"grid_cell": ["a", "b"], "label": ["x", "y"]}).to_csv(tmp_path / "nogeo.csv")
  with pytest.raises(EvalDataError, match=r"nogeo\.csv: join by geometry needs"):
    products.read_labels(str(tmp_path / "nogeo.csv"), "geometry")
  # A ragged embedding column names the file and the row.
  part = sorted(f for f in os.listdir(s2) if f.endswith(".parquet"))[0]
  table = pq.read_table(os.path.join(s2, part))
  emb = table.column("embedding").to_pylist()
  emb[3] = emb[3][:-1]
  os.makedirs(tmp_path / "ragged")
  pq.write_table(table.set_column(1, "embedding", pa.array(emb, pa.list_(pa.float32()))),
                 tmp_path / "ragged" / part)
  with pytest.raises(EvalDataError, match=rf"{part}: row 3: embedding has \d+ values"):
    products.read_product(str(tmp_path / "ragged"), "grid_cell")
  pq.write_table(table.drop(["grid_cell"]), tmp_path / "nocell.parquet")
  with pytest.raises(EvalDataError, match=r"nocell\.parquet: embedding parquet has no column"):
    products.read_product(str(tmp_path / "nocell.parquet"), "grid_cell")
  os.makedirs(tmp_path / "empty")
  with pytest.raises(EvalDataError, match="no .parquet files"):
    products.product_files(str(tmp_path / "empty"))
  # Labels that no product covers: one error with the counts, not an empty table.
  pd.DataFrame({"grid_cell": ["1U_1R", "2U_2R", "3U_3R"], "label": list("xyx")}).to_csv(
      tmp_path / "elsewhere.csv")
  with pytest.raises(EvalDataError, match=r"only 0 labelled sample\(s\).*s2: 0 of 3"):
    product_probes.evaluate({"s2": s2}, str(tmp_path / "elsewhere.csv"), settings=QUICK)


def test_cli_compares_two_products_with_one_command(fixture_products, cli_env, tmp_path):
  gdf = _rows(fixture_products["s2"])
  # One polygon per cell, a little inside it, written in another CRS than the products'.
  poly = gdf.dissolve("grid_cell").reset_index().to_crs("EPSG:3857")
  labels = geopandas.GeoDataFrame({"label": ["x", "y", "x", "y", "x", "y"]},
                                  geometry=list(poly.geometry.buffer(-20.0)), crs="EPSG:3857")
  labels.to_file(tmp_path / "areas.geojson", driver="GeoJSON")
  out = tmp_path / "results"
  base = [sys.executable, "-m", "terrafm_jax.eval", "--config=configs/eval.py:products",
          f"--config.products.labels={tmp_path / 'areas.geojson'}",
          "--config.products.join=geometry", "--config.products.ks=(3,)",
          "--config.products.folds=3", "--config.linear.epochs=5", f"--config.out_dir={out}"]
  proc = subprocess.run(
      base + [f"--config.products.sources=s2={fixture_products['s2']},"
              f"fused={fixture_products['fused']}"],
      cwd=REPO, env=cli_env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-4000:]
  print(proc.stdout)
  assert "6 of 6 labelled samples scored" in proc.stdout
  assert "s2 - fused (knn k=3)" in proc.stdout and "s2 - fused (linear)" in proc.stdout
  written = json.loads((out / "results.json").read_text())
  assert {r["task"] for r in written} == {"product:s2", "product:fused"}
  assert all(r["details"]["counts"]["rows_used"] == 96 for r in written)
  bad = subprocess.run(base + ["--config.products.sources=s2="], cwd=REPO, env=cli_env,
                       capture_output=True, text=True, timeout=300)
  assert bad.returncode == 2 and "expected name=path" in bad.stderr
