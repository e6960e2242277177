"""The attention core softmax(scale q k^T) v as one XLA:CPU FFI call per direction (`attention.cc`).

Why (issue #9): XLA:CPU runs the per-head batched dots of attention on one core and moves the
heads-major copies and the (B, H, N, N) intermediates between separate fusions. The kernel takes
one (sample, head) pair per task over XLA's intra-op thread pool, with OpenBLAS sgemm for the
products and the softmax / dS arithmetic on each N x N block while it is in cache, reading q, k, v
in the (B, N, H, D) layout they come in. `bench/attention_core.py` measures it against the XLA
form; tests/ops checks values and gradients against it.

`kernel_applies(...)` says whether the kernel can run: float32 operands, tracing for the CPU
backend, and a library that builds here (ops/cpu_build.py; otherwise one warning and False).
The custom call is opaque to the SPMD partitioner: under a multi-device mesh call it per device
(models/attention.py does, through ops/per_device.py).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from terrafm_jax.ops import cpu_build

FORWARD, BACKWARD = "terrafm_attention_fwd", "terrafm_attention_bwd"


@functools.cache
def kernel_available() -> bool:
  """True once the kernel is built, loaded and registered with XLA:CPU; False (warned once) if not."""
  if not cpu_build.register("attention", ((FORWARD, "TerrafmAttentionForward"),
                                          (BACKWARD, "TerrafmAttentionBackward"))):
    return False
  cpu_build.load("attention").terrafm_single_threaded_blas()
  return True


def kernel_applies(*arrays: jax.Array) -> bool:
  return cpu_build.cpu_float32(*arrays) and kernel_available()


def _forward(q, k, v, scale):
  b, n, h, _ = q.shape
  shapes = (jax.ShapeDtypeStruct(q.shape, jnp.float32),
            jax.ShapeDtypeStruct((b, h, n, n), jnp.float32))
  # sequential: each vmapped slice is its own call (the model never vmaps the core).
  return jax.ffi.ffi_call(FORWARD, shapes, vmap_method="sequential")(
      q, k, v, scale=np.float32(scale))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def fused_attention(q: jax.Array, k: jax.Array, v: jax.Array, scale: float) -> jax.Array:
  """softmax(scale q k^T) v for float32 (B, N, H, D) q, k, v; (B, N, H, D) out, on the CPU kernel."""
  return _forward(q, k, v, scale)[0]


def _fwd(q, k, v, scale):
  out, probs = _forward(q, k, v, scale)
  return out, (q, k, v, out, probs)


def _bwd(scale, res, d_out):
  q, k, v, out, probs = res
  shapes = tuple(jax.ShapeDtypeStruct(q.shape, jnp.float32) for _ in range(3))
  return jax.ffi.ffi_call(BACKWARD, shapes, vmap_method="sequential")(
      q, k, v, out, probs, d_out.astype(jnp.float32), scale=np.float32(scale))


fused_attention.defvjp(_fwd, _bwd)
