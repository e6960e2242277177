"""Land-cover-stratified tile sampling, deterministic from (seed, position) so it resumes exactly.

Tile weight (DATA.md 3, METHOD.md 5; the formula is a project decision):

    w_t = (sum_c hist_tc / f_c) ** beta  *  (ocean_fraction if water-only)  *  n_s(t) ** -strata_beta

f_c is the mean class fraction over all tiles, beta the temperature (0 = natural distribution,
1 = class-balanced: each class gets the same expected pixel exposure), water-only / open-sea tiles are
kept with relative weight `ocean_fraction` (TerraFM keeps 2 % of ocean cells), and n_s(t) is the
number of tiles in t's (climate, region) stratum when the index has those columns. Tiles without a
land-cover histogram get the neutral score 1.

The draw for global sample position k is inverse-CDF sampling of u(seed, k), a counter-based hash
(splitmix64), so position k always maps to the same tile: no sampler state to checkpoint, any range
of positions is computed vectorised, and `exposure(start, stop)` reports per-class exposure exactly.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from terrafm_jax.data import landcover as lc_lib

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  beta: float = 0.5
  ocean_fraction: float = 0.02
  strata_beta: float = 0.0

  def __post_init__(self):
    if not 0.0 <= self.beta <= 1.0:
      raise ValueError(f"beta must be in [0, 1], got {self.beta}")
    if not 0.0 <= self.ocean_fraction <= 1.0:
      raise ValueError(f"ocean_fraction must be in [0, 1], got {self.ocean_fraction}")


def splitmix64(x: np.ndarray) -> np.ndarray:
  """The splitmix64 finaliser, vectorised over uint64 (wrapping arithmetic)."""
  with np.errstate(over="ignore"):
    z = (np.asarray(x, np.uint64) + np.uint64(0x9E3779B97F4A7C15)) & _M64
    z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _M64
    z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _M64
    return z ^ (z >> np.uint64(31))


def uniform(seed: int, positions: np.ndarray, stream: int = 0) -> np.ndarray:
  """Uniform [0, 1) floats that depend only on (seed, stream, position)."""
  key = splitmix64(np.asarray([(seed * 0x100000001B3 + stream) & 0xFFFFFFFFFFFFFFFF], np.uint64))
  z = splitmix64(np.asarray(positions, np.uint64) ^ key)
  return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def tile_weights(hist: np.ndarray, water_only: np.ndarray, cfg: SamplingConfig,
                 strata: Sequence[str] | None = None) -> np.ndarray:
  """Unnormalised sampling weight per tile (see module doc)."""
  hist = np.asarray(hist, np.float64)
  n = hist.shape[0]
  f = hist.mean(0)
  inv = np.where(f > 0, 1.0 / np.maximum(f, 1e-12), 0.0)
  labelled = hist.sum(1) > 0
  score = np.where(labelled, hist @ inv, 1.0)
  w = score ** cfg.beta if cfg.beta > 0 else np.ones(n)
  w = w * np.where(np.asarray(water_only, bool), cfg.ocean_fraction, 1.0)
  if strata is not None and cfg.strata_beta > 0:
    _, inverse, counts = np.unique(np.asarray(strata), return_inverse=True, return_counts=True)
    w = w * counts[inverse].astype(np.float64) ** -cfg.strata_beta
  if not np.isfinite(w).all() or w.sum() <= 0:
    raise ValueError("sampling weights are all zero (every tile water-only with "
                     "ocean_fraction=0?)")
  return w


class StratifiedSampler:
  """Maps global sample positions to tile records, deterministically."""

  def __init__(self, weights: np.ndarray, seed: int, hist: np.ndarray | None = None,
               labels: np.ndarray | None = None):
    w = np.asarray(weights, np.float64)
    self.probs = w / w.sum()
    self._cdf = np.cumsum(self.probs)
    self._cdf[-1] = 1.0
    self.seed = int(seed)
    self.hist = None if hist is None else np.asarray(hist, np.float64)
    self.labels = None if labels is None else np.asarray(labels, np.int64)

  def __len__(self) -> int:
    return len(self.probs)

  def indices(self, positions: np.ndarray) -> np.ndarray:
    """Record index for each global sample position."""
    u = uniform(self.seed, positions, stream=0)
    return np.minimum(np.searchsorted(self._cdf, u, side="right"), len(self.probs) - 1)

  def __call__(self, position: int) -> int:
    return int(self.indices(np.asarray([position]))[0])

  def exposure(self, start: int, stop: int, chunk: int = 1 << 20) -> dict[str, np.ndarray]:
    """Per-class exposure of positions [start, stop): summed histogram fractions ("pixels", in
    tiles) and counts of dominant labels ("tiles"; label -1 is not counted)."""
    pix = np.zeros(lc_lib.NUM_CLASSES)
    tiles = np.zeros(lc_lib.NUM_CLASSES, np.int64)
    for s in range(start, stop, chunk):
      idx = self.indices(np.arange(s, min(stop, s + chunk)))
      if self.hist is not None:
        pix += self.hist[idx].sum(0)
      if self.labels is not None:
        lab = self.labels[idx]
        tiles += np.bincount(lab[lab >= 0], minlength=lc_lib.NUM_CLASSES)
    return {"pixels": pix, "tiles": tiles}

  def expected_exposure(self) -> np.ndarray:
    """Expected per-class pixel fraction of one draw."""
    if self.hist is None:
      raise ValueError("sampler built without histograms")
    return self.probs @ self.hist
