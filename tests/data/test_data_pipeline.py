"""Grain pipeline: batch format, exact resumption from iterator state, process slices, workers."""
import dataclasses
import os

import numpy as np
import pandas as pd
import pytest

from terrafm_jax.data import contract as contract_lib
from terrafm_jax.data import crops as crops_lib
from terrafm_jax.data import pipeline
from terrafm_jax.data import prepared as prepared_lib
from terrafm_jax.data import sampling

CROPS = crops_lib.CropConfig(global_size=32, local_size=16)


def _it(prepared, **kw):
  args = dict(global_batch_size=4, seed=5, crops=CROPS, process_index=0, process_count=1)
  args.update(kw)
  return pipeline.make_train_iterator(prepared, **args)


def _same(a, b):
  assert a.keys() == b.keys()
  for k in a:
    assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
    assert a[k].tobytes() == b[k].tobytes(), k


def test_batch_format(prepared):
  b = next(_it(prepared))
  t = 32
  want = {"s1": ((4, t, t, 2), np.float16), "s2_l1c": ((4, t, t, 12), np.uint16),
          "s2_l2a": ((4, t, t, 12), np.uint16), "available": ((4, 3), np.bool_),
          "boxes": ((4, 8, 4), np.float32), "flip": ((4, 8), np.bool_),
          "student_masks": ((4, 8, 3), np.bool_), "teacher_masks": ((4, 2, 3), np.bool_),
          "label": ((4,), np.int32), "tile_index": ((4,), np.int64)}
  assert set(b) == set(want)
  for k, (shape, dtype) in want.items():
    assert b[k].shape == shape and b[k].dtype == dtype, k
  assert not np.isnan(b["s1"]).any()
  for i in range(4):
    for m, a in zip(contract_lib.MODALITIES, b["available"][i]):
      if not a:
        assert not b[m][i].any()
    masks = np.concatenate([b["student_masks"][i], b["teacher_masks"][i]])
    assert masks.any(1).all() and not (masks & ~b["available"][i]).any()
  index = pd.read_parquet(os.path.join(prepared, "index.parquet")).set_index("tile_index")
  np.testing.assert_array_equal(b["label"], index.loc[b["tile_index"], "label"])


def test_state_restores_exactly(prepared):
  it = _it(prepared)
  for _ in range(3):
    next(it)
  state = it.get_state()
  after = [next(it) for _ in range(3)]
  it2 = _it(prepared)
  it2.set_state(state)
  for a, b in zip(after, [next(it2) for _ in range(3)]):
    _same(a, b)
  first = next(_it(prepared))
  assert first["tile_index"].tobytes() != after[0]["tile_index"].tobytes() or \
      first["boxes"].tobytes() != after[0]["boxes"].tobytes()


def test_process_slices_make_up_the_global_batch(prepared):
  full = _it(prepared, global_batch_size=4)
  p0 = _it(prepared, global_batch_size=4, process_index=0, process_count=2)
  p1 = _it(prepared, global_batch_size=4, process_index=1, process_count=2)
  for _ in range(2):
    g, a, b = next(full), next(p0), next(p1)
    _same(g, {k: np.concatenate([a[k], b[k]]) for k in g})
  with pytest.raises(ValueError, match="divisible"):
    _it(prepared, global_batch_size=5, process_count=2)


def test_multiprocess_workers_match_in_process(prepared):
  ref = _it(prepared)
  batches = [next(ref) for _ in range(3)]
  it = _it(prepared, worker_count=2)
  got = [next(it) for _ in range(2)]
  state = it.get_state()
  for a, b in zip(batches, got):
    _same(a, b)
  it2 = _it(prepared, worker_count=2)
  it2.set_state(state)
  _same(batches[2], next(it2))


def test_worker_shared_memory_slots_are_reused_and_unlinked(prepared, monkeypatch):
  from terrafm_jax.data import shm_ring  # pylint: disable=g-import-not-at-top
  ref = _it(prepared)
  want = [next(ref) for _ in range(12)]
  seen = {"ref": 0, "inline": 0}
  call = shm_ring.FromSlots.__call__

  def counting(self, batch):
    seen["ref" if isinstance(batch["s1"], shm_ring.SlotRef) else "inline"] += 1
    return call(self, batch)

  monkeypatch.setattr(shm_ring.FromSlots, "__call__", counting)
  it = _it(prepared, worker_count=1, worker_buffer_size=1)  # 4 slots for 12 batches
  kept = None
  for i, a in enumerate(want):
    b = next(it)
    _same(a, b)
    if i == 3:
      kept = b  # held across the rest: its slot stays busy, the others cycle
  layout = it._it._slots._owner.layout  # pylint: disable=protected-access
  # Slots are reused; a batch finding none free (timing) goes through Grain's own transfer.
  assert seen["ref"] + seen["inline"] == 12 and seen["ref"] > layout.slots
  names = layout.names
  assert all(os.path.exists(f"/dev/shm/{n}") for n in names)
  it.close()
  assert not any(os.path.exists(f"/dev/shm/{n}") for n in names)
  _same(want[3], kept)  # arrays outlive the iterator


def test_seed_sampling_and_contract_checks(prepared):
  a = next(_it(prepared, seed=1))
  b = next(_it(prepared, seed=2))
  assert a["tile_index"].tobytes() != b["tile_index"].tobytes() or \
      a["boxes"].tobytes() != b["boxes"].tobytes()
  counts = pipeline.exposure_counts(prepared, seed=0, num_samples=5000,
                                    sampling=sampling.SamplingConfig(beta=1.0))
  assert len(counts["pixels"]) == 11 and sum(counts["tiles"]) == 5000
  bad = dataclasses.replace(contract_lib.DEFAULT_CONTRACT, modalities=tuple(
      dataclasses.replace(m, bands=tuple(reversed(m.bands))) if m.name == "s2_l2a" else m
      for m in contract_lib.DEFAULT_CONTRACT.modalities))
  with pytest.raises(ValueError, match="band order"):
    _it(prepared, contract=bad)


def test_s1_nodata_is_filled_with_the_contract_mean(prepared):
  prep = prepared_lib.load_prepared(prepared)
  dec = pipeline._ReadDecode(prep)
  idx = prep.index
  rows = np.flatnonzero((idx["nodata_frac_s1"] > 0) & idx["has_s1"])
  if not len(rows):
    pytest.skip("no S1 nodata in this synthetic draw")
  ex = dec((0, int(rows[0])))
  raw = dec._features.deserialize_example_np(dec._source[int(rows[0])])["s1"]
  nan = np.isnan(raw).any(-1)
  assert nan.any()
  np.testing.assert_array_equal(ex["s1"][nan], np.asarray(prep.contract["s1"].mean, np.float16)[
      None].repeat(nan.sum(), 0))


def test_dataset_found_from_a_parent_folder(prepared, tmp_path):
  # prepare's output root (three levels above the dataset), as the README passes it to the trainer
  root = os.path.dirname(os.path.dirname(os.path.dirname(prepared)))
  assert prepared_lib.find_dataset_dir(root) == prepared
  _same(next(_it(root)), next(_it(prepared)))
  # two datasets at the same depth: an error naming both, not a silent pick
  for size in ("tile32", "tile64"):
    d = tmp_path / "prep" / "majortom_tiles" / size / "1.0.0"
    d.mkdir(parents=True)
    (d / "dataset_info.json").write_text("{}")
  with pytest.raises(FileNotFoundError, match="found 2:.*tile32.*tile64"):
    prepared_lib.find_dataset_dir(str(tmp_path / "prep"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="empty: expected one prepared dataset.*found 0"):
    prepared_lib.find_dataset_dir(str(tmp_path / "empty"))
