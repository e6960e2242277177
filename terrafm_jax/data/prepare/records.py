"""What prepare writes per tile (record, index row) and what it counts per unit (report.json)."""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from terrafm_jax.data import contract as contract_lib
from terrafm_jax.data import landcover as lc_lib
from terrafm_jax.data import tiling
from terrafm_jax.data.errors import BadInputError
from terrafm_jax.data.prepare.options import MAX_REPORTED_ERRORS, WATER_ONLY_THRESHOLD


def features(tile_size: int):
  """The TFDS FeaturesDict of one record."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  t = tile_size
  enc = tfds.features.Encoding.BYTES   # raw bytes: fast numpy decoding without TensorFlow
  nc = contract_lib.DEFAULT_CONTRACT.num_channels
  return tfds.features.FeaturesDict({
      "tile_index": np.int64,
      "grid_cell": tfds.features.Text(),
      "s1": tfds.features.Tensor(shape=(t, t, nc["s1"]), dtype=np.float16, encoding=enc),
      "s2_l1c": tfds.features.Tensor(shape=(t, t, nc["s2_l1c"]), dtype=np.uint16, encoding=enc),
      "s2_l2a": tfds.features.Tensor(shape=(t, t, nc["s2_l2a"]), dtype=np.uint16, encoding=enc),
      "available": tfds.features.Tensor(shape=(len(contract_lib.MODALITIES),), dtype=np.bool_),
      "wc_hist": tfds.features.Tensor(shape=(lc_lib.NUM_CLASSES,), dtype=np.float32),
      "label": np.int32,
  })


def _label(lc: lc_lib.LandCover | None) -> tuple[int, bool]:
  """(label, water_only). Open sea (no classified pixel, or >= 95 % water) is labelled water."""
  if lc is None:
    return lc_lib.UNKNOWN_LABEL, False
  water = (1 - lc.nodata_frac) * float(lc.hist[lc_lib.WATER]) + lc.nodata_frac
  water_only = water >= WATER_ONLY_THRESHOLD
  label = lc.dominant
  if label == lc_lib.UNKNOWN_LABEL and water_only:
    label = lc_lib.WATER
  return label, water_only


def to_example(t: tiling.TileRecord, tile_size: int) -> dict[str, Any]:
  """The record of a tile; an absent or unavailable modality is all zeros."""
  nc = contract_lib.DEFAULT_CONTRACT.num_channels
  ex: dict[str, Any] = {"tile_index": t.tile_index, "grid_cell": t.grid_cell,
                        "available": t.available}
  for m in contract_lib.MODALITIES:
    dtype = np.float16 if m == "s1" else np.uint16
    ex[m] = t.arrays.get(m, np.zeros((tile_size, tile_size, nc[m]), dtype))
  ex["wc_hist"] = (t.landcover.hist if t.landcover is not None
                   else np.zeros(lc_lib.NUM_CLASSES, np.float32))
  ex["label"] = _label(t.landcover)[0]
  return ex


def index_row(t: tiling.TileRecord) -> dict[str, Any]:
  label, water_only = _label(t.landcover)
  lc = t.landcover
  row: dict[str, Any] = {"tile_index": t.tile_index, "grid_cell": t.grid_cell,
                         "tile_row": t.tile_row, "tile_col": t.tile_col, "tile_id": t.tile_id}
  for m, a in zip(contract_lib.MODALITIES, t.available):
    row[f"has_{m}"] = bool(a)
  hist = lc.hist if lc is not None else np.zeros(lc_lib.NUM_CLASSES, np.float32)
  row.update({k: float(v) for k, v in zip(lc_lib.HIST_COLUMNS, hist)})
  row["wc_nodata"] = 1.0 if lc is None else float(lc.nodata_frac)
  row["label"] = label
  row["water_only"] = water_only
  row["climate"] = "" if lc is None else lc.climate
  row["region"] = "" if lc is None else lc.region
  for m in contract_lib.MODALITIES:
    row[f"product_id_{m}"] = t.meta.get(f"product_id_{m}", "")
    row[f"offset_{m}"] = t.meta.get(f"offset_{m}", -1)
    row[f"offset_source_{m}"] = t.meta.get(f"offset_source_{m}", "")
    row[f"nodata_frac_{m}"] = t.meta.get(f"nodata_frac_{m}", 1.0)
    row[f"unavailable_{m}"] = t.meta.get(f"unavailable_{m}", "")   # defect kind, "" if none
  return row


class UnitResult:
  """What a unit produced besides its records: index rows, band statistics, report counts."""

  def __init__(self):
    self.rows: list[dict[str, Any]] = []
    self.stats = tiling.new_stats()
    self.counts: dict[str, int] = {"cells_read": 0, "tiles_written": 0, "cells_skipped": 0,
                                   "tiles_skipped": 0, "cells_realigned": 0, "tiles_degraded": 0}
    self.skipped_by_kind: dict[str, int] = {}
    self.unavailable_by_kind: dict[str, dict[str, int]] = {}   # kind -> modality -> tiles
    self.errors: list[dict[str, Any]] = []               # skipped cells / tiles (first 200)
    self.unavailable: list[dict[str, Any]] = []          # modalities marked unavailable (first 200)
    self.offsets: dict[str, dict[str, int]] = {}

  def skip(self, err: BadInputError, what: str) -> None:
    """A cell or tile not written."""
    self.counts[f"{what}s_skipped"] += 1
    self.skipped_by_kind[err.kind] = self.skipped_by_kind.get(err.kind, 0) + 1
    if len(self.errors) < MAX_REPORTED_ERRORS:
      self.errors.append({**err.to_record(), "skipped": what})
    logging.warning("skipping %s: %s", what, err)

  def modality_unavailable(self, err: BadInputError, modality: str) -> None:
    """One modality of one tile marked unavailable (the tile keeps its other modalities)."""
    d = self.unavailable_by_kind.setdefault(err.kind, {})
    d[modality] = d.get(modality, 0) + 1
    if len(self.unavailable) < MAX_REPORTED_ERRORS:
      self.unavailable.append({**err.to_record(), "modality": modality})
    logging.info("%s unavailable: %s", modality, err)

  def add_tile(self, t: tiling.TileRecord) -> None:
    self.rows.append(index_row(t))
    self.counts["tiles_written"] += 1
    if any(k.startswith("unavailable_") for k in t.meta):
      self.counts["tiles_degraded"] += 1
    for m in ("s2_l1c", "s2_l2a"):
      if m in t.arrays:
        key = f"{t.meta[f'offset_source_{m}']}_{'yes' if t.meta[f'offset_{m}'] else 'no'}"
        d = self.offsets.setdefault(m, {})
        d[key] = d.get(key, 0) + 1

  def to_json(self) -> dict[str, Any]:
    return {"counts": self.counts, "skipped_by_kind": self.skipped_by_kind,
            "modality_unavailable_by_kind": self.unavailable_by_kind,
            "errors": self.errors, "unavailable": self.unavailable,
            "offset_decisions": self.offsets,
            "stats": {m: s.to_dict() for m, s in self.stats.items()}}
