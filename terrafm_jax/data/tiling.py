"""Cut a harmonised Major-TOM cell into co-registered tiles, with checks and band statistics.

A cell of H x W 10 m pixels gives floor(H/T) x floor(W/T) non-overlapping T x T tiles; tile (r, c)
covers rows [r*T, (r+1)*T) and columns [c*T, (c+1)*T) (Major-TOM's 1068 px cell -> 2 x 2 tiles of
534 px, DATA.md 2.5). Per tile and modality: the S2 +1000 offset decision (per tile for N9999 and
id-less products), removal, B10 dropped; S1 stays dB with NaN nodata (float16).

A modality of a tile with no valid pixel (or with NaN pixels, S1) is left out of that tile and
reported, the tile keeps its other modalities; a tile with no modality left is dropped (rule in
majortom/__init__.py).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np

from terrafm_jax.data import contract as contract_lib
from terrafm_jax.data import harmonize
from terrafm_jax.data import landcover as landcover_lib
from terrafm_jax.data.errors import BadInputError
from terrafm_jax.data.majortom import CellData, ModalityData

# tile_index = cell_ordinal * TILE_STRIDE + tile_row * MAX_TILES_PER_SIDE + tile_col: a stable id.
MAX_TILES_PER_SIDE = 32
TILE_STRIDE = MAX_TILES_PER_SIDE * MAX_TILES_PER_SIDE
NUM_S2 = len(contract_lib.S2_BANDS)


@dataclasses.dataclass
class TileRecord:
  tile_index: int
  grid_cell: str
  tile_row: int
  tile_col: int
  arrays: dict[str, np.ndarray]           # present modalities only, contract band order
  landcover: landcover_lib.LandCover | None
  meta: dict[str, Any]                    # index columns (product ids, offsets, nodata fractions)

  @property
  def available(self) -> np.ndarray:
    return np.array([m in self.arrays for m in contract_lib.MODALITIES], bool)

  @property
  def tile_id(self) -> str:
    return f"{self.grid_cell}_{self.tile_row}_{self.tile_col}"


class BandStats:
  """Per-band count / mean / M2 over valid pixels, mergeable (Chan et al.)."""

  def __init__(self, num_bands: int):
    self.n = np.zeros(num_bands, np.float64)
    self.mean = np.zeros(num_bands, np.float64)
    self.m2 = np.zeros(num_bands, np.float64)

  def add(self, x: np.ndarray, valid: np.ndarray) -> None:
    """x (..., C); valid (..., C) bool."""
    x = x.reshape(-1, x.shape[-1]).astype(np.float64)
    v = valid.reshape(-1, valid.shape[-1])
    n = v.sum(0).astype(np.float64)
    s = np.where(v, x, 0.0).sum(0)
    mean = np.divide(s, n, out=np.zeros_like(s), where=n > 0)
    m2 = np.where(v, (x - mean) ** 2, 0.0).sum(0)
    self.merge_arrays(n, mean, m2)

  def merge_arrays(self, n, mean, m2) -> None:
    n, mean, m2 = (np.asarray(a, np.float64) for a in (n, mean, m2))
    tot = self.n + n
    delta = mean - self.mean
    safe = np.maximum(tot, 1)
    self.mean = np.where(tot > 0, self.mean + delta * n / safe, 0.0)
    self.m2 = self.m2 + m2 + delta ** 2 * self.n * n / safe
    self.n = tot

  @property
  def std(self) -> np.ndarray:
    return np.sqrt(self.m2 / np.maximum(self.n - 1, 1))

  def to_dict(self) -> dict[str, list[float]]:
    return {"n": self.n.tolist(), "mean": self.mean.tolist(), "m2": self.m2.tolist()}

  @classmethod
  def from_dict(cls, d: dict[str, list[float]]) -> "BandStats":
    s = cls(len(d["n"]))
    s.merge_arrays(d["n"], d["mean"], d["m2"])
    return s


def new_stats() -> dict[str, BandStats]:
  return {m: BandStats(n) for m, n in contract_lib.DEFAULT_CONTRACT.num_channels.items()}


def _s2_tile(md: ModalityData, sub: np.ndarray, threshold: float):
  dn = harmonize.to_dn_uint16(sub)                  # all stored columns (L1C: + B10)
  valid = (dn != 0).any(-1)
  offset, source = harmonize.offset_decision(
      md.ref.product_id, [dn[..., k] for k in range(dn.shape[-1])], threshold)
  if offset:
    dn = harmonize.remove_offset(dn)
  return dn[..., :NUM_S2], valid, offset, source     # B10 is the 13th column of L1C: dropped


def _modality_tile(md: ModalityData, ys: slice, xs: slice, rc: tuple[int, int],
                   threshold: float) -> tuple[np.ndarray, dict[str, Any]]:
  """One modality of one tile in record form, or a per-modality defect as BadInputError."""
  m = md.ref.modality
  sub = md.data[ys, xs]
  where = dict(file=md.ref.file, row_group=md.ref.row_group, grid_cell=md.ref.grid_cell)
  meta: dict[str, Any] = {}
  if m == "s1":
    if md.bad[ys, xs].any():
      raise BadInputError(f"NaN values in {m} of tile {rc}", column=md.bad_column, kind="nan",
                          **where)
    valid = np.isfinite(sub).all(-1)
    arr = sub.astype(np.float16)
    meta[f"offset_{m}"], meta[f"offset_source_{m}"] = -1, ""
  else:
    arr, valid, offset, source = _s2_tile(md, sub, threshold)
    meta[f"offset_{m}"], meta[f"offset_source_{m}"] = int(offset), source
  if not valid.any():
    raise BadInputError(f"{m} of tile {rc} has no valid pixel", column=md.columns[0],
                        kind="all_nodata", **where)
  meta[f"product_id_{m}"] = md.ref.product_id or ""
  meta[f"nodata_frac_{m}"] = float(1.0 - valid.mean())
  return arr, meta


def tile_cell(cell: CellData, *, tile_size: int, cell_ordinal: int,
              landcover: Any | None = None, stats: dict[str, BandStats] | None = None,
              offset_threshold: float = harmonize.DETECT_THRESHOLD,
              on_tile_error: Callable[[BadInputError], None] | None = None,
              on_unavailable: Callable[[BadInputError, str], None] | None = None,
              require: Sequence[str] = ()) -> list[TileRecord]:
  """Split a cell into tiles.

  A per-modality defect of a tile (no valid pixel; NaN in S1) leaves that modality out of the
  tile (`meta["unavailable_<m>"]` = the defect kind) and is passed to `on_unavailable(err, m)`.
  A tile left without any modality, or without a modality in `require`, is dropped: passed to
  `on_tile_error`, or raised when that is None.
  """
  h, w = cell.shape
  nr, nc = h // tile_size, w // tile_size
  if nr == 0 or nc == 0:
    any_ref = next(iter(cell.modalities.values())).ref
    raise BadInputError(f"cell of {h}x{w} px is smaller than the tile size {tile_size}",
                        file=any_ref.file, row_group=any_ref.row_group,
                        grid_cell=cell.grid_cell, kind="wrong_size")
  if nr > MAX_TILES_PER_SIDE or nc > MAX_TILES_PER_SIDE:
    raise ValueError(f"tile_size {tile_size} gives {nr}x{nc} tiles per cell; at most "
                     f"{MAX_TILES_PER_SIDE} per side are supported")
  a, b, c, d, e, f = cell.transform
  out = []
  for r in range(nr):
    for cc in range(nc):
      ys, xs = slice(r * tile_size, (r + 1) * tile_size), slice(cc * tile_size, (cc + 1) * tile_size)
      arrays: dict[str, np.ndarray] = {}
      meta: dict[str, Any] = {}
      defects: dict[str, BadInputError] = {}
      for m, md in cell.modalities.items():
        try:
          arrays[m], meta_m = _modality_tile(md, ys, xs, (r, cc), offset_threshold)
          meta.update(meta_m)
        except BadInputError as err:
          defects[m] = err
          meta[f"unavailable_{m}"] = err.kind
          if on_unavailable is not None:
            on_unavailable(err, m)
      lost = [m for m in require if m not in arrays]
      if not arrays or lost:
        first = defects.get(lost[0]) if lost else next(iter(defects.values()))
        why = f"required modality {lost[0]} unavailable" if lost else "no modality left"
        if first is None:   # a required modality the cell does not have at all
          ref = next(iter(cell.modalities.values())).ref
          first = BadInputError(f"the cell has no {lost[0]}", file=ref.file,
                                row_group=ref.row_group, kind="missing_modality")
        err = BadInputError(f"tile ({r}, {cc}) dropped, {why}: {first.reason}",
                            file=first.file, row_group=first.row_group, column=first.column,
                            grid_cell=cell.grid_cell, kind=first.kind)
        if on_tile_error is None:
          raise err
        on_tile_error(err)
        continue
      lc = None
      if landcover is not None:
        tile_tr = (a, b, c + xs.start * a, d, e, f + ys.start * e)
        lc = landcover.lookup(cell.grid_cell, r, cc, shape=(tile_size, tile_size),
                              transform=tile_tr, crs=cell.crs)
      if stats is not None:
        for m, arr in arrays.items():
          ok = np.isfinite(arr) if m == "s1" else arr != 0
          stats[m].add(arr, ok)
      out.append(TileRecord(tile_index=cell_ordinal * TILE_STRIDE + r * MAX_TILES_PER_SIDE + cc,
                            grid_cell=cell.grid_cell, tile_row=r, tile_col=cc, arrays=arrays,
                            landcover=lc, meta=meta))
  return out
