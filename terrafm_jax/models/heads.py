"""DINO projection head: 3-layer MLP -> bottleneck -> L2 norm -> weight-normalised prototypes."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from terrafm_jax.models import axes
from terrafm_jax.models.layers import dense, gelu

Dtype = Any


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
    w = v / jnp.linalg.norm(v, axis=0, keepdims=True)
    return jnp.dot(x, w.astype(jnp.float32), precision="highest")
