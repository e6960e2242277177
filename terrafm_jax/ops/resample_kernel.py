"""Crop-box resampling as an XLA:CPU FFI call (`resample.cc`): the same weights as jax.image's
antialiased resize, summed only over each output pixel's non-zero taps.

Why (issue #9): jax.image.scale_and_translate contracts the whole tile with dense (tile x out)
weight matrices, ~0.66 GFLOP for one 224-px view of a 256-px tile (and 3x that for a real 534-px
tile), almost all of it multiplying zeros; the cubic filter has 4 taps per output pixel, more when
shrinking. `bench/compare_torch.py` times the crops inside the step; tests/ops checks the kernel
against jax.image.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from terrafm_jax.ops import cpu_build
from terrafm_jax.ops import cpu_ffi

TARGET = "terrafm_resample"


def kernel_available() -> bool:
  """Build, load and register the kernel with XLA:CPU (at the first CPU lowering); False, warned
  once, if it can't be built here."""
  return cpu_build.register("resample", ((TARGET, "TerrafmResample"),))


def kernel_applies(*arrays: jax.Array) -> bool:
  """The kernel takes float32 only (whether it runs is decided when lowering for CPU)."""
  return cpu_build.float32(*arrays)


def _xla_resample(images, row_weights, col_weights):
  """The same contraction on XLA's dots (dense over all taps): the CPU fallback."""
  return (jnp.einsum("bvri,bvxj,brxc->bvijc", row_weights, col_weights, images),)


_CALL = cpu_ffi.CpuFfiCall(TARGET, kernel_available, _xla_resample)


def resample(images: jax.Array, row_weights: jax.Array, col_weights: jax.Array) -> jax.Array:
  """images (B, T, S, C), row_weights (B, V, T, O), col_weights (B, V, S, O) -> (B, V, O, O, C):
  out[b, v, i, j] = sum_r sum_x row_weights[b, v, r, i] col_weights[b, v, x, j] images[b, r, x].
  For the CPU platform only (`jax.lax.platform_dependent`'s cpu branch; ops/cpu_ffi.py)."""
  b, _, _, c = images.shape
  v, o = row_weights.shape[1], row_weights.shape[3]
  shape = jax.ShapeDtypeStruct((b, v, o, o, c), jnp.float32)
  return _CALL(images, row_weights, col_weights, out_shapes=(shape,))[0]
