"""Position-embedding resize that matches PyTorch's bicubic `interpolate` exactly.

DINO / TerraFM resize the 14x14 learnable grid with
  F.interpolate(grid, scale_factor=((g_h + 0.1) / 14, (g_w + 0.1) / 14), mode="bicubic")
(align_corners=False). PyTorch then uses the Keys cubic kernel with a = -0.75, no antialiasing,
source coordinate src = (dst + 0.5) / scale - 0.5 computed from the *given* scale factor, and
clamps the four taps to the border. `jax.image.resize` uses a = -0.5 and antialiases, so it would
not reproduce released features at 96 px; we build the interpolation matrix ourselves.
"""
from __future__ import annotations

import functools
import math

import jax.numpy as jnp
import numpy as np

_A = -0.75  # PyTorch's bicubic coefficient


def _cubic_weights(t: np.ndarray) -> np.ndarray:
  """Keys kernel weights for taps at offsets -1, 0, 1, 2 of a fractional position t."""
  def near(x):  # |x| <= 1
    return ((_A + 2) * x - (_A + 3)) * x * x + 1

  def far(x):  # 1 < |x| < 2
    return ((_A * x - 5 * _A) * x + 8 * _A) * x - 4 * _A

  return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


@functools.lru_cache(maxsize=64)
def bicubic_matrix(in_size: int, out_size: int, scale_factor: float) -> np.ndarray:
  """(out_size, in_size) float32 matrix M with out = M @ in along one axis."""
  # PyTorch computes the source coordinates in float32 from 1 / scale_factor.
  scale = np.float32(1.0 / scale_factor)
  dst = np.arange(out_size, dtype=np.float32)
  src = scale * (dst + np.float32(0.5)) - np.float32(0.5)
  base = np.floor(src)
  t = (src - base).astype(np.float32)
  weights = _cubic_weights(t).astype(np.float32)
  m = np.zeros((out_size, in_size), np.float32)
  for tap in range(4):
    idx = np.clip(base.astype(np.int64) - 1 + tap, 0, in_size - 1)
    np.add.at(m, (np.arange(out_size), idx), weights[:, tap])
  return m


def dino_grid_scale(src_grid: int, dst_grid: int) -> float:
  """DINO's scale factor with the +0.1 offset that avoids floating-point rounding of the size."""
  return (dst_grid + 0.1) / src_grid


def resize_pos_embed(pos_embed: jnp.ndarray, grid_hw: tuple[int, int]) -> jnp.ndarray:
  """Resize (1, 1 + G*G, d) [CLS first] to (1, 1 + gh*gw, d); the CLS row is kept."""
  n = pos_embed.shape[1] - 1
  src = math.isqrt(n)
  if src * src != n:
    raise ValueError(f"pos_embed has {n} patch positions, which is not a square grid")
  gh, gw = grid_hw
  if (gh, gw) == (src, src):
    return pos_embed
  for g in (gh, gw):
    # PyTorch derives the output size as floor(src * scale); check it lands on g.
    if math.floor(src * dino_grid_scale(src, g)) != g:
      raise ValueError(f"cannot resize a {src}x{src} position grid to {g} rows/cols")
  cls_pos, patch_pos = pos_embed[:, :1], pos_embed[:, 1:]
  grid = patch_pos.reshape(src, src, -1)
  mh = jnp.asarray(bicubic_matrix(src, gh, dino_grid_scale(src, gh)))
  mw = jnp.asarray(bicubic_matrix(src, gw, dino_grid_scale(src, gw)))
  out = jnp.einsum("ij,jkd,lk->ild", mh, grid.astype(jnp.float32), mw,
                   precision="highest").astype(pos_embed.dtype)
  return jnp.concatenate([cls_pos, out.reshape(1, gh * gw, -1)], axis=1)
