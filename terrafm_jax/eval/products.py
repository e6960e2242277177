"""Embedding products as evaluation features: Major-TOM-schema parquet joined to labels.

A product is what `terrafm-embed` writes, or any published Major-TOM embedding expansion: parquet
files whose rows carry an `embedding` (list<float>), a `grid_cell` and a WKB footprint
`geometry` in WGS84 (embed/schema.py). A product path is one parquet file, a folder of them
(searched recursively; sidecars and reports are not parquet) or a glob.

Labels are a table the user writes, with a `label` column (the name is configurable) and either
  * `grid_cell` (join = "grid_cell"): one sample per labelled cell, its feature the mean of the
    product's rows in that cell, so products cut into different fragment sizes meet on the cell;
  * a geometry (join = "geometry"): points or polygons, from GeoParquet / GeoJSON / GeoPackage or a
    CSV with `lon` and `lat` (WGS84). One sample per label geometry, its feature the mean of the
    rows whose footprint intersects it.
Labels that meet no row of a product are counted, never silently dropped; when several products
are compared, only the samples every product covers are scored, so they compare on the same
cells and places.
"""
from __future__ import annotations

import dataclasses
import glob as glob_lib
import os
from typing import Any, Mapping, Sequence

import numpy as np
from etils import epath

from terrafm_jax.eval.dataset import EvalDataError

JOINS = ("grid_cell", "geometry")
_META_KEY = b"terrafm_embed"


@dataclasses.dataclass(frozen=True)
class Labels:
  """The label table: `keys` are grid cells (join grid_cell) or shapely geometries (geometry)."""
  path: str
  join: str
  keys: np.ndarray            # (n,) object
  names: np.ndarray           # (n,) the label as written, str
  classes: tuple[str, ...]    # sorted distinct labels; y indexes into it
  y: np.ndarray               # (n,) int64


@dataclasses.dataclass(frozen=True)
class JoinedProduct:
  """One product's features on the label samples it covers."""
  name: str
  path: str
  features: np.ndarray        # (n_labels, d) float32; rows of uncovered samples are 0
  covered: np.ndarray         # (n_labels,) bool
  rows_per_sample: np.ndarray  # (n_labels,) int: embedding rows averaged into each sample
  counts: dict[str, int]
  metadata: dict[str, Any]    # the parts' "terrafm_embed" metadata when present (provenance)


def _walk(folder: epath.Path):
  """Every file under `folder` (epath has no recursive glob on object stores)."""
  for child in folder.iterdir():
    if child.is_dir():
      yield from _walk(child)
    else:
      yield child


def product_files(path: str) -> list[epath.Path]:
  """The parquet files of a product path (file, folder or glob), sorted; raises when none."""
  p = epath.Path(path)
  if any(c in path for c in "*?[") and not p.exists():
    files = sorted(epath.Path(f) for f in glob_lib.glob(path, recursive=True))
  elif p.is_dir():
    files = sorted(_walk(p))
  elif p.exists():
    files = [p]
  else:
    raise EvalDataError(f"{path}: no such embedding product (a parquet file, folder or glob)")
  files = [f for f in files if f.name.endswith(".parquet")]
  if not files:
    raise EvalDataError(f"{path}: no .parquet files in this embedding product")
  return files


def _read_part(f: epath.Path, columns: Sequence[str]):
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  with f.open("rb") as fh:
    pf = pq.ParquetFile(fh)
    missing = [c for c in columns if c not in pf.schema_arrow.names]
    if missing:
      raise EvalDataError(f"{f}: embedding parquet has no column(s) {missing} (has "
                          f"{pf.schema_arrow.names})")
    meta = pf.schema_arrow.metadata or {}
    return pf.read(columns=list(columns)), meta.get(_META_KEY)


def _embeddings(f: epath.Path, column) -> np.ndarray:
  """(rows, d) float32 from a list<float> column; one error naming the file and row if ragged."""
  lengths = np.asarray(column.value_lengths() if hasattr(column, "value_lengths") else
                       [len(v) for v in column.to_pylist()])
  if len(lengths) and (lengths != lengths[0]).any():
    bad = int(np.flatnonzero(lengths != lengths[0])[0])
    raise EvalDataError(f"{f}: row {bad}: embedding has {lengths[bad]} values, row 0 has "
                        f"{lengths[0]}")
  values = np.asarray(column.flatten().to_numpy(zero_copy_only=False), np.float32)
  x = values.reshape(len(lengths), -1) if len(lengths) else np.zeros((0, 0), np.float32)
  bad_rows = np.flatnonzero(~np.isfinite(x).all(axis=1))
  if len(bad_rows):
    raise EvalDataError(f"{f}: row {int(bad_rows[0])}: embedding has non-finite values "
                        f"({len(bad_rows)} row(s))")
  return x


def read_product(path: str, join: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
  """(embeddings (rows, d), keys (rows,) grid cells or WKB footprints, metadata)."""
  import json  # pylint: disable=g-import-not-at-top
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  key_col = "grid_cell" if join == "grid_cell" else "geometry"
  xs, keys, meta, dim = [], [], {}, None
  for f in product_files(path):
    table, raw_meta = _read_part(f, ("embedding", key_col))
    col = table.column("embedding").combine_chunks()
    if not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type)
            or pa.types.is_fixed_size_list(col.type)):
      raise EvalDataError(f"{f}: column 'embedding' is {col.type}, expected a list of floats")
    x = _embeddings(f, col)
    if len(x) and dim is not None and x.shape[1] != dim:
      raise EvalDataError(f"{f}: embeddings have {x.shape[1]} values, earlier parts of {path} "
                          f"have {dim}")
    if len(x):
      dim = x.shape[1]
      xs.append(x)
      keys.append(np.asarray(table.column(key_col).to_pylist(), dtype=object))
    if raw_meta and not meta:
      meta = json.loads(raw_meta)
  if dim is None:
    raise EvalDataError(f"{path}: the embedding product has no rows")
  return np.concatenate(xs), np.concatenate(keys), meta


def _label_frame(path: str, join: str):
  import geopandas  # pylint: disable=g-import-not-at-top
  import pandas as pd  # pylint: disable=g-import-not-at-top
  p = epath.Path(path)
  if not p.exists():
    raise EvalDataError(f"{path}: no such label file")
  suffix = p.suffix.lower()
  with p.open("rb") as fh:
    if suffix == ".csv":
      df = pd.read_csv(fh)
    elif suffix in (".parquet", ".geoparquet"):
      import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
      meta = pq.ParquetFile(fh).schema_arrow.metadata or {}
      fh.seek(0)
      df = geopandas.read_parquet(fh) if b"geo" in meta else pd.read_parquet(fh)
    elif suffix in (".geojson", ".json", ".gpkg", ".shp", ".fgb"):
      df = geopandas.read_file(fh)
    else:
      raise EvalDataError(f"{path}: unknown label file type {suffix!r} (csv, parquet, geojson, "
                          "gpkg, shp, fgb)")
  if join == "geometry" and not isinstance(df, geopandas.GeoDataFrame):
    if {"lon", "lat"} <= set(df.columns):
      df = geopandas.GeoDataFrame(df, geometry=geopandas.points_from_xy(df.lon, df.lat),
                                  crs="EPSG:4326")
    else:
      raise EvalDataError(f"{path}: join by geometry needs a geometry column or 'lon' and 'lat' "
                          f"columns (has {list(df.columns)})")
  return df


def read_labels(path: str, join: str, label_column: str = "label") -> Labels:
  if join not in JOINS:
    raise ValueError(f"join must be one of {JOINS}, got {join!r}")
  df = _label_frame(path, join)
  if label_column not in df.columns:
    raise EvalDataError(f"{path}: no label column {label_column!r} (has {list(df.columns)})")
  names = df[label_column]
  missing = np.flatnonzero(names.isna().to_numpy())
  if len(missing):
    raise EvalDataError(f"{path}: row {int(missing[0])}: column {label_column!r} is empty "
                        f"({len(missing)} row(s))")
  names = names.astype(str).to_numpy()
  if join == "grid_cell":
    if "grid_cell" not in df.columns:
      raise EvalDataError(f"{path}: join by grid_cell needs a 'grid_cell' column (has "
                          f"{list(df.columns)})")
    keys = df["grid_cell"].astype(str).to_numpy(dtype=object)
    dup = df["grid_cell"].duplicated(keep="first").to_numpy()
    if dup.any():
      i = int(np.flatnonzero(dup)[0])
      raise EvalDataError(f"{path}: row {i}: grid_cell {keys[i]!r} is labelled twice")
  else:
    gdf = df.to_crs("EPSG:4326") if df.crs is not None else df.set_crs("EPSG:4326")
    empty = np.flatnonzero((gdf.geometry.isna() | gdf.geometry.is_empty).to_numpy())
    if len(empty):
      raise EvalDataError(f"{path}: row {int(empty[0])}: empty geometry")
    keys = gdf.geometry.to_numpy(dtype=object)
  classes = tuple(sorted(set(names)))
  if len(classes) < 2:
    raise EvalDataError(f"{path}: column {label_column!r} has {len(classes)} distinct label(s); "
                        "a probe needs at least 2")
  lookup = {c: i for i, c in enumerate(classes)}
  return Labels(path=path, join=join, keys=keys, names=names, classes=classes,
                y=np.asarray([lookup[n] for n in names], np.int64))


def _mean_by_sample(x: np.ndarray, sample: np.ndarray, row: np.ndarray,
                    n: int) -> tuple[np.ndarray, np.ndarray]:
  """Mean of rows `row` per sample index `sample` ((n, d), counts (n,))."""
  sums = np.zeros((n, x.shape[1]), np.float64)
  np.add.at(sums, sample, x[row].astype(np.float64))
  counts = np.bincount(sample, minlength=n)
  return (sums / np.maximum(counts, 1)[:, None]).astype(np.float32), counts


def join_product(name: str, path: str, labels: Labels) -> JoinedProduct:
  x, keys, meta = read_product(path, labels.join)
  n = len(labels.y)
  if labels.join == "grid_cell":
    index = {k: i for i, k in enumerate(labels.keys)}
    sample = np.asarray([index.get(str(k), -1) for k in keys], np.int64)
    row = np.flatnonzero(sample >= 0)
    sample = sample[row]
  else:
    import geopandas  # pylint: disable=g-import-not-at-top
    import shapely  # pylint: disable=g-import-not-at-top
    footprints = geopandas.GeoDataFrame(
        geometry=shapely.from_wkb(np.asarray(list(keys), dtype=object)), crs="EPSG:4326")
    tree = footprints.sindex
    sample, row = tree.query(np.asarray(list(labels.keys), dtype=object), predicate="intersects")
  feats, counts = _mean_by_sample(x, np.asarray(sample, np.int64), np.asarray(row, np.int64), n)
  covered = counts > 0
  used_rows = len(np.unique(row))
  return JoinedProduct(
      name=name, path=path, features=feats, covered=covered, rows_per_sample=counts,
      counts={"rows": int(len(x)), "rows_used": int(used_rows),
              "rows_without_label": int(len(x) - used_rows),
              "labels_covered": int(covered.sum()), "labels_not_covered": int((~covered).sum())},
      metadata=meta)


def parse_sources(sources: str | Sequence[str] | Mapping[str, str]) -> dict[str, str]:
  """{name: path} from "name=path,name=path", a sequence of such items, or a mapping; a bare path
  is named by its last component."""
  if isinstance(sources, Mapping):
    items = [f"{k}={v}" for k, v in sources.items()]
  elif isinstance(sources, str):
    items = [s for s in sources.split(",") if s.strip()]
  else:
    items = list(sources)
  out: dict[str, str] = {}
  for item in items:
    name, sep, path = item.partition("=")
    if not sep:
      name, path = os.path.basename(os.path.normpath(item)) or item, item
    name, path = name.strip(), path.strip()
    if not name or not path:
      raise ValueError(f"product {item!r}: expected name=path")
    if name in out:
      raise ValueError(f"product name {name!r} given twice")
    out[name] = path
  if not out:
    raise ValueError("no embedding product given (name=path[,name=path])")
  return out
