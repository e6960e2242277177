"""The ViT attention core as a Pallas TPU kernel, for any token count.

The TPU attention kernels shipped with jax (pallas/ops/tpu: splash_attention, flash_attention)
tile the sequence in blocks of 128 and refuse other lengths ("kv_seq_len=197 should be divisible
by block_k_major=128"), while ViT lengths are 197 (224 px / 16 + CLS), 37 (96 px crops), 17.
`pallas_attention` pads N up to a multiple of the block, keeps the padding out of the softmax
with segment ids (real tokens segment 0, padding segment 1: real queries never see padded keys,
padded query rows attend only to padding and so stay finite), runs the kernel, and slices the
padded rows away. Same maths as attention.attention_core: softmax(scale q k^T) v.

Kernel: splash attention (`make_splash_mha_single_device`, a FullMask per head). It takes
segment ids, has its own backward kernels (dq and dkv, through a custom_vjp), accepts head_dim
that is not a multiple of 128 (its scratch pads to lanes), and runs under `interpret=True` on
CPU, which the parity test uses. The older flash_attention kernel would also do, but splash is
the maintained one and its per-example (H, N, D) signature maps onto vmap over the batch.
Splash has no `scale` argument, so the queries are scaled first (as attention_core does, in the
input dtype); the softmax runs in float32 inside the kernel and the output has q's dtype.

Block sizes: one `block` (default 128, the kernel's lane width and its minimum) for every
forward and backward tile: block_q, block_kv, block_kv_compute, and the dq / dkv blocks. At
N = 197 that pads to 256 (2 x 2 tiles); N = 37 pads to one 128 tile.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as splash


def padded_length(n: int, block: int = 128) -> int:
  """n rounded up to a multiple of block."""
  return -(-n // block) * block


def _block_sizes(block: int) -> splash.BlockSizes:
  return splash.BlockSizes(
      block_q=block, block_kv=block, block_kv_compute=block,
      block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
      block_q_dq=block, block_kv_dq=block)


def _kernel(heads: int, n_pad: int, block: int, interpret: bool):
  # Built per trace, not cached: its mask-info arrays would be tracers inside a jit.
  mask = splash.MultiHeadMask([splash.FullMask((n_pad, n_pad)) for _ in range(heads)])
  return splash.make_splash_mha_single_device(
      mask, block_sizes=_block_sizes(block), interpret=interpret)


def pallas_attention(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, scale: float, *,
                     interpret: bool = False, block: int = 128) -> jnp.ndarray:
  """softmax(q k^T * scale) v for (B, N, H, D) inputs; (B, N, H, D) out, q's dtype.

  `interpret=True` runs the Pallas kernel in interpret mode (CPU); otherwise it needs a TPU."""
  if block % 128:
    raise ValueError(f"block={block} must be a multiple of 128 (the TPU lane width)")
  b, n, h, d = q.shape
  n_pad = padded_length(n, block)

  def prep(t: jnp.ndarray) -> jnp.ndarray:  # (B, N, H, D) -> (B, H, N_pad, D)
    return jnp.pad(t.transpose(0, 2, 1, 3), ((0, 0), (0, 0), (0, n_pad - n), (0, 0)))

  qs = q * jnp.asarray(scale, q.dtype)
  ids = (jnp.arange(n_pad) >= n).astype(jnp.int32)  # 0 real, 1 padding
  segments = splash.SegmentIds(q=ids, kv=ids)
  kernel = _kernel(h, n_pad, block, interpret)
  out = jax.vmap(kernel, in_axes=(0, 0, 0, None))(prep(qs), prep(k), prep(v), segments)
  return out[:, :, :n].transpose(0, 2, 1, 3)
