"""Arrow schema and GeoParquet metadata of the embedding parts (Major-TOM embedding expansions).

Columns, in this order, as the published expansions write them (Major-TOM `src/embedder/
MajorTOM_Embedder.py` row dict and `column_types`; dataset cards of Core-S2L1C-SSL4EO et al.):

  unique_id      string        sha256 hex of the fragment's identity (fragments.unique_id)
  embedding      list<float>   float32 vector: the CLS token of the TerraFM encoder after its final
                               LayerNorm (`TerraFMEncoder(...)["cls"]`), the global image feature
  timestamp      string        the product's `timestamp` from metadata.parquet, as stored; without
                               metadata the sensing time in the product id (YYYYMMDDTHHMMSS)
  product_id     string        the product id (fused: the ids of the modalities that fed the
                               fragment, in the order s1, s2_l1c, s2_l2a, joined by "|")
  grid_cell      string        Major-TOM cell, e.g. 454U_120R
  grid_row_u     int16         signed cell row (U positive)
  grid_col_r     int16         signed cell column (R positive)
  geometry       binary (WKB)  WGS84 polygon of the fragment footprint (GeoParquet primary column)
  centre_lat     float32       centroid of `geometry`
  centre_lon     float32
  utm_footprint  string (WKT)  the footprint polygon in the product's UTM CRS (published: `.wkt`)
  utm_crs        string        that CRS, e.g. EPSG:32633 (published: rasterio `crs.to_string()`)
  pixel_bbox     list<int64>   [col_min, row_min, col_max, row_max] in cell pixels, end-exclusive

Metadata: "geo" (GeoParquet 1.0.0: WKB, Polygon, EPSG:4326 as PROJJSON, the part's bbox), so that
`geopandas.read_parquet` returns a GeoDataFrame in EPSG:4326, and "terrafm_embed" (JSON: weights
provenance, modality, fragment options), so every part says what made it.
"""
from __future__ import annotations

import functools
import json
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa

COLUMNS: tuple[str, ...] = (
    "unique_id", "embedding", "timestamp", "product_id", "grid_cell", "grid_row_u", "grid_col_r",
    "geometry", "centre_lat", "centre_lon", "utm_footprint", "utm_crs", "pixel_bbox")
GEOPARQUET_VERSION = "1.0.0"
META_KEY = b"terrafm_embed"

SCHEMA = pa.schema([
    pa.field("unique_id", pa.string(), nullable=False),
    pa.field("embedding", pa.list_(pa.float32()), nullable=False),
    pa.field("timestamp", pa.string()),
    pa.field("product_id", pa.string()),
    pa.field("grid_cell", pa.string(), nullable=False),
    pa.field("grid_row_u", pa.int16()),
    pa.field("grid_col_r", pa.int16()),
    pa.field("geometry", pa.binary(), nullable=False),
    pa.field("centre_lat", pa.float32()),
    pa.field("centre_lon", pa.float32()),
    pa.field("utm_footprint", pa.string()),
    pa.field("utm_crs", pa.string()),
    pa.field("pixel_bbox", pa.list_(pa.int64())),
])
assert tuple(SCHEMA.names) == COLUMNS


@functools.lru_cache(maxsize=1)
def _wgs84_projjson() -> dict[str, Any]:
  from pyproj import CRS  # pylint: disable=g-import-not-at-top
  return CRS.from_epsg(4326).to_json_dict()


def geo_metadata(bbox: Sequence[float] | None) -> dict[str, Any]:
  """The GeoParquet "geo" key for a part whose geometries span `bbox` (None: empty part)."""
  col: dict[str, Any] = {"encoding": "WKB", "geometry_types": ["Polygon"],
                         "crs": _wgs84_projjson()}
  if bbox is not None:
    col["bbox"] = [float(v) for v in bbox]
  return {"version": GEOPARQUET_VERSION, "primary_column": "geometry", "columns": {"geometry": col}}


def _bbox(wkb: Sequence[bytes]) -> list[float] | None:
  if not wkb:
    return None
  import shapely  # pylint: disable=g-import-not-at-top
  b = shapely.bounds(shapely.from_wkb(np.asarray(wkb, dtype=object)))
  return [float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()), float(b[:, 3].max())]


def to_table(rows: Mapping[str, Sequence[Any]], info: Mapping[str, Any]) -> pa.Table:
  """Columns (name -> values, all of COLUMNS) -> a table with SCHEMA and the part's metadata."""
  missing = [c for c in COLUMNS if c not in rows]
  if missing:
    raise ValueError(f"embedding rows lack columns {missing}")
  n = len(rows["unique_id"])
  emb = rows["embedding"]
  if n:
    flat = np.ascontiguousarray(np.stack([np.asarray(v, np.float32) for v in emb]))
    emb_arr = pa.ListArray.from_arrays(
        pa.array(np.arange(n + 1, dtype=np.int32) * flat.shape[1]), pa.array(flat.ravel()))
  else:
    emb_arr = pa.array([], pa.list_(pa.float32()))
  arrays = []
  for field in SCHEMA:
    if field.name == "embedding":
      arrays.append(emb_arr)
    else:
      arrays.append(pa.array(list(rows[field.name]), type=field.type))
  meta = {b"geo": json.dumps(geo_metadata(_bbox(rows["geometry"]))).encode(),
          META_KEY: json.dumps(dict(info), sort_keys=True, default=str).encode()}
  return pa.Table.from_arrays(arrays, schema=SCHEMA.with_metadata(meta))


def empty_columns() -> dict[str, list[Any]]:
  return {c: [] for c in COLUMNS}
