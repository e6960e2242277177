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

try:
  from terrafm_jax.data import device_crops  # pylint: disable=g-import-not-at-top
except ImportError:  # until terrafm_jax.data ships its device crops: a minimal stand-in
  device_crops = None


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


def _normalize_fallback(tiles, contract):
  out = {}
  for m in MODALITIES:
    mc = contract[m]
    x = tiles[m].astype(jnp.float32)
    out[m] = (x - jnp.asarray(mc.mean, jnp.float32)) / jnp.asarray(mc.std, jnp.float32)
  return out


def _crop_fallback(tiles, boxes, flip, out_size, method):
  """Resize box [y0, x0, h, w] of each tile to out_size (no antialias), h-flip where asked."""
  jmethod = {"bicubic": "cubic", "bilinear": "linear"}.get(method, method)

  def one(img, box, fl):
    scale = jnp.stack([out_size / box[2], out_size / box[3]])
    trans = -box[:2] * scale
    y = jax.image.scale_and_translate(img, (out_size, out_size, img.shape[-1]), (0, 1), scale,
                                      trans, method=jmethod, antialias=False)
    return jnp.where(fl, y[:, ::-1], y)

  per_view = jax.vmap(one, in_axes=(None, 0, 0))
  return {m: jax.vmap(per_view)(x, boxes, flip) for m, x in tiles.items()}


def make_views(batch: Mapping[str, jax.Array], contract: InputContract,
               data_cfg: ml_collections.ConfigDict, compute_dtype: Any) -> Views:
  n_g = data_cfg.n_global
  raw = {m: batch[m] for m in MODALITIES}
  if device_crops is not None:
    tiles = device_crops.normalize_tiles(raw, contract)
    crop_fn = lambda t, b, f, size: device_crops.crop_views(t, b, f, out_size=size,
                                                            method=data_cfg.crop_method)
  else:
    tiles = _normalize_fallback(raw, contract)
    crop_fn = lambda t, b, f, size: _crop_fallback(t, b, f, size, data_cfg.crop_method)

  def crops(lo, hi, size):
    out = crop_fn(tiles, batch["boxes"][:, lo:hi], batch["flip"][:, lo:hi], size)
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
