"""Device-side normalisation and multi-crop (DESIGN.md decision 5), pure jax.numpy, jit-able.

The host ships whole tiles plus a crop plan (pipeline.py); inside the jitted train step:

    tiles = normalize_tiles(batch, contract)                           # {m: (B, T, T, C) f32}
    globals_ = crop_views(tiles, batch["boxes"][:, :2], batch["flip"][:, :2], 224)
    locals_ = crop_views(tiles, batch["boxes"][:, 2:], batch["flip"][:, 2:], 96)
    # each {m: (B, v, out, out, C)}

A box [y0, x0, h, w] (tile pixels, may be fractional) is resized to out x out with
`jax.image.scale_and_translate` (bicubic, Keys a = -0.5, antialiased when shrinking), so output
pixel i samples tile row y0 + (i + 0.5) * h / out - 0.5 (pixel-centre convention); an integer box
with h = w = out returns the tile pixels exactly. Flip reverses the output's x axis. All modalities
of a view share the box (they are co-registered); shapes are static for any box.

On the CPU backend in float32 the resize runs as one FFI kernel (ops/resample_kernel.py) with the
weights jax.image computes, summed over each output pixel's non-zero taps only, instead of dense
(tile x out) contractions that are almost all zeros (issue #9). The values agree with
jax.image to float rounding (tests/ops/test_resample_kernel.py).
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
# jax.image's own weight matrices, so the kernel path resamples with exactly its filter (private
# module; jax is pinned to 0.10.x and the kernel test compares against jax.image).
from jax._src.image import scale as _jax_image_scale

from terrafm_jax.data import contract as contract_lib
from terrafm_jax.models import axes
from terrafm_jax.ops import resample_kernel
from terrafm_jax.ops.per_device import per_device

_CUBIC_RADIUS, _CUBIC = _jax_image_scale._kernels[jax.image.ResizeMethod.CUBIC]


def normalize_tiles(batch: Mapping[str, jax.Array], contract: contract_lib.InputContract,
                    modalities: tuple[str, ...] = contract_lib.MODALITIES
                    ) -> dict[str, jax.Array]:
  """(x - mean) / std per band in f32; S2 nodata (DN 0) -> 0 (= band mean). Only `modalities`."""
  out = {}
  for m in modalities:
    x = jnp.asarray(batch[m]).astype(jnp.float32)
    mc = contract[m]
    y = (x - jnp.asarray(mc.mean, jnp.float32)) / jnp.asarray(mc.std, jnp.float32)
    if m != "s1":
      y = jnp.where(x == 0, 0.0, y)
    out[m] = y
  return out


def _crop_one(img: jax.Array, box: jax.Array, flip: jax.Array, out_size: int) -> jax.Array:
  """img (T, T, C), box (4,) [y0, x0, h, w], flip () bool -> (out, out, C)."""
  y0, x0, h, w = box[0], box[1], box[2], box[3]
  scale = jnp.stack([out_size / h, out_size / w]).astype(jnp.float32)
  translation = jnp.stack([-y0 * scale[0], -x0 * scale[1]]).astype(jnp.float32)
  out = jax.image.scale_and_translate(img, (out_size, out_size, img.shape[-1]), (0, 1), scale,
                                      translation, method="cubic", antialias=True)
  return jnp.where(flip, out[:, ::-1], out)


def _weights(size: int, out_size: int, start: jax.Array, length: jax.Array) -> jax.Array:
  """(size, out_size) weights of one axis, as jax.image.scale_and_translate forms them."""
  scale = (out_size / length).astype(jnp.float32)
  return _jax_image_scale.compute_weight_mat(size, out_size, scale, -start * scale, _CUBIC,
                                             antialias=True, edge_padding=False,
                                             radius=_CUBIC_RADIUS).astype(jnp.float32)


def _crop_kernel(stacked: jax.Array, boxes: jax.Array, flip: jax.Array, out_size: int):
  """crop_views' resize on the CPU kernel; None where it can't be split over the mesh."""
  _, t, s, _ = stacked.shape
  per_view = lambda f: jax.vmap(jax.vmap(f))  # noqa: E731  (over samples, then views)
  rows = per_view(lambda box: _weights(t, out_size, box[0], box[2]))(boxes)
  cols = per_view(lambda box: _weights(s, out_size, box[1], box[3]))(boxes)
  cols = jnp.where(flip[..., None, None], cols[..., ::-1], cols)  # flip = reversed output x
  batch_first = (axes.BATCH, None, None, None)
  return per_device(resample_kernel.resample, (stacked, rows, cols), (batch_first,) * 3,
                    batch_first + (None,))


def crop_views(tiles: Mapping[str, jax.Array], boxes: jax.Array, flip: jax.Array,
               out_size: int, view_slice: slice | None = None, use_kernel: bool = True
               ) -> dict[str, jax.Array]:
  """Crop + resize every view of every sample: {m: (B, T, T, C)} -> {m: (B, v, out, out, C)}.

  `boxes` (B, v, 4) and `flip` (B, v); `view_slice` optionally selects views of them first.
  `use_kernel=False` keeps jax.image's dense form on the CPU backend too.
  """
  if view_slice is not None:
    boxes, flip = boxes[:, view_slice], flip[:, view_slice]
  names = list(tiles)
  sizes = [tiles[m].shape[-1] for m in names]
  stacked = jnp.concatenate([tiles[m].astype(jnp.float32) for m in names], axis=-1)
  boxes, flip = boxes.astype(jnp.float32), flip.astype(bool)
  out = None
  if use_kernel and resample_kernel.kernel_applies(stacked):
    out = _crop_kernel(stacked, boxes, flip, out_size)
  if out is None:
    per_view = jax.vmap(_crop_one, in_axes=(None, 0, 0, None))          # over views
    per_sample = jax.vmap(per_view, in_axes=(0, 0, 0, None))            # over the batch
    out = per_sample(stacked, boxes, flip, out_size)
  res, start = {}, 0
  for m, c in zip(names, sizes):
    res[m] = out[..., start:start + c]
    start += c
  return res
