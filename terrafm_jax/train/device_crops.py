"""Device-side normalisation and multi-crop (DESIGN.md decision 5), pure jax.numpy, jit-able.

The host ships whole tiles plus a crop plan (data/pipeline.py); inside the jitted train step:

    tiles = normalize_tiles(batch, contract)                           # {m: (B, T, T, C) f32}
    globals_ = crop_views(tiles, batch["boxes"][:, :2], batch["flip"][:, :2], 224)
    locals_ = crop_views(tiles, batch["boxes"][:, 2:], batch["flip"][:, 2:], 96)
    # each {m: (B, v, out, out, C)}

A box [y0, x0, h, w] (tile pixels, may be fractional) is resized to out x out with
`jax.image.scale_and_translate` (bicubic, Keys a = -0.5, antialiased when shrinking), so output
pixel i samples tile row y0 + (i + 0.5) * h / out - 0.5 (pixel-centre convention); an integer box
with h = w = out returns the tile pixels exactly. Flip reverses the output's x axis. All modalities
of a view share the box (they are co-registered); shapes are static for any box.

Compiled for CPU, in float32, the resize runs as one FFI kernel (ops/resample_kernel.py) with the
weights jax.image uses, summed over each output pixel's non-zero taps only, instead of dense
(tile x out) contractions that are almost all zeros (issue #9). The values agree with
jax.image to float rounding (tests/ops/test_resample_kernel.py). The choice is made when the step
is lowered (`jax.lax.platform_dependent`), so a TPU or GPU compile gets jax.image's form and never
sees the kernel, whatever the host.
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from terrafm_jax.data import contract as contract_lib
from terrafm_jax.models import axes
from terrafm_jax.ops import resample_kernel
from terrafm_jax.ops.per_device import per_device


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


def _keys_cubic(x: jax.Array) -> jax.Array:
  """Keys' cubic convolution kernel with a = -0.5 at distance x >= 0 (zero from 2 on)."""
  near = (1.5 * x - 2.5) * x * x + 1.0
  far = ((-0.5 * x + 2.5) * x - 4.0) * x + 2.0
  return jnp.where(x < 1.0, near, jnp.where(x < 2.0, far, 0.0))


def _weights(size: int, out_size: int, start: jax.Array, length: jax.Array) -> jax.Array:
  """(size, out_size) weights of one axis: output pixel i samples input position
  start + (i + 0.5) * length / out_size - 0.5 with the cubic kernel, widened by length / out_size
  when shrinking (antialiasing), each column normalised to sum 1, and zero for a sample outside
  the input; the weights jax.image.scale_and_translate(method="cubic", antialias=True) uses."""
  # In jax.image's order of operations (scale, its inverse, translation), so that the float32
  # rounding of the sample positions is the same as on the dense path.
  scale = (out_size / length).astype(jnp.float32)
  inv_scale = 1.0 / scale
  translation = -start * scale
  sample = (jnp.arange(out_size, dtype=jnp.float32) + 0.5) * inv_scale - translation * inv_scale - 0.5
  distance = jnp.abs(sample[None, :] - jnp.arange(size, dtype=jnp.float32)[:, None])
  w = _keys_cubic(distance / jnp.maximum(inv_scale, 1.0))
  total = jnp.sum(w, axis=0, keepdims=True)
  w = jnp.where(jnp.abs(total) > 1000.0 * float(np.finfo(np.float32).eps),
                w / jnp.where(total != 0, total, 1.0), 0.0)
  inside = (sample >= -0.5) & (sample <= size - 0.5)
  return jnp.where(inside[None, :], w, 0.0).astype(jnp.float32)


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

  def dense(stacked, boxes, flip):  # jax.image's form: every platform
    per_view = jax.vmap(_crop_one, in_axes=(None, 0, 0, None))          # over views
    return jax.vmap(per_view, in_axes=(0, 0, 0, None))(stacked, boxes, flip, out_size)

  def cpu(stacked, boxes, flip):  # the kernel where it applies, chosen when lowering for CPU
    out = _crop_kernel(stacked, boxes, flip, out_size)
    return dense(stacked, boxes, flip) if out is None else out

  if use_kernel and resample_kernel.kernel_applies(stacked):
    out = jax.lax.platform_dependent(stacked, boxes, flip, cpu=cpu, default=dense)
  else:
    out = dense(stacked, boxes, flip)
  res, start = {}, 0
  for m, c in zip(names, sizes):
    res[m] = out[..., start:start + c]
    start += c
  return res
