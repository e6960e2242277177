"""`config.data.source="random"`: deterministic random tiles with the keys, shapes and dtypes of
the pipeline's batches, for tests and benchmarks of the step alone (no learnable signal).

Batch i is a pure function of (seed, process, i), so the iterator resumes by storing i, and the
labels of any global batch are computable without drawing its tiles (exposure metrics).
"""
from __future__ import annotations

import json
from typing import Iterator

import numpy as np

from terrafm_jax.data import modality_groups
from terrafm_jax.train import run_plan


class RandomBatches(Iterator[dict[str, np.ndarray]]):
  """Batch i is a pure function of (seed, process, i): resumable by storing i."""

  def __init__(self, plan: run_plan.RunPlan, process_index: int, process_count: int):
    self.c = plan.config
    self.crops = plan.crops
    self.local_batch = self.c.global_batch_size // process_count
    self.process_index = process_index
    self.index = 0
    self.block = plan.group_block

  # Bytes, like grain.DataLoaderIterator, so Grain's Orbax handler stores it unchanged.
  def get_state(self) -> bytes:
    return json.dumps({"index": self.index}).encode()

  def set_state(self, state: bytes) -> None:
    self.index = int(json.loads(state)["index"])

  def start_prefetch(self) -> None:  # called by Grain's checkpoint handler after restore
    pass

  def __next__(self) -> dict[str, np.ndarray]:
    d = self.c.data
    rng = np.random.default_rng([self.c.seed, self.process_index, self.index])
    self.index += 1  # batch i feeds (1-based) step i
    b, t = self.local_batch, d.builtin.tile_size
    n_g, v = d.n_global, d.n_global + d.n_local
    boxes = np.zeros((b, v, 4), np.float32)
    for j in range(v):
      lo, hi = d.global_scale if j < n_g else d.local_scale
      side = t * np.sqrt(rng.uniform(lo, hi, size=b))
      boxes[:, j, 2] = boxes[:, j, 3] = side
      boxes[:, j, 0] = rng.uniform(0, 1, size=b) * (t - side)
      boxes[:, j, 1] = rng.uniform(0, 1, size=b) * (t - side)

    labels = random_labels(self.c.seed, self.process_index, self.index, b)

    def masks(n):
      m = rng.random((b, n, 3)) < 0.5
      m[np.arange(b)[:, None], np.arange(n)[None], rng.integers(0, 3, (b, n))] = True
      return m

    out = {
        "s1": rng.normal(-12.0, 4.0, (b, t, t, 2)).astype(np.float16),
        "s2_l1c": rng.integers(1, 5000, (b, t, t, 12)).astype(np.uint16),
        "s2_l2a": rng.integers(1, 5000, (b, t, t, 12)).astype(np.uint16),
        "available": np.ones((b, 3), bool),
        "boxes": boxes, "flip": rng.random((b, v)) < 0.5,
        "student_masks": masks(v), "teacher_masks": masks(n_g),
        "label": labels,
        "tile_index": (np.arange(b) + self.index * b).astype(np.int64),
    }
    if self.block:
      first = (self.index - 1) * self.c.global_batch_size + self.process_index * b
      out = modality_groups.balance_batch(out, self.crops, self.block, self.c.seed, first)
    return out


def random_labels(seed: int, process_index: int, index: int, n: int) -> np.ndarray:
  # A stream of its own, so the global labels of any step are computable without the tiles.
  return np.random.default_rng([seed, 3, process_index, index]).integers(0, 11, n).astype(np.int32)
