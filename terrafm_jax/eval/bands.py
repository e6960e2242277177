"""Benchmark bands -> stem inputs, as data: one `StemMapping` per (task, stem), checked by name.

A task's table says which stem(s) it feeds and, for each, which source group the bands come from
and which contract bands that group is expected to lack (zero-filled after normalisation, i.e. set
to the band mean, DATA.md 1) or to carry in excess (dropped, e.g. B10 for the 12-channel S2 stems).
The reader reports the bands it actually found (eval/dataset.py); `plan()` reconciles the two and
refuses any disagreement, so a band is never silently misaligned: a band the table did not expect,
an expected band that is missing, or a stem with no real band left is an EvalDataError.

Units are converted into the contract's (S2 DN without offset, S1 dB) before normalising with the
contract's statistics, so the eval input goes through exactly the normalisation the model was
trained with.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np

from terrafm_jax.data.contract import InputContract
from terrafm_jax.eval.dataset import EvalDataError, SourceGroup

_S2_STEMS = ("s2_l1c", "s2_l2a")


@dataclasses.dataclass(frozen=True)
class StemMapping:
  """How one stem is fed: from `group`, expecting `fill` missing and `drop` extra bands."""
  stem: str
  group: str
  fill: tuple[str, ...] = ()
  drop: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class StemPlan:
  """Resolved mapping: channel index into the source array per contract band (-1 = zero-fill)."""
  stem: str
  group: str
  units: str
  source_index: tuple[int, ...]
  filled: tuple[str, ...]
  dropped: tuple[str, ...]


def plan(mappings: tuple[StemMapping, ...], inputs: Mapping[str, SourceGroup],
         contract: InputContract, where: str) -> tuple[StemPlan, ...]:
  """Check a task's table against the bands a reader found; EvalDataError naming `where`."""
  if not mappings:
    raise EvalDataError(f"{where}: the task maps no stem")
  out = []
  for m in mappings:
    if m.group not in inputs:
      raise EvalDataError(f"{where}: stem {m.stem} reads source group {m.group!r}, but the data has "
                          f"only {sorted(inputs)}")
    src = inputs[m.group]
    want = contract[m.stem].bands
    if len(set(src.bands)) != len(src.bands):
      raise EvalDataError(f"{where}: duplicate band names in {m.group}: {src.bands}")
    missing = tuple(b for b in want if b not in src.bands)
    extra = tuple(b for b in src.bands if b not in want)
    if set(missing) != set(m.fill):
      raise EvalDataError(
          f"{where}: stem {m.stem} expects bands {want}; the data's {m.group} bands {src.bands} lack "
          f"{missing or 'none'} but the task table zero-fills {m.fill or 'none'}")
    if set(extra) != set(m.drop):
      raise EvalDataError(
          f"{where}: the data's {m.group} bands {src.bands} include {extra or 'none'} beyond the "
          f"{m.stem} stem's, but the task table drops {m.drop or 'none'}")
    if len(missing) == len(want):
      raise EvalDataError(f"{where}: no band of the {m.stem} stem is in the data")
    if m.stem in _S2_STEMS and src.units not in ("dn", "reflectance"):
      raise EvalDataError(f"{where}: {m.group} units {src.units!r} cannot feed the {m.stem} stem")
    if m.stem == "s1" and src.units not in ("db", "linear"):
      raise EvalDataError(f"{where}: {m.group} units {src.units!r} cannot feed the s1 stem")
    index = tuple(src.bands.index(b) if b in src.bands else -1 for b in want)
    out.append(StemPlan(m.stem, m.group, src.units, index, missing, extra))
  return tuple(out)


def to_contract_units(x: np.ndarray, units: str) -> np.ndarray:
  """Source units -> the contract's (S2 DN, S1 dB), float32."""
  x = np.asarray(x, np.float32)
  if units == "reflectance":
    return x * np.float32(10000.0)
  if units == "linear":
    return (10.0 * np.log10(np.maximum(x, 1e-10))).astype(np.float32)
  return x


def apply(plans: tuple[StemPlan, ...], sample: Mapping[str, np.ndarray],
          contract: InputContract, where: str = "sample") -> dict[str, np.ndarray]:
  """One sample's source arrays -> {stem: (H, W, C_stem) normalised float32}."""
  out = {}
  for p in plans:
    x = np.asarray(sample[p.group])
    if x.ndim != 3 or x.shape[-1] != len(p.source_index) - len(p.filled) + len(p.dropped):
      raise EvalDataError(f"{where}: {p.group} array has shape {x.shape}, expected (H, W, "
                          f"{len(p.source_index) - len(p.filled) + len(p.dropped)}) channels-last")
    x = to_contract_units(x, p.units)
    if not np.isfinite(x).all():
      raise EvalDataError(f"{where}: {p.group} holds NaN or inf values")
    mc = contract[p.stem]
    idx = np.asarray(p.source_index)
    picked = x[..., np.maximum(idx, 0)]
    normed = mc.normalize(picked)
    if p.stem in _S2_STEMS:
      # S2 nodata (DN 0) -> 0, the band mean, as the training step and the ONNX graphs map it.
      normed = np.where(picked == 0, np.float32(0.0), normed).astype(np.float32)
    normed[..., idx < 0] = 0.0
    out[p.stem] = normed
  return out
