"""Modality-specific patch embedding, the shared TokenProjection and cross-attention fusion.

Released layout (METHOD.md 1.3-1.4), per modality m in {s1, s2_l1c, s2_l2a}:
  t_m    = conv2d_m(x_m) + m_embed                 # (B, N, A), A = 3 d
  case 1 = proj3(proj2(norm_input(proj1(t_m))))    # one modality in the view
(proj3(proj2(.)) is computed as one product of the two weights: TokenProjection.output).

Fusion ("case N", >= 2 modalities in a view; METHOD.md 1.5), per patch position, training-only
parameters under `fusion/` (absent from the released checkpoint):
  K_m = t_m @ fusion/key (A x A, no bias)          V_m = proj1(t_m)
  z'  = MHA(fusion/queries (N_q x A), K_1..M, V_1..M)  softmax over the available modalities only
  z'  = norm_input(z');  w = softmax_q(z' @ fusion/score (A x 1));  fused = sum_q w_q z'_q
  out = proj3(proj2(fused))
A sample whose mask holds exactly one modality takes the case-1 value bit for bit (selected with
`where`, not recovered from attention weights, so there is no rounding difference).
"""
from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from terrafm_jax.data.contract import MODALITIES
from terrafm_jax.models import axes
from terrafm_jax.models.layers import (PatchConv, dense, dense_params, layer_norm,
                                       torch_default_conv_init)

Dtype = Any
# TokenProjection.output_weights(): (W2 W3, b2 W3 + b3), shared by the calls of one forward pass.
OutputWeights = tuple[jnp.ndarray, jnp.ndarray]

# Input channels of each stem (contract band counts: S1 VV,VH; S2 12 bands, L1C without B10).
STEM_CHANNELS: dict[str, int] = {"s1": 2, "s2_l1c": 12, "s2_l2a": 12}
# PyTorch module names of the stems and modality embeddings in the released layout.
STEM_NAMES: dict[str, str] = {"s1": "conv2d_s1", "s2_l1c": "conv2d_s2_l1c", "s2_l2a": "conv2d_s2_l2a"}
EMBED_NAMES: dict[str, str] = {"s1": "s1_embed", "s2_l1c": "s2_l1c_embed", "s2_l2a": "s2_l2a_embed"}
NORM_INPUT_EPS = 1e-5  # PyTorch's LayerNorm default, NOT the ViT's 1e-6


class TokenProjection(nn.Module):
  """proj1 (value, no bias) -> norm_input -> proj2 -> proj3, split so fusion can sit in between.

  proj2 and proj3 are two linear maps with nothing in between, so `output` applies their product
  once: z @ (W2 W3) + (b2 W3 + b3). Per token that is 2 A d FLOPs instead of 2 A^2 + 2 A d (A = 3d:
  4x fewer), plus one A x A x d product of the weights per call; the gradients still reach W2, b2,
  W3 and b3 separately (the same maths by associativity; values differ from the two-layer chain
  by float rounding only). The parameters keep the released names and layout.
  """
  embed_dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    a = self._attn_dim
    self.proj1 = dense(a, (axes.ATTN_IN, axes.ATTN_DIM), use_bias=False, **kw)
    self.norm_input = layer_norm(axes.ATTN_DIM, epsilon=NORM_INPUT_EPS, **kw)
    self.proj2 = dense_params(a, a, (axes.ATTN_IN, axes.ATTN_DIM), param_dtype=self.param_dtype)
    self.proj3 = dense_params(a, self.embed_dim, (axes.ATTN_IN, axes.EMBED),
                              param_dtype=self.param_dtype)

  @property
  def _attn_dim(self) -> int:
    return 3 * self.embed_dim

  def value(self, t):
    return self.proj1(t)

  def norm(self, v):
    return self.norm_input(v)

  def output_weights(self) -> OutputWeights:
    """(W2 W3, b2 W3 + b3) in the parameter dtype, at full precision (TPUs and GPUs would
    otherwise round an f32 product through bf16/tf32 passes); weight-sized, once per call."""
    k2, b2 = self.proj2()
    k3, b3 = self.proj3()
    hi = jax.lax.Precision.HIGHEST
    return jnp.dot(k2, k3, precision=hi), jnp.dot(b2, k3, precision=hi) + b3

  def output(self, z, weights: OutputWeights | None = None):
    """proj3(proj2(z)); `weights` from `output_weights()` when several calls share them."""
    kernel, bias = self.output_weights() if weights is None else weights
    z, kernel, bias = nn.dtypes.promote_dtype(z, kernel, bias, dtype=self.dtype)
    y = jnp.dot(z.reshape(-1, z.shape[-1]), kernel) + bias
    return y.reshape(z.shape[:-1] + (self.embed_dim,))

  def __call__(self, t, weights: OutputWeights | None = None):
    return self.output(self.norm(self.value(t)), weights)


class CrossAttentionFusion(nn.Module):
  """Per-position attention of N_q learned queries over the available modality tokens."""
  num_queries: int = 5
  num_heads: int = 16
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, t: jnp.ndarray, v: jnp.ndarray, mask: jnp.ndarray, norm) -> jnp.ndarray:
    """t, v: (B, N, M, A) stem tokens and values; mask: (B, M) bool; norm: the shared norm_input."""
    b, n, m, a = t.shape
    if a % self.num_heads:
      raise ValueError(f"fusion: attn_dim {a} is not divisible by {self.num_heads} heads")
    hd = a // self.num_heads
    queries = self.param(
        "queries", nn.with_logical_partitioning(nn.initializers.normal(1.0),
                                                (axes.QUERIES, axes.ATTN_DIM)),
        (self.num_queries, a), self.param_dtype).astype(self.dtype)
    k = dense(a, (axes.ATTN_IN, axes.ATTN_DIM), use_bias=False, dtype=self.dtype,
              param_dtype=self.param_dtype, name="key")(t)
    q = queries.reshape(self.num_queries, self.num_heads, hd)
    k = k.reshape(b, n, m, self.num_heads, hd)
    v = v.reshape(b, n, m, self.num_heads, hd)
    logits = jnp.einsum("qhd,bnmhd->bnhqm", q, k).astype(jnp.float32) * hd ** -0.5
    logits = jnp.where(mask[:, None, None, None, :], logits, -jnp.inf)
    # A sample with no modality (invalid input; the data pipeline never draws one) would give NaN:
    # it averages uniformly instead, so one bad sample cannot poison the batch statistics.
    logits = jnp.where(mask.any(-1)[:, None, None, None, None], logits, 0.0)
    attn = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    z = jnp.einsum("bnhqm,bnmhd->bnqhd", attn, v).reshape(b, n, self.num_queries, a)
    z = norm(z)
    score = dense(1, (axes.ATTN_DIM, None), use_bias=False, dtype=self.dtype,
                  param_dtype=self.param_dtype, name="score")(z)[..., 0]
    w = jax.nn.softmax(score.astype(jnp.float32), axis=-1).astype(z.dtype)
    return jnp.einsum("bnq,bnqa->bna", w, z)


class PatchEmbed(nn.Module):
  """Stems + modality embeddings + TokenProjection (+ fusion); images are NHWC float arrays."""
  patch_size: int
  embed_dim: int
  fusion_queries: int = 5
  fusion_heads: int = 16
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    a = 3 * self.embed_dim
    p = self.patch_size
    for mod in MODALITIES:
      kernel_init, bias_init = torch_default_conv_init(STEM_CHANNELS[mod] * p * p)
      # setattr gives the submodules the released names (conv2d_s1, ..., s1_embed, ...).
      # A stride-p p x p conv, computed as patchify + matmul (same params as nn.Conv; issue #9).
      setattr(self, STEM_NAMES[mod], PatchConv(
          a, p, dtype=self.dtype, param_dtype=self.param_dtype,
          kernel_init=nn.with_logical_partitioning(
              kernel_init, (None, None, axes.PATCH_IN, axes.ATTN_DIM)),
          bias_init=nn.with_logical_partitioning(bias_init, (axes.ATTN_DIM,))))
      setattr(self, EMBED_NAMES[mod], self.param(EMBED_NAMES[mod], nn.with_logical_partitioning(
          nn.initializers.zeros_init(), (None, axes.ATTN_DIM)), (1, a), self.param_dtype))
    self.projection = TokenProjection(self.embed_dim, dtype=self.dtype,
                                      param_dtype=self.param_dtype)
    self.fusion = CrossAttentionFusion(self.fusion_queries, self.fusion_heads, dtype=self.dtype,
                                       param_dtype=self.param_dtype)

  def stem_tokens(self, mod: str, x: jnp.ndarray) -> jnp.ndarray:
    conv, embed = getattr(self, STEM_NAMES[mod]), getattr(self, EMBED_NAMES[mod])
    y = conv(x.astype(self.dtype))
    b, h, w, a = y.shape
    return y.reshape(b, h * w, a) + embed.astype(self.dtype)

  def __call__(self, images: Mapping[str, jnp.ndarray],
               modality_mask: jnp.ndarray | None, groups: jnp.ndarray | None = None,
               group_sizes: tuple[int, ...] | None = None) -> jnp.ndarray:
    if group_sizes is not None and not self.is_initializing():
      return self._grouped(images, modality_mask, groups, group_sizes)
    return self._masked(images, modality_mask)

  def _grouped(self, images, modality_mask, groups, group_sizes) -> jnp.ndarray:
    """Each stem only on the views of its group (data/modality_groups.py).

    groups: (B,) int group per view (0..2 single modality, 3 fused); group_sizes: the static number
    of views of each group per block; blocks are consecutive runs of sum(group_sizes) views (one
    batch shard's views), so every gather stays inside a block (on its device).
    """
    if groups is None or modality_mask is None:
      raise ValueError("grouped patch embedding needs both `groups` and `modality_mask`")
    per_block = sum(group_sizes)
    used = MODALITIES if group_sizes[-1] else tuple(
        m for m, size in zip(MODALITIES, group_sizes) if size)
    missing = [m for m in used if m not in images]
    if missing:
      raise ValueError(f"grouped patch embedding with group sizes {tuple(group_sizes)} needs "
                       f"images of {missing}")
    b = groups.shape[0]
    if len(group_sizes) != len(MODALITIES) + 1 or per_block == 0 or b % per_block:
      raise ValueError(f"group_sizes {tuple(group_sizes)} (s1, s2_l1c, s2_l2a, fused per block) do "
                       f"not tile the {b} views")
    nb = b // per_block
    blocked = lambda x: x.reshape((nb, per_block) + x.shape[1:])  # noqa: E731
    gid = blocked(groups.astype(jnp.int32))

    def take(x, idx):  # x (nb, per_block, ...), idx (nb, c) -> (nb * c, ...)
      out = jax.vmap(lambda xb, ib: xb[ib])(x, idx)
      return out.reshape((-1,) + out.shape[2:])

    out_w = self.projection.output_weights()  # once for every group (and so once in backward)
    outs, perm = [], []
    for g, size in enumerate(group_sizes):
      if size == 0:
        continue
      # Static size: the host guarantees exactly `size` views of group g per block.
      idx = jax.vmap(lambda r: jnp.nonzero(r == g, size=size, fill_value=0)[0])(gid)
      perm.append(idx)
      if g < len(MODALITIES):
        mod = MODALITIES[g]
        y = self.projection(self.stem_tokens(mod, take(blocked(images[mod]), idx)), out_w)
      else:
        y = self._masked({m: take(blocked(images[m]), idx) for m in MODALITIES},
                         take(blocked(modality_mask), idx), out_w)
      outs.append(y.reshape((nb, size) + y.shape[1:]))
    cat = jnp.concatenate(outs, axis=1)                       # (nb, per_block, N, d), group order
    inv = jnp.argsort(jnp.concatenate(perm, axis=1), axis=1)  # back to the views' order
    out = jax.vmap(lambda xb, ib: xb[ib])(cat, inv)
    return out.reshape((b,) + out.shape[2:])

  def _masked(self, images: Mapping[str, jnp.ndarray], modality_mask: jnp.ndarray | None,
              out_w: OutputWeights | None = None) -> jnp.ndarray:
    mods = [m for m in MODALITIES if m in images]
    if self.is_initializing():
      # Create every stem and the fusion parameters whatever the init input, so that the parameter
      # tree is always the full training tree (the released layout plus `fusion/`).
      ref = images[mods[0]]
      for m in MODALITIES:
        if m not in images:
          self.stem_tokens(m, jnp.zeros(ref.shape[:3] + (STEM_CHANNELS[m],), ref.dtype))
      if modality_mask is None and len(mods) == 1:
        t0 = self.stem_tokens(mods[0], ref)[:, :, None]
        self.fusion(t0, self.projection.value(t0), jnp.ones((ref.shape[0], 1), bool),
                    self.projection.norm)

    if modality_mask is None and len(mods) == 1:
      return self.projection(self.stem_tokens(mods[0], images[mods[0]]), out_w)  # case 1, released

    if modality_mask is None:
      modality_mask = jnp.ones((images[mods[0]].shape[0], len(MODALITIES)), bool)
    # Modalities not given as images are unavailable for every sample.
    cols = [MODALITIES.index(m) for m in mods]
    mask = modality_mask[:, jnp.asarray(cols)]
    tokens = [self.stem_tokens(m, images[m]) for m in mods]  # M x (B, N, A)
    # Case 1 per sample: select the single modality's stem tokens exactly, then run the released
    # projection on a (B, N, A) array, the same ops and shapes as the single-modality path.
    single = tokens[0]
    for j in range(1, len(mods)):
      single = jnp.where(mask[:, j][:, None, None], tokens[j], single)
    single = self.projection.norm(self.projection.value(single))
    if len(mods) == 1:
      return self.projection.output(single, out_w)
    t = jnp.stack(tokens, axis=2)  # (B, N, M, A)
    v = self.projection.value(t)
    fused = self.fusion(t, v, mask, self.projection.norm)
    one = (mask.sum(-1) == 1)[:, None, None]
    return self.projection.output(jnp.where(one, single, fused), out_w)
