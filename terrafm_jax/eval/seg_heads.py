"""Segmentation heads on frozen encoder features (METHOD.md 7), NHWC, logits (B, H', W', C).

PatchLinearHead  Galileo's linear probe: Linear(d -> C p^2) on each patch token, reshaped to
                 pixels. Channel k * p^2 + i * p + j of token (r, c) is class k at pixel
                 (r * p + i, c * p + j): each token owns its p x p block, row-major inside it
                 (einops "b h w (c i j) -> b (h i) (w j) c", as Galileo's rearrange).
UPerNetHead      mmseg's Feature2Pyramid (rescales 4, 2, 1, 0.5) + UPerHead (PPM with pool scales
                 1, 2, 3, 6 over the coarsest map, FPN laterals + top-down, 3x3 FPN convs, fuse,
                 channel dropout 0.1, 1x1 classifier), the Copernicus-Bench frozen-encoder head.
                 Conv -> BatchNorm -> ReLU blocks (mmseg ConvModule, no conv bias); output at 4x
                 the token grid. With Copernicus-Bench's auxiliary mmseg FCNHead on pyramid
                 level `aux_index` (default: the 1x map; one 3x3 ConvModule of 256 channels, channel
                 dropout, 1x1 classifier): in training the head returns (logits, aux_logits)
                 and seg_train adds `aux_loss_weight` (0.4) x the auxiliary cross-entropy;
                 in evaluation only the logits (the auxiliary branch is dead code there).
                 `aux_loss_weight=0` leaves the auxiliary head out.

`align_corners` of a head is the convention used to resize its logits to the label size
(seg_train): Galileo resizes LP logits with align_corners=True, mmseg with False.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def _interp_matrix(n_in: int, n_out: int, align_corners: bool) -> np.ndarray:
  """(n_out, n_in) linear-interpolation weights of PyTorch's bilinear resize along one axis."""
  dst = np.arange(n_out, dtype=np.float64)
  if align_corners:
    src = dst * ((n_in - 1) / (n_out - 1)) if n_out > 1 else np.zeros(n_out)
  else:
    src = np.maximum((dst + 0.5) * (n_in / n_out) - 0.5, 0.0)
  i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
  i1 = np.minimum(i0 + 1, n_in - 1)
  w1 = src - i0
  m = np.zeros((n_out, n_in))
  np.add.at(m, (np.arange(n_out), i0), 1.0 - w1)
  np.add.at(m, (np.arange(n_out), i1), w1)
  return m


def resize_bilinear(x: jnp.ndarray, size: Sequence[int],
                    align_corners: bool = False) -> jnp.ndarray:
  """(B, H, W, C) -> (B, *size, C), PyTorch F.interpolate(mode="bilinear") semantics, without
  antialiasing (jax.image.resize antialiases when shrinking, which torch does not)."""
  h, w = int(size[0]), int(size[1])
  if (h, w) == tuple(x.shape[1:3]):
    return x
  mh = jnp.asarray(_interp_matrix(x.shape[1], h, align_corners), x.dtype)
  mw = jnp.asarray(_interp_matrix(x.shape[2], w, align_corners), x.dtype)
  return jnp.einsum("ih,jw,bhwc->bijc", mh, mw, x, precision=jax.lax.Precision.HIGHEST)


def _adaptive_pool_matrix(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) averaging weights of PyTorch's AdaptiveAvgPool along one axis: bin i covers
  [floor(i n_in / n_out), ceil((i + 1) n_in / n_out))."""
  m = np.zeros((n_out, n_in))
  for i in range(n_out):
    lo, hi = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
    m[i, lo:hi] = 1.0 / (hi - lo)
  return m


def adaptive_avg_pool(x: jnp.ndarray, out: int) -> jnp.ndarray:
  """(B, H, W, C) -> (B, out, out, C), PyTorch AdaptiveAvgPool2d(out)."""
  mh = jnp.asarray(_adaptive_pool_matrix(x.shape[1], out), x.dtype)
  mw = jnp.asarray(_adaptive_pool_matrix(x.shape[2], out), x.dtype)
  return jnp.einsum("ih,jw,bhwc->bijc", mh, mw, x, precision=jax.lax.Precision.HIGHEST)


class PatchLinearHead(nn.Module):
  """Per-patch linear probe; `patch_size` is the output block per token (Galileo: ceil(label size
  / grid), so it may differ from the encoder's patch)."""
  num_classes: int
  patch_size: int
  align_corners: bool = True

  @nn.compact
  def __call__(self, tokens: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    del train
    if tokens.ndim != 4:
      raise ValueError(f"PatchLinearHead wants (B, h, w, d) patch tokens, got {tokens.shape}")
    b, h, w, _ = tokens.shape
    p, c = self.patch_size, self.num_classes
    y = nn.Dense(c * p * p, name="linear")(tokens)
    y = y.reshape(b, h, w, c, p, p).transpose(0, 1, 4, 2, 5, 3)    # (b, h, i, w, j, c)
    return y.reshape(b, h * p, w * p, c)


class ConvModule(nn.Module):
  """mmseg ConvModule: conv (no bias) -> BatchNorm (torch momentum 0.1, eps 1e-5) -> ReLU."""
  features: int
  kernel_size: int = 1

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    k = self.kernel_size
    x = nn.Conv(self.features, (k, k), padding=[(k // 2, k // 2)] * 2, use_bias=False,
                name="conv")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name="bn")(x)
    return nn.relu(x)


class Feature2Pyramid(nn.Module):
  """Rescale same-resolution ViT maps into a pyramid: 4x (deconv, BN, GELU, deconv), 2x (deconv),
  1x (identity), 0.5x (2x2 max pool)."""
  rescales: Sequence[float] = (4, 2, 1, 0.5)

  @nn.compact
  def __call__(self, feats: Sequence[jnp.ndarray], train: bool) -> list[jnp.ndarray]:
    if len(feats) != len(self.rescales):
      raise ValueError(f"{len(feats)} feature maps for rescales {tuple(self.rescales)}")
    out = []
    for i, (x, s) in enumerate(zip(feats, self.rescales)):
      d = x.shape[-1]
      if s == 4:
        x = nn.ConvTranspose(d, (2, 2), strides=(2, 2), padding="VALID",
                             name=f"up4_{i}_0")(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                         name=f"up4_{i}_bn")(x)
        x = nn.gelu(x, approximate=False)
        x = nn.ConvTranspose(d, (2, 2), strides=(2, 2), padding="VALID",
                             name=f"up4_{i}_1")(x)
      elif s == 2:
        x = nn.ConvTranspose(d, (2, 2), strides=(2, 2), padding="VALID",
                             name=f"up2_{i}")(x)
      elif s == 0.5:
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
      elif s != 1:
        raise ValueError(f"unsupported rescale {s} (expected 4, 2, 1 or 0.5)")
      out.append(x)
    return out


class UPerNetHead(nn.Module):
  """Feature2Pyramid + UPerHead over 4 intermediate maps (B, h, w, d) -> logits (B, 4h, 4w, C)."""
  num_classes: int
  channels: int = 512
  pool_scales: Sequence[int] = (1, 2, 3, 6)
  rescales: Sequence[float] = (4, 2, 1, 0.5)
  dropout_rate: float = 0.1
  align_corners: bool = False
  aux_loss_weight: float = 0.4
  aux_channels: int = 256
  aux_index: int | None = None   # pyramid level of the auxiliary head; None: the 1x level

  @nn.compact
  def __call__(self, feats: Sequence[jnp.ndarray], train: bool = False):
    feats = Feature2Pyramid(self.rescales, name="neck")(list(feats), train)
    aux = None
    if not self.aux_loss_weight >= 0:
      raise ValueError(f"aux_loss_weight (config segmentation.upernet_aux_loss_weight) must be "
                       f">= 0, got {self.aux_loss_weight}")
    if self.aux_loss_weight > 0:
      if self.aux_index is None and 1 not in tuple(self.rescales):
        raise ValueError(f"no 1x level in rescales {tuple(self.rescales)}: set aux_index")
      index = list(self.rescales).index(1) if self.aux_index is None else self.aux_index
      if not 0 <= index < len(feats):
        raise ValueError(f"aux_index {index} outside the {len(feats)} pyramid levels")
      # Built in every mode, so init (train=False) creates its variables. The dropout is named,
      # so the main head's auto-named one keeps its name (and its dropout masks).
      a = ConvModule(self.aux_channels, 3, name="aux_conv")(feats[index], train)
      a = nn.Dropout(self.dropout_rate, broadcast_dims=(1, 2), deterministic=not train,
                     name="aux_dropout")(a)
      aux = nn.Conv(self.num_classes, (1, 1), name="aux_cls_seg")(a).astype(jnp.float32)
    ch = self.channels
    # PPM over the coarsest map, concatenated with it, 3x3 bottleneck.
    top = feats[-1]
    ppm = [top]
    for s in self.pool_scales:
      y = ConvModule(ch, 1, name=f"psp_{s}")(adaptive_avg_pool(top, s), train)
      ppm.append(resize_bilinear(y, top.shape[1:3], self.align_corners))
    laterals = [ConvModule(ch, 1, name=f"lateral_{i}")(x, train)
                for i, x in enumerate(feats[:-1])]
    laterals.append(ConvModule(ch, 3, name="psp_bottleneck")(jnp.concatenate(ppm, -1), train))
    for i in range(len(laterals) - 1, 0, -1):   # top-down
      laterals[i - 1] = laterals[i - 1] + resize_bilinear(
          laterals[i], laterals[i - 1].shape[1:3], self.align_corners)
    outs = [ConvModule(ch, 3, name=f"fpn_{i}")(x, train) for i, x in enumerate(laterals[:-1])]
    outs.append(laterals[-1])
    size = outs[0].shape[1:3]
    outs = [outs[0]] + [resize_bilinear(x, size, self.align_corners) for x in outs[1:]]
    x = ConvModule(ch, 3, name="fpn_bottleneck")(jnp.concatenate(outs, -1), train)
    # mmseg's Dropout2d: whole channels are dropped.
    x = nn.Dropout(self.dropout_rate, broadcast_dims=(1, 2), deterministic=not train)(x)
    logits = nn.Conv(self.num_classes, (1, 1), name="cls_seg")(x).astype(jnp.float32)
    return (logits, aux) if train and aux is not None else logits
