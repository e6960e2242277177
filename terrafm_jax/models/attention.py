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


IMPLS = ("auto", "core", "xla", "cudnn", "pallas")


def _cpu_attention(q, k, v, *, scale):
  """The fused CPU kernel where it applies (float32; split per device under a mesh whose logical
  rules divide batch and heads), else the core."""
  if not attention_kernel.kernel_applies(q, k, v):
    return attention_core(q, k, v, scale)
  names = (axes.BATCH, axes.SEQ, axes.HEADS, None)
  out = per_device(lambda *qkv: attention_kernel.fused_attention(*qkv, float(scale)),
                   (q, k, v), (names,) * 3, names)
  return attention_core(q, k, v, scale) if out is None else out


@functools.cache
def cudnn_available() -> bool:
  """cuDNN's fused attention can be traced here (a CUDA jaxlib with cuDNN on this host)."""
  x = jax.ShapeDtypeStruct((1, 16, 1, 64), jnp.bfloat16)
  try:
    jax.eval_shape(lambda a: jax.nn.dot_product_attention(a, a, a, implementation="cudnn"), x)
  except Exception:  # pylint: disable=broad-except  (RuntimeError "cuDNN is not detected", ...)
    return False
  return True


def _gpu_attention(q, k, v, *, scale):
  """cuDNN's fused attention in bf16 / fp16 where this host can emit it, else the core."""
  if q.dtype in (jnp.bfloat16, jnp.float16) and cudnn_available():
    return jax.nn.dot_product_attention(q, k, v, scale=scale, implementation="cudnn")
  return attention_core(q, k, v, scale)


def _xla_core(q, k, v, *, scale):
  return attention_core(q, k, v, scale)


def _pallas(q, k, v, *, scale):
  """The Pallas kernel per device (a Mosaic call can't be partitioned by XLA), else the core."""
  from terrafm_jax.models import attention_pallas  # pylint: disable=g-import-not-at-top
  names = (axes.BATCH, axes.SEQ, axes.HEADS, None)
  out = per_device(lambda *qkv: attention_pallas.pallas_attention(*qkv, scale), (q, k, v),
                   (names,) * 3, names)
  return attention_core(q, k, v, scale) if out is None else out


def attention(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, scale: float,
              impl: str = "auto") -> jnp.ndarray:
  """softmax(q k^T * scale) v for (B, N, H, hd) inputs, by `impl` (model.attention_impl):

  * "auto": chosen for the platform being compiled for, at lowering time
    (`jax.lax.platform_dependent`; both branches are traced, only the target's is lowered):
    CPU the fused kernel in float32 (ops/attention_kernel.py, per device under a mesh), GPU
    cuDNN's fused attention in bf16 where this host's jaxlib has cuDNN, TPU and the rest the core
    above (XLA fuses it well at ViT lengths; README "Accelerators");
  * "core": the core above everywhere;
  * "xla" / "cudnn": jax.nn.dot_product_attention with that implementation;
  * "pallas": the Pallas TPU splash kernel with the sequence padded to its block on TPU
    (models/attention_pallas.py), the core elsewhere.
  """
  scale = float(scale)
  if impl == "auto":
    return jax.lax.platform_dependent(
        q, k, v, cpu=functools.partial(_cpu_attention, scale=scale),
        cuda=functools.partial(_gpu_attention, scale=scale),
        default=functools.partial(_xla_core, scale=scale))
  if impl == "core":
    return attention_core(q, k, v, scale)
  if impl in ("xla", "cudnn"):
    return jax.nn.dot_product_attention(q, k, v, scale=scale, implementation=impl)
  if impl == "pallas":
    return jax.lax.platform_dependent(q, k, v, tpu=functools.partial(_pallas, scale=scale),
                                      default=functools.partial(_xla_core, scale=scale))
  raise ValueError(f"attention impl {impl!r}: expected one of {', '.join(map(repr, IMPLS))}")
