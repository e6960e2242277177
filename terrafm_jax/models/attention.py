"""The ViT's attention core, softmax(q k^T * scale) v, with a hand-written backward pass.

Forward as the released PyTorch code: q, k, v permuted heads-major to (B, H, N, hd), the logits
from the scaled queries, softmax in float32, probabilities cast back to the compute dtype.

Backward (the usual attention VJP, as in FlashAttention's backward):
  dV = P^T dO        dP = dO V^T        D = rowsum(dO * O)   (= rowsum(dP * P), on (N, hd) not (N, N))
  dS = P * (dP - D)  dQ = dS K * scale  dK = dS^T (Q * scale)
Autodiff of the same forward differentiates through softmax's max/sum/normalise chain: on
XLA:CPU that chain materialises two more (B, H, N, N) tensors per block (a broadcast of the row
sums and the normalised product) and reads P twice more. The ViT-S/16 attention core forward +
backward (16 x 197 tokens, 6 heads) took 55-62 ms with autodiff and 40-48 ms with this VJP,
PyTorch eager 35 ms (issue #9). Outputs are the same maths; gradients agree to float rounding
(tests/models/test_model_ops.py checks both against jax.nn.dot_product_attention).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from terrafm_jax.models import axes
from terrafm_jax.ops import attention_kernel
from terrafm_jax.ops.per_device import per_device


def _heads_major(t: jnp.ndarray) -> jnp.ndarray:
  return t.transpose(0, 2, 1, 3)  # (B, N, H, hd) <-> (B, H, N, hd)


def _forward(q, k, v, scale):
  qs = q * jnp.asarray(scale, q.dtype)
  logits = jnp.einsum("bhqd,bhkd->bhqk", qs, k)
  p = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
  return jnp.einsum("bhqk,bhkd->bhqd", p, v), (qs, k, v, p)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _core(q, k, v, scale):
  return _forward(q, k, v, scale)[0]


def _core_fwd(q, k, v, scale):
  out, (qs, k, v, p) = _forward(q, k, v, scale)
  return out, (qs, k, v, p, out)


def _core_bwd(scale, res, d_out):
  qs, k, v, p, out = res
  dv = jnp.einsum("bhqk,bhqd->bhkd", p, d_out)
  dp = jnp.einsum("bhqd,bhkd->bhqk", d_out, v).astype(jnp.float32)
  row = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1, keepdims=True)
  ds = (p.astype(jnp.float32) * (dp - row)).astype(qs.dtype)
  dq = jnp.einsum("bhqk,bhkd->bhqd", ds, k) * jnp.asarray(scale, qs.dtype)
  dk = jnp.einsum("bhqk,bhqd->bhkd", ds, qs)
  return dq, dk, dv


_core.defvjp(_core_fwd, _core_bwd)


def attention_core(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, scale: float) -> jnp.ndarray:
  """softmax(q k^T * scale) v for (B, N, H, hd) inputs; (B, N, H, hd) out.

  The same maths as jax.nn.dot_product_attention's XLA path. On XLA:CPU even this core's
  autodiff form ran faster than that path (one ViT-B block forward + backward 1.06x), and the
  hand-written backward pass above is faster again (issue #9)."""
  q, k, v = (_heads_major(t) for t in (q, k, v))
  return _heads_major(_core(q, k, v, float(scale)))


def attention(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, scale: float,
              use_kernel: bool = True) -> jnp.ndarray:
  """attention_core, or the same maths as one fused CPU kernel where that applies.

  The kernel (ops/attention_kernel.py) applies to float32 on the CPU backend. Under a mesh of more
  than one device it runs per device (shard_map over the logical rules' batch and heads axes,
  ops/per_device.py); where the rules don't split q evenly, XLA's form runs instead."""
  if not (use_kernel and attention_kernel.kernel_applies(q, k, v)):
    return attention_core(q, k, v, scale)
  names = (axes.BATCH, axes.SEQ, axes.HEADS, None)
  out = per_device(lambda *qkv: attention_kernel.fused_attention(*qkv, float(scale)),
                   (q, k, v), (names,) * 3, names)
  return attention_core(q, k, v, scale) if out is None else out
