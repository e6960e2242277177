"""A loaded cell -> normalised encoder inputs per modality, with the per-fragment availability rule.

Units and harmonisation are the prepare stage's (`majortom.load_cell` reads and brings every band
onto the cell's 10 m grid; `harmonize` removes the S2 +1000 offset, keeps S1 in dB with NaN nodata),
and normalisation is the weights' input contract through `eval.bands` (the path `api.encode` and
the benchmarks use), so the encoder sees exactly what it was trained on:

  * S2 (L1C / L2A): DN rounded as prepare does (`to_dn_uint16`), the offset decided once per cell
    from the processing baseline, or from the data for N9999 / id-less products
    (`harmonize.offset_decision` over all stored bands, B10 included), then removed; B10 dropped.
    Deciding per cell rather than per fragment keeps a fragment's values independent of how the
    cell is fragmented, and the whole cell is the most robust sample for the data-driven rule.
  * S1: dB as read.
  * Nodata (S2 DN 0, S1 NaN) becomes 0 after normalisation (= the band mean), as in training
    (`train/device_crops.normalize_tiles`, `data/pipeline` S1 fill).

Per fragment, a modality with no valid pixel in the window (all nodata), or with NaN pixels that
are not the documented S1 nodata, is unavailable there: the rule prepare applies per tile
(data/majortom/__init__.py, kinds "all_nodata" and "nan"). A single-modality fragment without it is dropped and
counted; a fused fragment keeps its other modalities.
"""
from __future__ import annotations

import dataclasses
import re

import numpy as np

from terrafm_jax.data import contract as contract_lib
from terrafm_jax.data import harmonize
from terrafm_jax.data.contract import InputContract
from terrafm_jax.data.majortom import CellData
from terrafm_jax.embed.fragments import Fragment
from terrafm_jax.eval import bands as bands_lib
from terrafm_jax.eval.dataset import SourceGroup

_SENSING_TIME = re.compile(r"(\d{8}T\d{6})")
NUM_S2 = len(contract_lib.S2_BANDS)


@dataclasses.dataclass
class ModalityInput:
  modality: str
  product_id: str
  timestamp: str
  x: np.ndarray         # (H, W, C) float32, normalised with the contract, nodata -> 0
  valid: np.ndarray     # (H, W) bool: at least one valid band (S2), all bands finite (S1)
  bad: np.ndarray       # (H, W) bool: NaN in the input that is not the nodata value (S1)
  offset: int           # S2 offset removed (1) or not (0); -1 for S1
  offset_source: str    # "baseline" | "detected" | ""


def product_timestamp(timestamp: str | None, product_id: str | None) -> str:
  """metadata.parquet's timestamp as stored, else the sensing time in the product id, else ""."""
  if timestamp:
    return str(timestamp)
  m = _SENSING_TIME.search(product_id or "")
  return m.group(1) if m else ""


def _normalise(modality: str, x: np.ndarray, bands: tuple[str, ...], units: str,
               contract: InputContract, where: str) -> np.ndarray:
  table = (bands_lib.StemMapping(modality, modality),)
  plans = bands_lib.plan(table, {modality: SourceGroup(bands, units)}, contract, where)
  return bands_lib.apply(plans, {modality: x}, contract, where)[modality]


def cell_inputs(cell: CellData, modalities, contract: InputContract,
                offset_threshold: float = harmonize.DETECT_THRESHOLD) -> dict[str, ModalityInput]:
  """Normalised inputs of the requested modalities the cell has, in contract order."""
  out = {}
  for m in contract_lib.MODALITIES:
    if m not in modalities or m not in cell.modalities:
      continue
    md = cell.modalities[m]
    ref = md.ref
    where = f"{ref.file} row group {ref.row_group} (grid cell {ref.grid_cell}, {m})"
    if m == "s1":
      db = md.data
      valid = np.isfinite(db).all(-1)
      mean = np.asarray(contract["s1"].mean, np.float32)
      filled = np.where(np.isfinite(db), db, mean)   # nodata -> band mean -> 0 after normalising
      x = _normalise(m, filled, contract_lib.S1_BANDS, "db", contract, where)
      offset, source = -1, ""
    else:
      dn = harmonize.to_dn_uint16(md.data)           # every stored band (L1C: + B10, last)
      offset, source = harmonize.offset_decision(
          ref.product_id, [dn[..., k] for k in range(dn.shape[-1])], offset_threshold)
      if offset:
        dn = harmonize.remove_offset(dn)
      dn = dn[..., :NUM_S2]
      valid = (dn != 0).any(-1)
      x = _normalise(m, dn.astype(np.float32), contract_lib.S2_BANDS, "dn", contract, where)
      x[dn == 0] = 0.0
    out[m] = ModalityInput(m, ref.product_id or "", product_timestamp(ref.timestamp,
                                                                      ref.product_id),
                           x.astype(np.float32, copy=False), valid, md.bad, int(offset), source)
  return out


def available(inputs: dict[str, ModalityInput], frag: Fragment) -> tuple[tuple[str, ...],
                                                                          dict[str, str]]:
  """(modalities usable in the fragment, {modality: defect kind} for the others)."""
  ok, defects = [], {}
  for m, mi in inputs.items():
    if mi.bad[frag.rows, frag.cols].any():
      defects[m] = "nan"
    elif not mi.valid[frag.rows, frag.cols].any():
      defects[m] = "all_nodata"
    else:
      ok.append(m)
  return tuple(ok), defects
