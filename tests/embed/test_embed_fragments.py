"""Fragment grid, footprints, ids, per-fragment availability and the arrow schema (no model)."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

from terrafm_jax.embed import fragments as fr
from terrafm_jax.embed import inputs as inputs_lib
from terrafm_jax.embed import schema


def test_published_grid_and_default_grid():
  # Major-TOM's expansions: 224 px, 10 % target overlap on 1068 px -> stride 211, 5 x 5.
  assert fr.axis_positions(1068, 224, 211) == [0, 211, 422, 633, 844]
  assert len(fr.fragment_grid((1068, 1068), 224, 211)) == 25
  # Default stride = size: 4 regular positions plus the border-aligned one.
  assert fr.axis_positions(1068, 224, 224) == [0, 224, 448, 672, 844]
  assert fr.axis_positions(1068, 224, 224, cover_border=False) == [0, 224, 448, 672]
  # Real fixture cells are 120 px.
  assert fr.axis_positions(120, 64, 56) == [0, 56]
  assert fr.axis_positions(120, 120, 224) == [0]
  assert fr.axis_positions(64, 128, 32) == []
  for f in fr.fragment_grid((1068, 1068), 224, 224):
    assert 0 <= f.row0 and f.row0 + f.size <= 1068 and 0 <= f.col0 and f.col0 + f.size <= 1068
  with pytest.raises(ValueError):
    fr.axis_positions(100, 0, 10)


def test_fragment_order_and_pixel_bbox():
  grid = fr.fragment_grid((64, 96), 32, 32)
  assert [(f.frag_row, f.frag_col) for f in grid] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1),
                                                       (1, 2)]
  assert [f.index for f in grid] == list(range(6))
  assert grid[1].pixel_bbox == [32, 0, 64, 32]        # [col_min, row_min, col_max, row_max]


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")   # rasterio's own Affine use
def test_footprints_match_the_rasterio_window_and_reproject():
  from rasterio.transform import Affine
  from rasterio.windows import Window, bounds
  import shapely
  transform = (10.0, 0.0, 399960.0, 0.0, -10.0, 5000040.0)      # north-up, EPSG:32633
  grid = fr.fragment_grid((1068, 1068), 224, 211)
  fp = fr.footprints(grid, transform, "EPSG:32633")
  for k, f in enumerate(grid):
    want = bounds(Window(f.col0, f.row0, f.size, f.size), Affine(*transform))
    got = shapely.from_wkt(fp.utm_wkt[k]).bounds
    np.testing.assert_allclose(got, want)
    poly = shapely.from_wkb(fp.wgs84_wkb[k])
    assert poly.is_valid and len(poly.exterior.coords) == 5
    assert poly.contains(shapely.Point(fp.centre_lon[k], fp.centre_lat[k]))
  # Fragment (0, 1) lies east of fragment (0, 0); (1, 0) south of it.
  assert fp.centre_lon[1] > fp.centre_lon[0] and fp.centre_lat[5] < fp.centre_lat[0]


def test_unique_id_is_a_deterministic_hash_of_the_fragment():
  f = fr.Fragment(0, 0, 1, 0, 32, 32)
  uid = fr.unique_id("454U_120R", "S2B_MSIL2A_X", "2022-07-19 09:55:59", f)
  assert uid == hashlib.sha256(b"454U_120R_S2B_MSIL2A_X_2022-07-19 09:55:59_32_0_64_32").hexdigest()
  assert uid != fr.unique_id("454U_121R", "S2B_MSIL2A_X", "2022-07-19 09:55:59", f)


def test_timestamp_falls_back_to_the_product_sensing_time():
  assert inputs_lib.product_timestamp("2017-06-13 10:10:31", "x") == "2017-06-13 10:10:31"
  assert inputs_lib.product_timestamp(
      None, "S2A_MSIL2A_20170613T101031_N0205_R022_T33UUP_20170613T101608") == "20170613T101031"
  assert inputs_lib.product_timestamp(None, None) == ""


def test_availability_rule_per_fragment():
  h = 8
  valid = np.ones((h, h), bool)
  valid[:4, :4] = False                           # an all-nodata corner
  bad = np.zeros((h, h), bool)
  bad[6, 6] = True                                # NaN pixel in S1
  mk = lambda m, v, b: inputs_lib.ModalityInput(m, "p", "t", np.zeros((h, h, 2), np.float32), v,
                                                b, -1, "")
  inputs = {"s1": mk("s1", np.ones((h, h), bool), bad), "s2_l2a": mk("s2_l2a", valid,
                                                                      np.zeros((h, h), bool))}
  corner = fr.Fragment(0, 0, 0, 0, 0, 4)
  far = fr.Fragment(3, 1, 1, 4, 4, 4)
  assert inputs_lib.available(inputs, corner) == (("s1",), {"s2_l2a": "all_nodata"})
  assert inputs_lib.available(inputs, far) == (("s2_l2a",), {"s1": "nan"})


def test_schema_columns_and_geo_metadata():
  import json
  import shapely
  assert schema.COLUMNS == ("unique_id", "embedding", "timestamp", "product_id", "grid_cell",
                            "grid_row_u", "grid_col_r", "geometry", "centre_lat", "centre_lon",
                            "utm_footprint", "utm_crs", "pixel_bbox")
  cols = schema.empty_columns()
  t = schema.to_table(cols, {"x": 1})
  assert t.num_rows == 0 and t.schema.names == list(schema.COLUMNS)
  geo = json.loads(t.schema.metadata[b"geo"])
  assert geo["primary_column"] == "geometry" and geo["columns"]["geometry"]["encoding"] == "WKB"
  assert geo["columns"]["geometry"]["crs"]["id"] == {"authority": "EPSG", "code": 4326}
  poly = shapely.box(1, 2, 3, 4)
  for c, v in dict(unique_id="a", embedding=np.ones(3, np.float32), timestamp="t", product_id="p",
                   grid_cell="1U_1R", grid_row_u=1, grid_col_r=1, geometry=shapely.to_wkb(poly),
                   centre_lat=3.0, centre_lon=2.0, utm_footprint="POLYGON EMPTY", utm_crs="EPSG:1",
                   pixel_bbox=[0, 0, 1, 1]).items():
    cols[c].append(v)
  t = schema.to_table(cols, {})
  assert json.loads(t.schema.metadata[b"geo"])["columns"]["geometry"]["bbox"] == [1, 2, 3, 4]
  assert t.column("embedding").type.value_type.bit_width == 32
