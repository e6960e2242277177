"""The attention core softmax(scale q k^T) v as one XLA:CPU FFI call per direction (`attention.cc`).

Why (issue #9): XLA:CPU runs the per-head batched dots of attention on one core and moves the
heads-major copies and the (B, H, N, N) intermediates between separate fusions. The kernel takes
one (sample, head) pair per task over XLA's intra-op thread pool, with OpenBLAS sgemm for the
products and the softmax / dS arithmetic on each N x N block while it is in cache, reading q, k, v
in the (B, N, H, D) layout they come in. `bench/attention_core.py` measures it against the XLA
form; tests/ops checks values and gradients against it.

The kernel exists for the CPU platform only (ops/cpu_ffi.py): it is built and registered when
XLA:CPU lowers it, and models/attention.py calls it from the `cpu` branch of
`jax.lax.platform_dependent`, so TPU and GPU compiles never see it. Where it can't be built, the
CPU lowering uses `_xla_forward` / `_xla_backward` below (the same maths on XLA's ops).
The custom call is opaque to the SPMD partitioner: under a multi-device mesh call it per device
(models/attention.py does, through ops/per_device.py).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from terrafm_jax.ops import cpu_build
from terrafm_jax.ops import cpu_ffi

FORWARD, BACKWARD = "terrafm_attention_fwd", "terrafm_attention_bwd"


def _xla_forward(q, k, v, *, scale):
  """(out (B, N, H, D), probs (B, H, N, N)) on XLA's ops: the CPU fallback."""
  logits = jnp.einsum("bqhd,bkhd->bhqk", q * scale, k)
  probs = jax.nn.softmax(logits, axis=-1)
  return jnp.einsum("bhqk,bkhd->bqhd", probs, v), probs


def _xla_backward(q, k, v, out, probs, d_out, *, scale):
  """(dq, dk, dv) of the forward above, from its probabilities: the CPU fallback."""
  dv = jnp.einsum("bhqk,bqhd->bkhd", probs, d_out)
  dp = jnp.einsum("bqhd,bkhd->bhqk", d_out, v)
  row = jnp.einsum("bqhd,bqhd->bhq", d_out, out)[..., None]
  ds = probs * (dp - row)
  return (jnp.einsum("bhqk,bkhd->bqhd", ds, k) * scale,
          jnp.einsum("bhqk,bqhd->bkhd", ds, q * scale), dv)


@functools.cache
def kernel_available() -> bool:
  """Build, load and register the kernel with XLA:CPU (at the first CPU lowering); False, warned
  once, if it can't be built here."""
  if not cpu_build.register("attention", ((FORWARD, "TerrafmAttentionForward"),
                                          (BACKWARD, "TerrafmAttentionBackward"))):
    return False
  cpu_build.load("attention").terrafm_single_threaded_blas()
  return True


_FORWARD_CALL = cpu_ffi.CpuFfiCall(FORWARD, kernel_available, _xla_forward)
_BACKWARD_CALL = cpu_ffi.CpuFfiCall(BACKWARD, kernel_available, _xla_backward)


def kernel_applies(*arrays: jax.Array) -> bool:
  """The kernel takes float32 only (whether it runs is decided when lowering for CPU)."""
  return cpu_build.float32(*arrays)


def _forward(q, k, v, scale):
  b, n, h, _ = q.shape
  shapes = (jax.ShapeDtypeStruct(q.shape, jnp.float32),
            jax.ShapeDtypeStruct((b, h, n, n), jnp.float32))
  return _FORWARD_CALL(q, k, v, out_shapes=shapes, scale=np.float32(scale))


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
  return _BACKWARD_CALL(q, k, v, out, probs, d_out.astype(jnp.float32), out_shapes=shapes,
                        scale=np.float32(scale))


fused_attention.defvjp(_fwd, _bwd)
