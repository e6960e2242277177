"""An eager PyTorch DINO train step for bench/compare_torch.py (the PyTorch side of the comparison).

It does the work of one `terrafm_jax.train.step` step for a single modality (the S2 L1C stem),
written the way the original DINO code writes it (`main_dino.py`: multi-crop wrapper, DINOLoss,
`clip_gradients`, `cancel_gradients_last_layer`, AdamW, EMA teacher), with the project's PyTorch
encoder `terrafm_jax.export.torch_model.TerraFMTorch` as the backbone of student and teacher:

  1. normalise the raw uint16 S2 L1C tiles (B, 12, T, T) with the input contract (DN 0 -> 0),
     cut each view's box (integer bounds around the fractional box) and resize it to the view
     size with `F.interpolate(mode="bicubic", antialias=True)`, flip where asked;
  2. teacher: encoder + DINO head on the 2 global views, under `torch.no_grad()`;
  3. student: encoder on the global views and on the local views (one call per resolution, as
     DINO's MultiCropWrapper), the DINO head on the concatenated CLS tokens;
  4. loss: dual-centered teacher softmax((t - alpha c - (1 - alpha) c_h) / T_t), student
     log_softmax(s / T_s), cross-entropy over every (teacher view i, student view v != i) pair;
  5. backward, per-tensor gradient clipping, last-layer gradient dropped (DINO's first epoch; the
     JAX step is in that epoch too), AdamW (decoupled weight decay, no decay on biases/1-D);
  6. EMA teacher update over every parameter; EMA updates of both centers.

The head follows terrafm_jax/models/heads.py: Linear(d, 2048) GELU Linear(2048, 2048) GELU
Linear(2048, 256), L2 normalisation, weight-normalised last layer 256 -> K with g fixed to 1
(its weight is the row-normalised direction v).
"""
from __future__ import annotations

import copy
import math
import time
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from terrafm_jax.export.torch_model import TerraFMTorch
from terrafm_jax.models import variants


class DINOHeadTorch(nn.Module):
  def __init__(self, in_dim: int, out_dim: int = 65536, hidden_dim: int = 2048,
               bottleneck_dim: int = 256, nlayers: int = 3):
    super().__init__()
    layers, d = [], in_dim
    for _ in range(nlayers - 1):
      layers += [nn.Linear(d, hidden_dim), nn.GELU()]
      d = hidden_dim
    layers.append(nn.Linear(d, bottleneck_dim))
    self.mlp = nn.Sequential(*layers)
    # Weight norm with g = 1 fixed: only the direction v is a parameter (rows = prototypes).
    self.last_layer_v = nn.Parameter(torch.empty(out_dim, bottleneck_dim))
    for m in self.mlp:
      if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02, a=-2.0, b=2.0)
        nn.init.zeros_(m.bias)
    nn.init.normal_(self.last_layer_v, std=0.02)

  def forward(self, x):
    x = F.normalize(self.mlp(x), dim=-1, p=2)
    return F.linear(x, F.normalize(self.last_layer_v, dim=1, p=2))


class DINOModel(nn.Module):
  """Encoder + head; forward takes a list of view batches grouped by resolution (NCHW)."""

  def __init__(self, variant: str, out_dim: int, head_kw: dict):
    super().__init__()
    self.backbone = TerraFMTorch(variant)
    self.head = DINOHeadTorch(variants.decode_variant(variant)["width"], out_dim, **head_kw)

  def forward(self, groups: Sequence[torch.Tensor], modality: str):
    cls = torch.cat([self.backbone(x, modality)["cls"] for x in groups], dim=0)
    return self.head(cls)


def crop_views(tiles: torch.Tensor, boxes: np.ndarray, flips: np.ndarray, out_size: int
               ) -> torch.Tensor:
  """tiles (B, C, T, T) normalised; boxes (B, v, 4) [y0, x0, h, w]; flips (B, v) ->
  view-major (v * B, C, out, out) (DINO's layout: view 0 of every sample first)."""
  b, _, t, _ = tiles.shape
  out = []
  for j in range(boxes.shape[1]):
    for i in range(b):
      y0, x0, h, w = (float(v) for v in boxes[i, j])
      ya, xa = max(int(math.floor(y0)), 0), max(int(math.floor(x0)), 0)
      yb, xb = min(int(math.ceil(y0 + h)), t), min(int(math.ceil(x0 + w)), t)
      v = F.interpolate(tiles[i:i + 1, :, ya:yb, xa:xb], size=(out_size, out_size),
                        mode="bicubic", antialias=True, align_corners=False)
      out.append(torch.flip(v, dims=[-1]) if flips[i, j] else v)
  return torch.cat(out, dim=0)


class TorchDINOStep:
  """Holds student, teacher, optimizer and centers; `step(batch)` runs one training step and
  returns (loss, seconds spent in normalisation + crops)."""

  def __init__(self, variant: str, *, out_dim: int, head_kw: dict, modality: str,
               mean: Sequence[float], std: Sequence[float], n_global: int, global_size: int,
               local_size: int, student_temp: float, teacher_temp: float, alpha: float,
               center_momentum: float, center_h_momentum: float, high_freq_classes: Sequence[int],
               lr: float, weight_decay: float, clip_grad: float, momentum_teacher: float,
               freeze_last_layer: bool, seed: int = 0):
    torch.manual_seed(seed)
    self.modality = modality
    self.student = DINOModel(variant, out_dim, head_kw)
    self.teacher = copy.deepcopy(self.student)
    for p in self.teacher.parameters():
      p.requires_grad_(False)
    self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    self.n_global, self.global_size, self.local_size = n_global, global_size, local_size
    self.student_temp, self.teacher_temp, self.alpha = student_temp, teacher_temp, alpha
    self.cm, self.cm_h = center_momentum, center_h_momentum
    self.high_freq = torch.tensor(list(high_freq_classes), dtype=torch.long)
    self.center = torch.zeros(1, out_dim)
    self.center_h = torch.zeros(1, out_dim)
    self.clip_grad, self.m_teacher = clip_grad, momentum_teacher
    self.freeze_last_layer = freeze_last_layer
    decay, no_decay = [], []
    for name, p in self.student.named_parameters():
      (no_decay if name.endswith(".bias") or p.ndim == 1 else decay).append(p)
    self.opt = torch.optim.AdamW([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}],
                                 lr=lr, weight_decay=weight_decay)

  def num_params(self) -> int:
    return sum(p.numel() for p in self.student.parameters())

  def make_views(self, tiles_u16: np.ndarray, boxes: np.ndarray, flips: np.ndarray):
    """Raw NHWC uint16 tiles -> (global views, local views), NCHW float32, view-major."""
    x = torch.from_numpy(tiles_u16.astype(np.int32)).permute(0, 3, 1, 2).float()
    tiles = torch.where(x == 0, torch.zeros(()), (x - self.mean) / self.std)
    g = crop_views(tiles, boxes[:, :self.n_global], flips[:, :self.n_global], self.global_size)
    loc = None
    if boxes.shape[1] > self.n_global:
      loc = crop_views(tiles, boxes[:, self.n_global:], flips[:, self.n_global:], self.local_size)
    return g, loc

  def loss(self, s_out, t_out, b):
    t = (t_out - self.alpha * self.center - (1 - self.alpha) * self.center_h) / self.teacher_temp
    p_t = F.softmax(t, dim=-1).chunk(self.n_global)
    log_p_s = F.log_softmax(s_out / self.student_temp, dim=-1).chunk(s_out.shape[0] // b)
    total, n = 0.0, 0
    for i, q in enumerate(p_t):
      for v, ls in enumerate(log_p_s):
        if v == i:
          continue
        total = total + torch.sum(-q * ls, dim=-1).mean()
        n += 1
    return total / n

  @torch.no_grad()
  def update_centers(self, t_out, labels, b):
    self.center.mul_(self.cm).add_((1 - self.cm) * t_out.mean(dim=0, keepdim=True))
    h = torch.isin(labels, self.high_freq).float()                    # (B,)
    t = t_out.view(self.n_global, b, -1)
    count = h.sum() * self.n_global
    if count > 0:
      c_h = torch.einsum("vbk,b->k", t, h)[None] / count
      self.center_h.mul_(self.cm_h).add_((1 - self.cm_h) * c_h)

  def step(self, batch: dict) -> tuple[float, float]:
    t0 = time.perf_counter()
    g, loc = self.make_views(batch[self.modality], batch["boxes"], batch["flip"])
    t_crop = time.perf_counter() - t0
    b = batch["boxes"].shape[0]
    labels = torch.from_numpy(np.asarray(batch["label"]).astype(np.int64))
    with torch.no_grad():
      t_out = self.teacher([g], self.modality)
    s_out = self.student([g] if loc is None else [g, loc], self.modality)
    loss = self.loss(s_out, t_out, b)
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    if self.clip_grad:  # DINO utils.clip_gradients: per parameter tensor
      for p in self.student.parameters():
        if p.grad is not None:
          coef = self.clip_grad / (p.grad.norm(2) + 1e-6)
          if coef < 1:
            p.grad.mul_(coef)
    if self.freeze_last_layer:  # DINO cancel_gradients_last_layer (first epoch)
      self.student.head.last_layer_v.grad = None
    self.opt.step()
    with torch.no_grad():  # EMA teacher, every parameter
      m = self.m_teacher
      for ps, pt in zip(self.student.parameters(), self.teacher.parameters()):
        pt.mul_(m).add_((1 - m) * ps.detach())
    self.update_centers(t_out, labels, b)
    return loss.item(), t_crop
