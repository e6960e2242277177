"""The trainer's view of the input pipeline: an iterator of per-process numpy batches.

`config.data.source`:
  "pipeline": terrafm_jax.data (Grain over prepared shards; the built-in synthetic Major-TOM set
              when `config.data.data_dir` is empty);
  "random"  : deterministic random tiles with the same keys, shapes and dtypes, for tests and
              benchmarks of the step alone (no learnable signal).
Both iterators have get_state/set_state, so checkpoints resume them exactly.
"""
from __future__ import annotations

import json
import os
from typing import Any, Iterator

import jax
import ml_collections
import numpy as np

from terrafm_jax.data.contract import MODALITIES

# Keys the train step consumes (tile_index stays on the host).
STEP_KEYS = MODALITIES + ("boxes", "flip", "student_masks", "teacher_masks", "label")


class RandomBatches(Iterator[dict[str, np.ndarray]]):
  """Batch i is a pure function of (seed, process, i): resumable by storing i."""

  def __init__(self, config: ml_collections.ConfigDict, process_index: int, process_count: int):
    self.c = config
    self.local_batch = config.global_batch_size // process_count
    self.process_index = process_index
    self.index = 0

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

    def masks(n):
      m = rng.random((b, n, 3)) < 0.5
      m[np.arange(b)[:, None], np.arange(n)[None], rng.integers(0, 3, (b, n))] = True
      return m

    s1 = rng.normal(-12.0, 4.0, (b, t, t, 2)).astype(np.float16)
    if self.index == self.c.debug.nan_at_step:  # test hook: poison the inputs of that step
      s1[:] = np.nan
    return {
        "s1": s1,
        "s2_l1c": rng.integers(1, 5000, (b, t, t, 12)).astype(np.uint16),
        "s2_l2a": rng.integers(1, 5000, (b, t, t, 12)).astype(np.uint16),
        "available": np.ones((b, 3), bool),
        "boxes": boxes, "flip": rng.random((b, v)) < 0.5,
        "student_masks": masks(v), "teacher_masks": masks(n_g),
        "label": rng.integers(0, 11, b).astype(np.int32),
        "tile_index": (np.arange(b) + self.index * b).astype(np.int64),
    }


def builtin_root(config: ml_collections.ConfigDict, workdir: str) -> str:
  return config.data.builtin.root or os.path.join(os.path.abspath(workdir), "builtin_data")


def make_train_iterator(config: ml_collections.ConfigDict, workdir: str) -> tuple[Any, int]:
  """(iterator, number of training examples) for this process."""
  pi, pc = jax.process_index(), jax.process_count()
  if config.global_batch_size % pc:
    raise ValueError(f"config.global_batch_size={config.global_batch_size} is not divisible by "
                     f"the {pc} processes")
  if config.data.source == "random":
    n = config.data.num_examples if config.data.num_examples > 0 else 64 * config.global_batch_size
    return RandomBatches(config, pi, pc), n
  if config.data.source != "pipeline":
    raise ValueError(f"config.data.source must be 'pipeline' or 'random', got "
                     f"{config.data.source!r}")
  from terrafm_jax.data import crops as crops_lib  # pylint: disable=g-import-not-at-top
  from terrafm_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from terrafm_jax.data import sampling as sampling_lib  # pylint: disable=g-import-not-at-top
  d = config.data
  data_dir = d.data_dir
  if not data_dir:
    from terrafm_jax.data import synthetic  # pylint: disable=g-import-not-at-top
    data_dir = synthetic.ensure_builtin_dataset(
        builtin_root(config, workdir), num_cells=d.builtin.num_cells,
        cell_size=d.builtin.cell_size, tile_size=d.builtin.tile_size, seed=d.builtin.seed)
  crops = crops_lib.CropConfig(
      n_global=d.n_global, global_size=d.global_size, global_scale=tuple(d.global_scale),
      n_local=d.n_local, local_size=d.local_size, local_scale=tuple(d.local_scale),
      ratio=tuple(d.ratio), flip_p=d.flip_p, modality_reading=d.modality_reading,
      single_p=d.single_p, keep_p=d.keep_p, granularity=d.granularity,
      modalities=tuple(d.modalities))
  sampling = sampling_lib.SamplingConfig(**{
      k: tuple(v) if isinstance(v, list) else v for k, v in d.sampling.to_dict().items()})
  it = pipeline.make_train_iterator(
      data_dir, global_batch_size=config.global_batch_size, seed=config.seed, crops=crops,
      sampling=sampling, process_index=pi, process_count=pc, worker_count=d.worker_count)
  n = d.num_examples if d.num_examples > 0 else pipeline.load_prepared(data_dir).num_records
  return it, n


def describe(it: Any) -> str:
  try:
    state = it.get_state()
    return (state.decode() if isinstance(state, bytes) else json.dumps(state))[:200]
  except Exception:  # pylint: disable=broad-except
    return type(it).__name__
