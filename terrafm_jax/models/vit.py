"""DINO-v1 ViT blocks: pre-norm, fused qkv with bias, exact GELU, LayerNorm eps 1e-6, drop path."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from terrafm_jax.models import axes
from terrafm_jax.models.attention import attention
from terrafm_jax.models.layers import dense, gelu, grad_barrier, layer_norm

Dtype = Any
VIT_LN_EPS = 1e-6


class DropPath(nn.Module):
  """Stochastic depth per sample (DINO's drop_path): x / keep * Bernoulli(keep); identity in eval."""
  rate: float  # a traced scalar under model.scan_layers

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    if not train or (isinstance(self.rate, (int, float)) and self.rate == 0.0):
      return x
    keep = 1.0 - self.rate
    rng = self.make_rng("drop_path")
    mask = jax.random.bernoulli(rng, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / keep, jnp.zeros_like(x)).astype(x.dtype)


class Attention(nn.Module):
  """Multi-head self-attention with the released fused qkv layout: out features [q | k | v], each
  head-contiguous, so that the PyTorch weight converts by a transpose only."""
  num_heads: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  # model.attention_impl (models/attention.py `attention`): "auto" (None) picks per platform at
  # lowering time; "core", "xla", "cudnn", "pallas" force one form.
  attention_impl: str | None = None

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    b, n, d = x.shape
    if d % self.num_heads:
      raise ValueError(f"width {d} is not divisible by {self.num_heads} heads")
    head_dim = d // self.num_heads
    qkv = dense(3 * d, (axes.EMBED, axes.QKV), dtype=self.dtype, param_dtype=self.param_dtype,
                name="qkv")(x)
    qkv = qkv.reshape(b, n, 3, self.num_heads, head_dim)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    out = attention(q, k, v, head_dim ** -0.5, impl=self.attention_impl or "auto")
    out = out.reshape(b, n, d)
    return dense(d, (axes.HEADS, axes.EMBED), dtype=self.dtype, param_dtype=self.param_dtype,
                 name="proj")(out)


class Mlp(nn.Module):
  hidden: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    d = x.shape[-1]
    x = dense(self.hidden, (axes.EMBED, axes.MLP), dtype=self.dtype, param_dtype=self.param_dtype,
              name="fc1")(x)
    x = gelu(x)
    return dense(d, (axes.MLP, axes.EMBED), dtype=self.dtype, param_dtype=self.param_dtype,
                 name="fc2")(x)


class Block(nn.Module):
  """x = x + DropPath(Attn(LN1(x))); x = x + DropPath(MLP(LN2(x)))."""
  num_heads: int
  mlp_dim: int
  drop_path: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention_impl: str | None = None
  grad_barrier: bool = True  # materialise the residual cotangent at the block input (layers.grad_barrier)

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    if self.grad_barrier:
      x = grad_barrier(x)
    y = layer_norm(axes.EMBED, epsilon=VIT_LN_EPS, name="norm1", **kw)(x)
    y = Attention(self.num_heads, attention_impl=self.attention_impl, name="attn", **kw)(y)
    x = x + DropPath(self.drop_path)(y, train)
    y = layer_norm(axes.EMBED, epsilon=VIT_LN_EPS, name="norm2", **kw)(x)
    y = Mlp(self.mlp_dim, name="mlp", **kw)(y)
    x = x + DropPath(self.drop_path)(y, train)
    return nn.with_logical_constraint(x, axes.ACTIVATION)
