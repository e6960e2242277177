"""Multi-crop plan and modality draws, per sample (host side; pixels are cropped on the device).

Defaults are the paper's (METHOD.md 2): 2 global views at 224 px from scale [0.25, 1], 6 local at
96 px from [0.05, 0.25], aspect ratio (3/4, 4/3) (torchvision RandomResizedCrop rules), horizontal
flip p = 0.5. Every modality of a view uses the same box (they are co-registered).

Modality draws (METHOD.md 4), among the modalities available in the tile:
  reading "a" (default): with p = `single_p` one random modality, else a random subset of >= 2
                         (uniform over such subsets); a tile with one modality always uses it;
  reading "b":           each modality kept independently with p = `keep_p`, redrawn if empty.
The student draws for each of its V views, the teacher for each global view, independently.
`granularity="batch"` draws one subset per (batch, view, network) from all three modalities, as the
released per-batch stem dispatch does; a sample keeps the drawn modalities it has, and draws
per sample (same reading) if it has none of them.
"""
from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np

from terrafm_jax.data import contract as contract_lib

NUM_MODALITIES = len(contract_lib.MODALITIES)


@dataclasses.dataclass(frozen=True)
class CropConfig:
  n_global: int = 2
  global_size: int = 224
  global_scale: tuple[float, float] = (0.25, 1.0)
  n_local: int = 6
  local_size: int = 96
  local_scale: tuple[float, float] = (0.05, 0.25)
  ratio: tuple[float, float] = (3 / 4, 4 / 3)
  flip_p: float = 0.5
  modality_reading: str = "a"
  single_p: float = 0.5
  keep_p: float = 0.5
  granularity: str = "sample"
  # Modalities the draws may use (contract names); ("s2_l2a",) gives the single-modality DINO
  # baseline of the paper's ablation ("SS"). A tile that has none of them keeps its own.
  modalities: tuple[str, ...] = contract_lib.MODALITIES

  def __post_init__(self):
    unknown = sorted(set(self.modalities) - set(contract_lib.MODALITIES))
    if unknown or not self.modalities:
      raise ValueError(f"modalities must be a non-empty subset of {contract_lib.MODALITIES}, "
                       f"got {tuple(self.modalities)}")
    if self.modality_reading not in ("a", "b"):
      raise ValueError(f"modality_reading must be 'a' or 'b', got {self.modality_reading!r}")
    if self.granularity not in ("sample", "batch"):
      raise ValueError(f"granularity must be 'sample' or 'batch', got {self.granularity!r}")

  @property
  def num_views(self) -> int:
    return self.n_global + self.n_local


def random_resized_box(rng: np.random.Generator, height: int, width: int,
                       scale: tuple[float, float],
                       ratio: tuple[float, float]) -> tuple[int, int, int, int]:
  """(y0, x0, h, w) as torchvision's RandomResizedCrop.get_params (10 tries, then centre)."""
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
    w = int(round(math.sqrt(target * aspect)))
    h = int(round(math.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      y0 = int(rng.integers(0, height - h + 1))
      x0 = int(rng.integers(0, width - w + 1))
      return y0, x0, h, w
  in_ratio = width / height
  if in_ratio < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    h, w = height, int(round(height * max(ratio)))
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def draw_modalities(rng: np.random.Generator, available: np.ndarray,
                    cfg: CropConfig) -> np.ndarray:
  """(3,) bool, non-empty, a subset of `available` (which must be non-empty)."""
  avail = np.flatnonzero(available)
  if avail.size == 0:
    raise ValueError("a tile without any modality cannot be drawn")
  out = np.zeros(NUM_MODALITIES, bool)
  if cfg.modality_reading == "a":
    if avail.size == 1 or rng.uniform() < cfg.single_p:
      out[rng.choice(avail)] = True
    else:
      subsets = [s for k in range(2, avail.size + 1) for s in itertools.combinations(avail, k)]
      out[list(subsets[rng.integers(len(subsets))])] = True
  else:
    while not out.any():
      out[avail] = rng.uniform(size=avail.size) < cfg.keep_p
  return out


def _batch_draw(batch_rng: np.random.Generator | None, rng: np.random.Generator,
                available: np.ndarray, cfg: CropConfig) -> np.ndarray:
  if batch_rng is None:
    return draw_modalities(rng, available, cfg)
  pref = draw_modalities(batch_rng, np.ones(NUM_MODALITIES, bool), cfg)
  keep = pref & available
  return keep if keep.any() else draw_modalities(rng, available, cfg)


def plan_crops(rng: np.random.Generator, available: np.ndarray, tile_size: int,
               cfg: CropConfig, batch_rng: np.random.Generator | None = None
               ) -> dict[str, np.ndarray]:
  """Boxes (V, 4) f32 [y0, x0, h, w], flip (V,), student_masks (V, 3), teacher_masks (G, 3).

  `batch_rng` (same state for every sample of a batch) is used only with granularity="batch".
  """
  v = cfg.num_views
  boxes = np.zeros((v, 4), np.float32)
  for i in range(v):
    scale = cfg.global_scale if i < cfg.n_global else cfg.local_scale
    boxes[i] = random_resized_box(rng, tile_size, tile_size, scale, cfg.ratio)
  flip = rng.uniform(size=v) < cfg.flip_p
  brng = batch_rng if cfg.granularity == "batch" else None
  allowed = np.isin(contract_lib.MODALITIES, cfg.modalities)
  if (available & allowed).any():
    available = available & allowed
  student = np.stack([_batch_draw(brng, rng, available, cfg) for _ in range(v)])
  teacher = np.stack([_batch_draw(brng, rng, available, cfg) for _ in range(cfg.n_global)])
  return {"boxes": boxes, "flip": flip, "student_masks": student, "teacher_masks": teacher}
