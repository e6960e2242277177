"""Grain streaming of prepared Major-TOM tiles: stratified sampling -> decode -> crop plan -> batch.

    it = make_train_iterator(data_dir, *, global_batch_size, seed, crops=CropConfig(),
                             sampling=SamplingConfig(), process_index=None, process_count=None,
                             worker_count=0, worker_buffer_size=2, contract=None)
    batch = next(it); state = it.get_state(); ...; it2.set_state(state)   # exact resumption

`data_dir` is the dataset directory returned by `prepare.prepare` / `builtin.ensure_builtin_dataset`
(or the prepare `out_dir` holding exactly one prepared dataset). Each step yields this process's
slice of the global batch (B = global_batch_size / process_count) as numpy arrays:

  "s1"             (B, T, T, 2)  float16  S1 dB; nodata replaced by the contract's band mean
  "s2_l1c"         (B, T, T, 12) uint16   harmonised DN (0 = nodata; all zeros if absent)
  "s2_l2a"         (B, T, T, 12) uint16
  "available"      (B, 3) bool            modality present, order contract.MODALITIES
  "boxes"          (B, V, 4) float32      [y0, x0, h, w] in tile pixels, globals first
  "flip"           (B, V) bool
  "student_masks"  (B, V, 3) bool         non-empty subsets of "available"
  "teacher_masks"  (B, n_global, 3) bool
  "label"          (B,) int32             dominant WorldCover class 0..10 (-1: no land cover input)
  "tile_index"     (B,) int64

Crop + resize run on the device (train/device_crops.py). Global sample position k (batch k // G,
slot k % G) is drawn by the stratified sampler from (seed, k) and planned from an RNG seeded by
(seed, k), so the global batch sequence does not depend on process_count or worker_count, and the
Grain iterator state (a position) restores it exactly.
"""
from __future__ import annotations

import functools
import sys
from typing import Any

import numpy as np

from terrafm_jax.data import contract as contract_lib
from terrafm_jax.data import crops as crops_lib
from terrafm_jax.data import modality_groups
from terrafm_jax.data import prepared as prepared_lib
from terrafm_jax.data import resumable
from terrafm_jax.data import sampling as sampling_lib
from terrafm_jax.data import shm_ring

# Virtual length of the sample stream (positions); far beyond any training run.
STREAM_LENGTH = 1 << 40
# Worker processes hand tiles over in reused shared-memory slots (shm_ring.py); False: Grain's
# own transfer (a fresh shared-memory block per array), kept for bench/data_pipeline.py.
REUSE_WORKER_SHM = True


class _Positions:
  """Element j of this process's stream -> (global position k, record index)."""

  def __init__(self, sampler: sampling_lib.StratifiedSampler, local_batch: int,
               global_batch: int, process_index: int):
    self._sampler = sampler
    self._b, self._g, self._p = local_batch, global_batch, process_index

  def __len__(self) -> int:
    return STREAM_LENGTH

  def __getitem__(self, j: int) -> tuple[int, int]:
    j = int(j)
    k = (j // self._b) * self._g + self._p * self._b + j % self._b
    return k, self._sampler(k)


class _ReadDecode:
  """(k, record) -> decoded tile dict; the readers open lazily in each worker process."""

  def __init__(self, prepared: prepared_lib.PreparedData):
    self._paths = prepared.shard_paths
    self._dir = prepared.dataset_dir
    self._tile_index = prepared.index["tile_index"].to_numpy(np.int64)
    self._s1_fill = np.asarray(prepared.contract["s1"].mean, np.float16)

  def __getstate__(self):
    return {k: v for k, v in self.__dict__.items() if k not in ("_source", "_features")}

  @functools.cached_property
  def _source(self):
    import grain  # pylint: disable=g-import-not-at-top
    return grain.sources.ArrayRecordDataSource(self._paths)

  @functools.cached_property
  def _features(self):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    return tfds.builder_from_directory(self._dir).info.features

  def __call__(self, item: tuple[int, int]) -> dict[str, Any]:
    k, record = item
    ex = self._features.deserialize_example_np(self._source[record])
    if int(ex["tile_index"]) != self._tile_index[record]:
      raise ValueError(f"{self._dir}: record {record} holds tile {int(ex['tile_index'])} but the "
                       f"index says {self._tile_index[record]}; the index does not match the shards")
    s1 = ex["s1"]
    nan = np.isnan(s1)
    if nan.any():  # nodata -> band mean, which normalises to 0 on the device
      s1 = np.where(nan, self._s1_fill, s1)
    return {"s1": s1.astype(np.float16), "s2_l1c": ex["s2_l1c"], "s2_l2a": ex["s2_l2a"],
            "available": ex["available"].astype(bool), "label": np.int32(ex["label"]),
            "tile_index": np.int64(ex["tile_index"]), "_k": np.int64(k)}


class _Plan:
  """Adds the crop plan and modality masks, from RNGs seeded by (seed, k) / (seed, batch)."""

  def __init__(self, cfg: crops_lib.CropConfig, tile_size: int, seed: int, global_batch: int):
    self._cfg, self._t, self._seed, self._g = cfg, tile_size, seed, global_batch

  def __call__(self, ex: dict[str, Any]) -> dict[str, Any]:
    k = int(ex["_k"])
    rng = np.random.default_rng([self._seed, 1, k])
    batch_rng = np.random.default_rng([self._seed, 2, k // self._g])
    ex.update(crops_lib.plan_crops(rng, ex["available"], self._t, self._cfg, batch_rng))
    return ex


class _Groups:
  """Batch-level: fixed modality-group sizes per block of `block` samples (modality_groups.py);
  block 0 leaves the per-sample draws as they are. Drops the position key either way."""

  def __init__(self, cfg: crops_lib.CropConfig, block: int, seed: int):
    self._cfg, self._block, self._seed = cfg, block, seed

  def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
    k = batch.pop("_k")
    if not self._block:
      return batch
    return modality_groups.balance_batch(batch, self._cfg, self._block, self._seed, int(k[0]))


def ensure_absl_flags_parsed() -> None:
  """Grain reads absl flags (also in its worker processes); parse defaults if no app did."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS(sys.argv[:1] or ["terrafm"], known_only=True)


def make_sampler(prepared: prepared_lib.PreparedData, sampling: sampling_lib.SamplingConfig,
                 seed: int) -> sampling_lib.StratifiedSampler:
  hist = prepared.hist()
  weights = sampling_lib.tile_weights(hist, prepared.index["water_only"].to_numpy(bool),
                                      sampling, prepared.strata())
  return sampling_lib.StratifiedSampler(weights, seed, hist,
                                        prepared.index["label"].to_numpy(np.int64))


def worker_slots(worker_buffer_size: int) -> int:
  """Shared-memory slots per worker process: the batches one can have in flight (its queue, the
  parent's interleave buffer, one each side)."""
  return 2 * worker_buffer_size + 2


def make_train_dataset(data_dir: str, *, global_batch_size: int, seed: int,
                       crops: crops_lib.CropConfig = crops_lib.CropConfig(),
                       sampling: sampling_lib.SamplingConfig = sampling_lib.SamplingConfig(),
                       process_index: int | None = None, process_count: int | None = None,
                       worker_count: int = 0, worker_buffer_size: int = 2,
                       contract: contract_lib.InputContract | None = None,
                       start_batch: int = 0, prepared: prepared_lib.PreparedData | None = None,
                       group_block: int = 0, return_slots: bool = False):
  """The Grain IterDataset behind `make_train_iterator` (from global batch `start_batch` on),
  and its prepared_lib.PreparedData (and, with `return_slots`, the worker shared-memory owner or None)."""
  import grain  # pylint: disable=g-import-not-at-top
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if global_batch_size % process_count:
    raise ValueError(f"global_batch_size {global_batch_size} is not divisible by "
                     f"process_count {process_count}")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  prepared = prepared or prepared_lib.load_prepared(data_dir, contract)
  if prepared.num_records == 0:
    raise ValueError(f"{prepared.dataset_dir} holds no tile")
  local = global_batch_size // process_count
  if group_block < 0 or (group_block and local % group_block):
    raise ValueError(f"group_block {group_block} must be >= 0 and divide the per-process batch "
                     f"of {local} samples")
  sampler = make_sampler(prepared, sampling, seed)
  ds = (grain.MapDataset.source(_Positions(sampler, local, global_batch_size, process_index))
        .map(_ReadDecode(prepared))
        .map(_Plan(crops, prepared.tile_size, seed, global_batch_size))
        .batch(local, drop_remainder=True)
        .map(_Groups(crops, group_block, seed)))
  if start_batch:
    ds = ds[start_batch:]  # positional: batch n is the same whatever came before it
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=2 if worker_count else 4,
                                            prefetch_buffer_size=2 * local))
  slots = None
  if worker_count > 0 and not REUSE_WORKER_SHM:
    ensure_absl_flags_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count,
                                                     per_worker_buffer_size=worker_buffer_size))
  elif worker_count > 0:
    ensure_absl_flags_parsed()
    # Tiles leave the workers through reused shared-memory slots (shm_ring.py, worker_slots).
    t = prepared.tile_size
    layout, shms = shm_ring.create(worker_count, worker_slots(worker_buffer_size), {
        "s1": ((local, t, t, 2), np.float16), "s2_l1c": ((local, t, t, 12), np.uint16),
        "s2_l2a": ((local, t, t, 12), np.uint16)})
    slots = shm_ring.FromSlots(layout, shms)
    ds = ds.map(shm_ring.ToSlots(layout))
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count,
                                                     per_worker_buffer_size=worker_buffer_size),
                        worker_init_fn=shm_ring.set_worker_index)
    ds = ds.map(slots)
  if return_slots:
    return ds, prepared, slots
  return ds, prepared


class _ClosingIterator:
  """A Grain iterator that also releases the shared-memory slots of its workers on close."""

  def __init__(self, it, slots: shm_ring.FromSlots | None):
    self._it, self._slots = it, slots

  def __iter__(self):
    return self

  def __next__(self):
    return next(self._it)

  def close(self) -> None:
    close = getattr(self._it, "close", None)
    try:
      if close is not None:
        close()
    finally:
      if self._slots is not None:
        self._slots.close()


def make_train_iterator(data_dir: str, *, global_batch_size: int, seed: int,
                        crops: crops_lib.CropConfig = crops_lib.CropConfig(),
                        sampling: sampling_lib.SamplingConfig = sampling_lib.SamplingConfig(),
                        process_index: int | None = None, process_count: int | None = None,
                        worker_count: int = 0, worker_buffer_size: int = 2,
                        contract: contract_lib.InputContract | None = None,
                        group_block: int = 0) -> resumable.GlobalPositionIterator:
  """A checkpointable iterator (get_state / set_state) over per-process batches. Its state is
  the global batch position, so it restores onto any process or worker count. `group_block` > 0:
  fixed modality-group sizes per block of that many samples (data/modality_groups.py), adding
  "student_groups" / "teacher_groups"."""
  prepared = prepared_lib.load_prepared(data_dir, contract)

  def make(start_batch: int):
    ds, _, slots = make_train_dataset(
        data_dir, global_batch_size=global_batch_size, seed=seed, crops=crops,
        sampling=sampling, process_index=process_index, process_count=process_count,
        worker_count=worker_count, worker_buffer_size=worker_buffer_size, contract=contract,
        start_batch=start_batch, prepared=prepared, group_block=group_block, return_slots=True)
    return _ClosingIterator(iter(ds), slots)

  make_train_dataset(  # validate the arguments now, not at the first next()
      data_dir, global_batch_size=global_batch_size, seed=seed, crops=crops, sampling=sampling,
      process_index=process_index, process_count=process_count, worker_count=0,
      contract=contract, prepared=prepared, group_block=group_block)
  fingerprint = {"seed": int(seed), "global_batch_size": int(global_batch_size),
                 "num_records": prepared.num_records}
  return resumable.GlobalPositionIterator(make, fingerprint)


def global_batch_labels(sampler: sampling_lib.StratifiedSampler, global_batch_size: int,
                        start_batch: int, stop_batch: int) -> np.ndarray:
  """Dominant land-cover labels of global batches [start, stop): the whole batch over all
  processes (what the sampler fed the model), computed from positions without reading data."""
  pos = np.arange(start_batch * global_batch_size, stop_batch * global_batch_size)
  return sampler.labels[sampler.indices(pos)]


def exposure_counts(data_dir: str, *, seed: int, num_samples: int,
                    sampling: sampling_lib.SamplingConfig = sampling_lib.SamplingConfig()
                    ) -> dict[str, Any]:
  """Per-class exposure of the first `num_samples` global samples (exact, no data read)."""
  from terrafm_jax.data import landcover  # pylint: disable=g-import-not-at-top
  prepared = prepared_lib.load_prepared(data_dir)
  sampler = make_sampler(prepared, sampling, seed)
  e = sampler.exposure(0, num_samples)
  return {"classes": landcover.CLASS_NAMES, "pixels": e["pixels"].tolist(),
          "tiles": e["tiles"].tolist(), "expected_pixels": sampler.expected_exposure().tolist()}
