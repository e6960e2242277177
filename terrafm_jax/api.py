"""One-line loading and feature extraction from raw Sentinel arrays.

  import terrafm_jax
  model = terrafm_jax.load("terrafm_b.pth")            # or a workdir, or "random:B/16"
  out = model.encode(s2_dn, modality="s2_l2a")         # (H, W, 12) or (B, H, W, 12) DN
  out["cls"], out["patch_tokens"], out["features"]     # (B, d), (B, h, w, d), per out_index

Inputs are raw arrays in their native units, channels-last (or `layout="NCHW"`):
  * S2 (`s2_l1c`, `s2_l2a`): digital numbers (reflectance x 1e4) with or without the +1000 offset
    of processing baseline >= 04.00 (`offset="auto"` decides per image from the data with the
    prepare stage's rule, DATA.md 2.6; True / False force it), or reflectance 0..1
    (`units="reflectance"`). L1C may carry B10, which is dropped.
  * S1: linear power (`units="linear"`, Major-TOM) or dB (`units="db"`).
Bands are selected by name (`bands=`, the order of the user's last axis; default the contract's
order, plus B10 for a 13-band L1C array), so another band order is never misread. Several
modalities (a dict {modality: array}) go through the fused path. Any size that is a multiple of
the patch size works (the position embedding is interpolated).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from terrafm_jax import platforms
from terrafm_jax.data import harmonize
from terrafm_jax.data.contract import MODALITIES
from terrafm_jax.eval import bands as bands_lib
from terrafm_jax.eval import features as features_lib
from terrafm_jax.eval.dataset import SourceGroup
from terrafm_jax.eval.weights import Weights, load_weights

_S2_13 = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
_DEFAULT_UNITS = {"s1": "linear", "s2_l1c": "dn", "s2_l2a": "dn"}


class InputError(ValueError):
  """Raw input that does not fit the contract (band count, units, layout, size)."""


@dataclasses.dataclass
class TerraFM:
  """Loaded weights (params, model config, input contract) and an `encode` for raw arrays."""
  weights: Weights

  @property
  def params(self) -> Any:
    return self.weights.params

  @property
  def contract(self):
    return self.weights.contract

  @property
  def model_config(self):
    return self.weights.model_config

  @property
  def patch_size(self) -> int:
    return self.weights.encoder().dims["patch_size"]

  def _prepare(self, modality: str, x: np.ndarray, bands: Sequence[str] | None, units: str,
               offset: bool | str, layout: str) -> np.ndarray:
    """One modality's raw batch -> normalised (B, H, W, C_stem) float32."""
    x = np.asarray(x)
    if x.ndim == 3:
      x = x[None]
    if x.ndim != 4:
      raise InputError(f"{modality}: expected (H, W, C) or (B, H, W, C) (layout {layout}), got "
                       f"shape {x.shape}")
    if layout == "NCHW":
      x = np.moveaxis(x, 1, -1)
    elif layout != "NHWC":
      raise InputError(f"layout must be 'NHWC' or 'NCHW', got {layout!r}")
    want = self.contract[modality].bands
    if bands is None:
      bands = _S2_13 if (modality == "s2_l1c" and x.shape[-1] == 13) else want
    bands = tuple(bands)
    if x.shape[-1] != len(bands):
      raise InputError(f"{modality}: the array has {x.shape[-1]} bands on its channel axis but "
                       f"{len(bands)} band names {bands} (the {modality} stem takes {want}; pass "
                       f"bands=[...] in your array's order)")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
      raise InputError(f"{modality}: the array holds NaN or inf")
    if modality == "s1":
      if units == "linear" and np.nanmin(x) < -1e-6 and not np.all(x[x < 0] == -32768.0):
        raise InputError("s1: negative values with units='linear'; dB input needs units='db'")
      if units == "linear":
        x = np.where(x == -32768.0, 0.0, x)  # Major-TOM nodata -> 1e-10 before the log
    else:
      if units == "dn" and x.max() <= 2.0:
        raise InputError(f"{modality}: values are at most {x.max():.3g}, which looks like "
                         "reflectance 0..1; pass units='reflectance' (DN = reflectance x 1e4 "
                         "expected)")
      if units == "reflectance" and x.max() > 20.0:
        raise InputError(f"{modality}: values up to {x.max():.3g} with units='reflectance'; "
                         "digital numbers need units='dn'")
      if units == "dn":
        x = np.stack([self._harmonise(img, offset) for img in x])
    drop = tuple(b for b in bands if b not in want)
    fill = tuple(b for b in want if b not in bands)
    table = (bands_lib.StemMapping(modality, modality, fill=fill, drop=drop),)
    plans = bands_lib.plan(table, {modality: SourceGroup(bands, units)}, self.contract,
                           f"encode({modality})")
    return np.stack([bands_lib.apply(plans, {modality: img}, self.contract)[modality]
                     for img in x])

  @staticmethod
  def _harmonise(img: np.ndarray, offset: bool | str) -> np.ndarray:
    has = harmonize.detect_offset(list(np.moveaxis(img, -1, 0))) if offset == "auto" else offset
    return harmonize.remove_offset(img).astype(np.float32) if has else img

  def encode(self, raw: np.ndarray | Mapping[str, np.ndarray], modality: str | None = None, *,
             bands: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
             units: str | Mapping[str, str] | None = None, offset: bool | str = "auto",
             layout: str = "NHWC", out_indices: Sequence[int] | None = None,
             batch_size: int = 32) -> dict[str, Any]:
    """{"cls": (B, d), "patch_tokens": (B, h, w, d), "features": ((B, h, w, d), ...)}."""
    if isinstance(raw, Mapping):
      arrays = dict(raw)
    else:
      if modality is None:
        raise InputError(f"give modality= (one of {MODALITIES}) for a single array")
      arrays = {modality: raw}
    unknown = set(arrays) - set(MODALITIES)
    if unknown:
      raise InputError(f"unknown modality {sorted(unknown)}; expected some of {MODALITIES}")
    pick = lambda v, m, default: v.get(m, default) if isinstance(v, Mapping) else (
        default if v is None else v)
    inputs = {m: self._prepare(m, x, pick(bands, m, None), pick(units, m, _DEFAULT_UNITS[m]),
                               offset, layout)
              for m, x in arrays.items()}
    shapes = {m: v.shape[:3] for m, v in inputs.items()}
    if len(set(shapes.values())) != 1:
      raise InputError(f"all modalities need the same batch and size, got {shapes}")
    n, h, w = next(iter(shapes.values()))
    p = self.patch_size
    if h % p or w % p or h != w:
      raise InputError(f"input is {h}x{w} px; a square size that is a multiple of the patch "
                       f"size {p} is needed (crop or pad first)")
    idx = tuple(self.model_config.out_indices if out_indices is None else out_indices)
    stems = tuple(m for m in MODALITIES if m in inputs)
    what = ("cls", "patch", "layers") if idx else ("cls", "patch")
    forward = features_lib.make_forward(self.weights, stems, h, what, idx)
    outs = []
    for lo in range(0, n, batch_size):
      chunk = {m: v[lo:lo + batch_size] for m, v in inputs.items()}
      got = len(chunk[stems[0]])
      if got < batch_size and n > batch_size:  # one shape for every call of a long run
        chunk = {m: np.concatenate([v, np.repeat(v[-1:], batch_size - got, 0)])
                 for m, v in chunk.items()}
      outs.append({k: np.asarray(v)[:got] for k, v in forward(self.params, chunk).items()})
    cat = {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}
    layers = tuple(cat["layers"][:, i] for i in range(len(idx))) if idx else ()
    return {"cls": cat["cls"], "patch_tokens": cat["patch"], "features": layers}


def load(weights: str, *, step: int | None = None, variant: str | None = None,
         seed: int = 0) -> TerraFM:
  """A workdir, a released-layout .pth/.safetensors (the published TerraFM-B included) or
  "random:<variant>"; see terrafm_jax.eval.weights for the contract rules."""
  # A notebook with libtpu installed but no TPU: start JAX on the CPU (no libtpu errors), as the
  # entry points do; an explicit JAX_PLATFORMS or an already started JAX is left alone.
  platforms.quiet_libtpu_without_tpu()
  return TerraFM(load_weights(weights, step=step, variant=variant, seed=seed))
