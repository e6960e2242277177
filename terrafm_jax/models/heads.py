"""DINO projection head: 3-layer MLP -> bottleneck -> L2 norm -> weight-normalised prototypes."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from terrafm_jax.models import axes
from terrafm_jax.models.layers import dense, gelu

Dtype = Any


def _sum_sq_loop(v: jnp.ndarray) -> jnp.ndarray:
  # Row-by-row accumulation: vectorised over the columns. XLA:CPU emits a reduction over the
  # leading axis of a row-major (D, K) array as a slow strided loop (~0.3 s for 256 x 65536 on
  # 2 cores, vs ~5 ms here). asarray: v may be a host numpy array (an imported checkpoint).
  v = jnp.asarray(v)
  return jax.lax.fori_loop(0, v.shape[0], lambda i, acc: acc + v[i] * v[i],
                           jnp.zeros(v.shape[1:], v.dtype), unroll=4)


def _sum_sq_reduce(v: jnp.ndarray) -> jnp.ndarray:
  return jnp.sum(v * v, axis=0)


@jax.custom_jvp
def column_sq_norms(v: jnp.ndarray) -> jnp.ndarray:
  """sum_d v[d, k]^2 for a (D, K) matrix: the squared L2 norm of each column (prototype)."""
  return jax.lax.platform_dependent(v, cpu=_sum_sq_loop, default=_sum_sq_reduce)


@column_sq_norms.defjvp
def _column_sq_norms_jvp(primals, tangents):
  (v,), (dv,) = primals, tangents
  # Linear in dv; its transpose (the VJP) is the elementwise 2 v g, no loop in the backward pass.
  return column_sq_norms(v), 2.0 * jnp.sum(v * dv, axis=0)


def weight_norm_logits(x: jnp.ndarray, v: jnp.ndarray) -> jnp.ndarray:
  """x @ (v / ||v||_col) for x (..., D) and prototype directions v (D, K), in float32.

  Computed as (x @ v) / ||v||_col, the same function (values and gradients): the per-prototype
  norms are computed once on (K,) and applied to the (..., K) output. Normalising the weight first
  lets XLA:CPU fuse the normalisation into the dot and recompute it inside (~7.7 s instead of
  15 ms for B=16, D=256, K=65536; issue #9).
  """
  x = x.astype(jnp.float32)
  v = v.astype(jnp.float32)
  return jnp.dot(x, v, precision="highest") / jnp.sqrt(column_sq_norms(v))


class DINOHead(nn.Module):
  """DINO-v1 head (no BN). The last layer is weight-normalised with the norm g fixed to 1
  (`norm_last_layer=True`): its effective weight is each prototype's direction, so only the
  direction v is a parameter (kernel (bottleneck, K), normalised over the bottleneck axis).

  Computed in float32 whatever the encoder's compute dtype: the softmax over 65k prototypes and the
  centers are precision-sensitive (METHOD.md 1.7).
  """
  out_dim: int = 65536
  hidden_dim: int = 2048
  bottleneck_dim: int = 256
  nlayers: int = 3
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    if self.nlayers < 1:
      raise ValueError(f"DINO head needs nlayers >= 1, got {self.nlayers}")
    x = x.astype(jnp.float32)
    kw = dict(dtype=jnp.float32, param_dtype=self.param_dtype)
    dims = [self.hidden_dim] * (self.nlayers - 1) + [self.bottleneck_dim]
    names_in = [axes.HEAD_IN] + [axes.HEAD_HIDDEN] * (self.nlayers - 1)
    for i, (dim, name_in) in enumerate(zip(dims, names_in)):
      name_out = axes.BOTTLENECK if i == self.nlayers - 1 else axes.HEAD_HIDDEN
      x = dense(dim, (name_in, name_out), name=f"mlp_{i}", **kw)(x)
      if i < self.nlayers - 1:
        x = gelu(x)
    # F.normalize(x, dim=-1, p=2) with eps 1e-12.
    x = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    v = self.param("last_layer", nn.with_logical_partitioning(
        nn.initializers.normal(0.02), (axes.BOTTLENECK, axes.PROTOTYPES)),
        (self.bottleneck_dim, self.out_dim), self.param_dtype)
    return weight_norm_logits(x, v)
