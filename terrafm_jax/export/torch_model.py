"""A PyTorch TerraFM encoder with the released `terrafm.py` key layout (METHOD.md 1.6).

Written for terrafm-jax from the published layout: it exists so that exported weights can be
checked with `load_state_dict(strict=True)` and a forward pass, and so that PyTorch users have a
module to load them into. Its forward is the single-modality path. Unlike the released file, which
routes every 12-channel input through the L1C stem, the stem is chosen explicitly.

Input: normalised NCHW float tensors (contract band order); output: dict(cls, patch_tokens).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from terrafm_jax.models import variants

MODALITY_STEMS = {"s1": ("conv2d_s1", "s1_embed", 2),
                  "s2_l1c": ("conv2d_s2_l1c", "s2_l1c_embed", 12),
                  "s2_l2a": ("conv2d_s2_l2a", "s2_l2a_embed", 12)}


class TokenProjection(nn.Module):
  def __init__(self, attn_dim: int, embed_dim: int):
    super().__init__()
    self.proj1 = nn.Linear(attn_dim, attn_dim, bias=False)
    self.norm_input = nn.LayerNorm(attn_dim)  # eps 1e-5 (PyTorch default), as released
    self.proj2 = nn.Linear(attn_dim, attn_dim)
    self.proj3 = nn.Linear(attn_dim, embed_dim)

  def forward(self, t):
    return self.proj3(self.proj2(self.norm_input(self.proj1(t))))


class PatchEmbed(nn.Module):
  def __init__(self, patch_size: int, embed_dim: int):
    super().__init__()
    a = 3 * embed_dim
    for mod, (conv_name, embed_name, chans) in MODALITY_STEMS.items():
      setattr(self, conv_name, nn.Conv2d(chans, a, kernel_size=patch_size, stride=patch_size))
      setattr(self, embed_name, nn.Parameter(torch.zeros(1, a)))
    self.projection = TokenProjection(a, embed_dim)

  def forward(self, x, modality: str):
    if modality not in MODALITY_STEMS:
      raise ValueError(f"unknown modality {modality!r}; expected one of {sorted(MODALITY_STEMS)}")
    conv_name, embed_name, chans = MODALITY_STEMS[modality]
    if x.shape[1] != chans:
      raise ValueError(f"{modality} stem expects {chans} channels (NCHW), got {x.shape[1]}")
    t = getattr(self, conv_name)(x).flatten(2).transpose(1, 2) + getattr(self, embed_name)
    return self.projection(t)


class Attention(nn.Module):
  def __init__(self, dim: int, num_heads: int):
    super().__init__()
    self.num_heads = num_heads
    self.scale = (dim // num_heads) ** -0.5
    self.qkv = nn.Linear(dim, 3 * dim, bias=True)
    self.proj = nn.Linear(dim, dim)

  def forward(self, x):
    b, n, c = x.shape
    qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
    return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
  def __init__(self, dim: int, hidden: int):
    super().__init__()
    self.fc1 = nn.Linear(dim, hidden)
    self.act = nn.GELU()
    self.fc2 = nn.Linear(hidden, dim)

  def forward(self, x):
    return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
  def __init__(self, dim: int, num_heads: int, mlp_dim: int):
    super().__init__()
    self.norm1 = nn.LayerNorm(dim, eps=1e-6)
    self.attn = Attention(dim, num_heads)
    self.norm2 = nn.LayerNorm(dim, eps=1e-6)
    self.mlp = Mlp(dim, mlp_dim)

  def forward(self, x):
    x = x + self.attn(self.norm1(x))
    return x + self.mlp(self.norm2(x))


class TerraFMTorch(nn.Module):
  """Released-layout encoder; `TerraFMTorch("B/16")` has the keys of the published TerraFM-B."""

  def __init__(self, variant: str = "B/16", img_size: int = 224):
    super().__init__()
    dims = variants.decode_variant(variant)
    d, self.patch_size = dims["width"], dims["patch_size"]
    self.patch_embed = PatchEmbed(self.patch_size, d)
    grid = img_size // self.patch_size
    self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
    self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, d))
    self.blocks = nn.ModuleList(
        [Block(d, dims["num_heads"], dims["mlp_dim"]) for _ in range(dims["depth"])])
    self.norm = nn.LayerNorm(d, eps=1e-6)
    nn.init.trunc_normal_(self.pos_embed, std=0.02, a=-2.0, b=2.0)
    nn.init.trunc_normal_(self.cls_token, std=0.02, a=-2.0, b=2.0)
    self.apply(self._init_weights)

  @staticmethod
  def _init_weights(m):
    # As released: Linear trunc_normal(0.02) with absolute bounds, LayerNorm (1, 0); convs keep
    # PyTorch's default init.
    if isinstance(m, nn.Linear):
      nn.init.trunc_normal_(m.weight, std=0.02, a=-2.0, b=2.0)
      if m.bias is not None:
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
      nn.init.ones_(m.weight)
      nn.init.zeros_(m.bias)

  def interpolate_pos_encoding(self, n_patches: int, h: int, w: int):
    n = self.pos_embed.shape[1] - 1
    if n_patches == n and h == w:
      return self.pos_embed
    src = int(math.sqrt(n))
    h0, w0 = h // self.patch_size + 0.1, w // self.patch_size + 0.1  # DINO's +0.1 offset
    grid = self.pos_embed[:, 1:].reshape(1, src, src, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, scale_factor=(h0 / src, w0 / src), mode="bicubic")
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, self.pos_embed.shape[-1])
    return torch.cat([self.pos_embed[:, :1], grid], dim=1)

  def forward(self, x, modality: str):
    b, _, h, w = x.shape
    x = self.patch_embed(x, modality)
    n = x.shape[1]
    x = torch.cat([self.cls_token.expand(b, -1, -1), x], dim=1)
    x = x + self.interpolate_pos_encoding(n, h, w)
    for blk in self.blocks:
      x = blk(x)
    x = self.norm(x)
    return {"cls": x[:, 0], "patch_tokens": x[:, 1:]}
