"""The TerraFM encoder (dual-modality ViT) and the DINO model (encoder + head).

Parameter tree of the encoder (mirrors the released PyTorch layout; METHOD.md 1.6):
  patch_embed/{conv2d_s1, conv2d_s2_l1c, conv2d_s2_l2a}/{kernel (p,p,C,A), bias (A,)}
  patch_embed/{s1_embed, s2_l1c_embed, s2_l2a_embed}           (1, A)
  patch_embed/projection/{proj1 (A,A, no bias), norm_input, proj2 (A,A), proj3 (A,d)}
  patch_embed/fusion/{queries (N_q,A), key/kernel (A,A), score/kernel (A,1)}   training only
  cls_token (1,1,d), pos_embed (1,1+G*G,d)
  blocks_{i}/{norm1, attn/qkv, attn/proj, norm2, mlp/fc1, mlp/fc2}
  norm
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import ml_collections

from terrafm_jax.data.contract import MODALITIES
from terrafm_jax.models import attention as attention_lib
from terrafm_jax.models import axes, variants
from terrafm_jax.models.heads import DINOHead
from terrafm_jax.models.layers import canonical_dtype, layer_norm, trunc_normal_02
from terrafm_jax.models.patch_embed import STEM_CHANNELS, PatchEmbed
from terrafm_jax.models.pos_embed import resize_pos_embed
from terrafm_jax.models.vit import VIT_LN_EPS, Block

Dtype = Any


class TerraFMEncoder(nn.Module):
  """Multi-sensor ViT. Inputs are normalised NHWC float images keyed by modality
  ("s1" 2 channels VV,VH; "s2_l1c" / "s2_l2a" 12 channels, contract band order).

  * one image and no mask: the released single-modality path for that stem;
  * a (B, 3) boolean `modality_mask` (contract order): per sample, exactly one modality takes the
    single-modality path bit for bit, two or more go through cross-attention fusion.
  """
  variant: str = "B/16"
  img_size: int = 224
  drop_path_rate: float = 0.0
  fusion_queries: int = 5
  fusion_heads: int = 16
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  remat: bool = False
  remat_policy: str = "full"
  attention_impl: str | None = None
  scan_layers: bool = False

  @property
  def dims(self) -> dict[str, int]:
    return variants.decode_variant(self.variant)

  def _check_inputs(self, images: Mapping[str, jnp.ndarray], modality_mask) -> tuple[int, int, int]:
    if not isinstance(images, Mapping) or not images:
      raise ValueError(f"images must be a non-empty mapping modality -> (B,H,W,C) array; "
                       f"expected keys among {MODALITIES}")
    unknown = sorted(set(images) - set(MODALITIES))
    if unknown:
      raise ValueError(f"unknown modality key(s) {unknown}; expected keys among {MODALITIES}")
    p = self.dims["patch_size"]
    shape = None
    for mod, x in images.items():
      if x.ndim != 4:
        raise ValueError(f"images[{mod!r}] must be (B, H, W, C) channels-last, got shape "
                         f"{tuple(x.shape)}")
      if x.shape[-1] != STEM_CHANNELS[mod]:
        raise ValueError(f"images[{mod!r}] has {x.shape[-1]} channels; the {mod} stem expects "
                         f"{STEM_CHANNELS[mod]} (channels-last, contract band order)")
      if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"images[{mod!r}] has dtype {x.dtype}; expected normalised floating-point "
                         f"input (normalise with the input contract first)")
      b, h, w, _ = x.shape
      if h % p or w % p:
        raise ValueError(f"images[{mod!r}] is {h}x{w} px, not divisible by the patch size {p}")
      if shape is not None and (b, h, w) != shape:
        raise ValueError(f"all modalities must share batch and spatial size: images[{mod!r}] is "
                         f"{(b, h, w)}, another is {shape}")
      shape = (b, h, w)
    if modality_mask is not None and tuple(modality_mask.shape) != (shape[0], len(MODALITIES)):
      raise ValueError(f"modality_mask must have shape (B, {len(MODALITIES)}) = "
                       f"{(shape[0], len(MODALITIES))}, got {tuple(modality_mask.shape)}")
    return shape

  @nn.compact
  def __call__(self, images: Mapping[str, jnp.ndarray], modality_mask: jnp.ndarray | None = None,
               *, train: bool = False, out_indices: Sequence[int] = (),
               groups: jnp.ndarray | None = None,
               group_sizes: tuple[int, ...] | None = None) -> dict[str, Any]:
    """`groups` (B,) / `group_sizes` (static, per block): modality-grouped patch embedding, each
    stem only on its group's views (data/modality_groups.py; same values as the masked path)."""
    dims = self.dims
    d, depth, p = dims["width"], dims["depth"], dims["patch_size"]
    b, h, w = self._check_inputs(images, modality_mask)
    for i in out_indices:
      if not 0 <= i < depth:
        raise ValueError(f"out_indices {tuple(out_indices)}: {i} is not a block of a depth-{depth} "
                         f"ViT")
    if self.img_size % p:
      raise ValueError(f"img_size {self.img_size} is not divisible by the patch size {p}")
    dtype = canonical_dtype(self.dtype)
    param_dtype = canonical_dtype(self.param_dtype)

    x = PatchEmbed(p, d, self.fusion_queries, self.fusion_heads, dtype=dtype,
                   param_dtype=param_dtype, name="patch_embed")(images, modality_mask, groups,
                                                                group_sizes)
    grid = self.img_size // p
    cls_token = self.param("cls_token", nn.with_logical_partitioning(
        trunc_normal_02, (None, None, axes.EMBED)), (1, 1, d), param_dtype)
    pos_embed = self.param("pos_embed", nn.with_logical_partitioning(
        trunc_normal_02, (None, axes.POS, axes.EMBED)), (1, 1 + grid * grid, d), param_dtype)
    x = jnp.concatenate([jnp.broadcast_to(cls_token.astype(dtype), (b, 1, d)), x], axis=1)
    x = x + resize_pos_embed(pos_embed, (h // p, w // p)).astype(dtype)
    x = nn.with_logical_constraint(x, axes.ACTIVATION)

    dpr = [float(r) for r in np.linspace(0.0, self.drop_path_rate, depth)]  # linear rule
    norm = layer_norm(axes.EMBED, epsilon=VIT_LN_EPS, dtype=dtype, param_dtype=param_dtype,
                      name="norm")
    if self.scan_layers and not self.is_initializing():
      x, hidden = self._scanned_blocks(x, train, dpr, bool(out_indices))
    else:
      block_cls = (nn.remat(Block, static_argnums=(2,), policy=_remat_policy(self.remat_policy))
                   if self.remat else Block)
      hidden = []
      for i in range(depth):
        x = block_cls(dims["num_heads"], dims["mlp_dim"], dpr[i], dtype=dtype,
                      param_dtype=param_dtype, attention_impl=self.attention_impl,
                      name=f"blocks_{i}")(x, train)
        hidden.append(x if i in out_indices else None)
    features = tuple(norm(hidden[i])[:, 1:].reshape(b, h // p, w // p, d)
                     for i in sorted(set(out_indices)))
    x = norm(x)
    return {"cls": x[:, 0], "patch_tokens": x[:, 1:], "features": features}

  def _scanned_blocks(self, x, train: bool, dpr: list[float], keep_hidden: bool):
    """The blocks as one lax.scan over their parameters stacked on a leading layer axis (the
    tree stays blocks_{i}; the stack and its gradient are a copy per step). Returns the output and
    the per-layer outputs (indexable by layer; None unless `keep_hidden`)."""
    dims = self.dims
    depth = dims["depth"]
    params = nn.meta.unbox(self.variables["params"])
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *[params[f"blocks_{i}"]
                                                        for i in range(depth)])
    drop = train and self.drop_path_rate > 0
    keys = (jax.random.split(self.make_rng("drop_path"), depth) if drop
            else jnp.zeros((depth,), jnp.uint32))
    rates = jnp.asarray(dpr, jnp.float32)

    def body(h, layer):
      p, rate, key = layer
      block = Block(dims["num_heads"], dims["mlp_dim"], rate if drop else 0.0, dtype=self.dtype,
                    param_dtype=self.param_dtype, attention_impl=self.attention_impl)
      h = block.apply({"params": p}, h, train, rngs={"drop_path": key} if drop else None)
      return h, (h if keep_hidden else None)

    if self.remat:
      body = jax.checkpoint(body, prevent_cse=False, policy=_remat_policy(self.remat_policy))
    x, hidden = jax.lax.scan(body, x, (stacked, rates, keys))
    return x, (hidden if keep_hidden else [None] * depth)


REMAT_POLICIES = ("full", "dots")


def _remat_policy(name: str):
  """model.remat_policy: "full" saves nothing inside a block (least memory, the forward runs
  twice); "dots" saves the matmul outputs without batch dimensions (the projections and the MLP)
  and recomputes the rest (norms, activations, attention's softmax)."""
  if name == "full":
    return None
  if name == "dots":
    return jax.checkpoint_policies.dots_with_no_batch_dims_saveable
  raise ValueError(f"model.remat_policy={name!r}: expected one of {REMAT_POLICIES}")


class TerraFMDINO(nn.Module):
  """Encoder + DINO head; params {"encoder": ..., "head": ...}. Logits are float32."""
  encoder: TerraFMEncoder
  head: DINOHead

  def __call__(self, images, modality_mask=None, *, train: bool = False, groups=None,
               group_sizes=None) -> dict[str, jnp.ndarray]:
    out = self.encoder(images, modality_mask, train=train, groups=groups,
                       group_sizes=group_sizes)
    return {"logits": self.head(out["cls"]), "cls": out["cls"]}


ATTENTION_IMPLS = attention_lib.IMPLS


def build_encoder(cfg: ml_collections.ConfigDict, **overrides) -> TerraFMEncoder:
  """Encoder from a model config (terrafm_jax.models.config.get_model_config)."""
  dims = variants.decode_variant(cfg.variant)
  attn_dim = cfg.get("attn_dim_mult", 3) * dims["width"]
  if cfg.get("attn_dim_mult", 3) != 3:
    raise ValueError("model.attn_dim_mult must be 3 (A = 3 d is fixed by the released layout)")
  if attn_dim % cfg.fusion_heads:
    raise ValueError(f"model.fusion_heads={cfg.fusion_heads} does not divide attn_dim {attn_dim}")
  if cfg.get("attention_impl", "auto") not in ATTENTION_IMPLS:
    raise ValueError(f"model.attention_impl={cfg.attention_impl!r}: expected one of "
                     f"{', '.join(map(repr, ATTENTION_IMPLS))}")
  if cfg.get("remat_policy", "full") not in REMAT_POLICIES:
    raise ValueError(f"model.remat_policy={cfg.remat_policy!r}: expected one of "
                     f"{', '.join(map(repr, REMAT_POLICIES))}")
  if not 0.0 <= cfg.drop_path_rate < 1.0:
    raise ValueError(f"model.drop_path_rate must be in [0, 1), got {cfg.drop_path_rate}")
  kwargs = dict(variant=cfg.variant, img_size=cfg.img_size, drop_path_rate=cfg.drop_path_rate,
                fusion_queries=cfg.fusion_queries, fusion_heads=cfg.fusion_heads,
                dtype=canonical_dtype(cfg.dtype), param_dtype=canonical_dtype(cfg.param_dtype),
                remat=cfg.remat, remat_policy=cfg.get("remat_policy", "full"),
                attention_impl=cfg.get("attention_impl", None),
                scan_layers=cfg.get("scan_layers", False))
  kwargs.update(overrides)
  return TerraFMEncoder(**kwargs)


def build_dino(cfg: ml_collections.ConfigDict, **overrides) -> TerraFMDINO:
  head = DINOHead(out_dim=cfg.head.out_dim, hidden_dim=cfg.head.hidden_dim,
                  bottleneck_dim=cfg.head.bottleneck_dim, nlayers=cfg.head.nlayers,
                  param_dtype=canonical_dtype(cfg.param_dtype))
  return TerraFMDINO(encoder=build_encoder(cfg, **overrides), head=head)
