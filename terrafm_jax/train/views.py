"""Multi-crop views on the device: raw tiles + boxes -> normalised, view-major model inputs.

Runs inside the jitted step (DESIGN.md decision 5): the host ships raw tiles and crop boxes only.
Every view carries all three modalities (same crop box, co-registered) and a (3,) mask, so the
graph is static whatever the modality draw.
"""
from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from terrafm_jax.data.contract import MODALITIES, InputContract

from terrafm_jax.data import device_crops


class Views(NamedTuple):
  global_images: dict[str, jax.Array]     # modality -> (n_global * B, G, G, C), view-major
  local_images: dict[str, jax.Array] | None  # modality -> (n_local * B, L, L, C) or None
  student_global_mask: jax.Array           # (n_global * B, 3) bool
  student_local_mask: jax.Array | None     # (n_local * B, 3) bool
  teacher_mask: jax.Array                  # (n_global * B, 3) bool


def _view_major(x: jax.Array) -> jax.Array:
  """(B, V, ...) -> (V * B, ...), so a reshape to (V, B, ...) recovers the views."""
  x = jnp.swapaxes(x, 0, 1)
  return x.reshape((-1,) + x.shape[2:])


def make_views(batch: Mapping[str, jax.Array], contract: InputContract,
               data_cfg: ml_collections.ConfigDict, compute_dtype: Any) -> Views:
  n_g = data_cfg.n_global
  tiles = device_crops.normalize_tiles({m: batch[m] for m in MODALITIES}, contract)

  def crops(lo, hi, size):
    out = device_crops.crop_views(tiles, batch["boxes"][:, lo:hi], batch["flip"][:, lo:hi],
                                  out_size=size)
    return {m: _view_major(out[m]).astype(compute_dtype) for m in MODALITIES}

  n_views = batch["boxes"].shape[1]
  smask = batch["student_masks"]
  local, local_mask = None, None
  if n_views > n_g:
    local = crops(n_g, n_views, data_cfg.local_size)
    local_mask = _view_major(smask[:, n_g:])
  return Views(global_images=crops(0, n_g, data_cfg.global_size), local_images=local,
               student_global_mask=_view_major(smask[:, :n_g]), student_local_mask=local_mask,
               teacher_mask=_view_major(batch["teacher_masks"]))
