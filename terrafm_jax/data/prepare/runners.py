"""Writing prepare units: local ArrayRecord shards (process pool, resumable) or Beam/TFDS examples.

Each unit writes `<parts>/unit_NNNNN.array_record` (local runner), `.index.parquet` and, last, the
`.json` sidecar that marks it done (records, counts, statistics, fingerprint of the options).
"""
from __future__ import annotations

import json
import os
from typing import Any, Iterator, Sequence

from terrafm_jax.data.prepare.options import UnitJob
from terrafm_jax.data.prepare.records import UnitResult, features, to_example
from terrafm_jax.data.prepare.units import iter_unit


def _atomic_write(path: str, write) -> None:
  tmp = path + ".tmp"
  write(tmp)
  os.replace(tmp, path)


def _write_sidecars(job: UnitJob, result: UnitResult, num_records: int) -> None:
  import pandas as pd  # pylint: disable=g-import-not-at-top
  if result.rows:
    _atomic_write(job.stem + ".index.parquet",
                  lambda p: pd.DataFrame(result.rows).to_parquet(p, index=False))
  info = {"unit": job.unit, "num_records": num_records, "fingerprint": job.options.fingerprint(),
          **result.to_json()}

  def write_json(p):
    with open(p, "w", encoding="utf-8") as f:
      json.dump(info, f)
  _atomic_write(job.stem + ".json", write_json)   # written last: marks the unit done


def unit_done(job: UnitJob, need_shard: bool) -> bool:
  p = job.stem + ".json"
  if not os.path.exists(p):
    return False
  with open(p, encoding="utf-8") as f:
    info = json.load(f)
  if info.get("fingerprint") != job.options.fingerprint():
    raise ValueError(f"{job.parts_dir} holds shards prepared with other options; delete it or "
                     "re-run with the original options")
  return not need_shard or info["num_records"] == 0 or os.path.exists(job.stem + ".array_record")


def write_unit_local(job: UnitJob) -> tuple[int, int]:
  """Write one unit's ArrayRecord shard + sidecars (skipped if already done)."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  if unit_done(job, need_shard=True):
    with open(job.stem + ".json", encoding="utf-8") as f:
      return job.unit, json.load(f)["num_records"]
  feats = features(job.tile_size)
  result = UnitResult()
  tmp = job.stem + ".array_record.tmp"
  writer = array_record_module.ArrayRecordWriter(tmp, f"group_size:1,{job.options.compression}")
  n = 0
  try:
    for t in iter_unit(job, result):
      writer.write(feats.serialize_example(to_example(t, job.tile_size)))
      n += 1
  finally:
    writer.close()
  if n:
    os.replace(tmp, job.stem + ".array_record")
  else:
    os.remove(tmp)
  _write_sidecars(job, result, n)
  return job.unit, n


def beam_unit_examples(job: UnitJob) -> Iterator[tuple[int, dict[str, Any]]]:
  """(key, example) pairs of a unit for TFDS's generator / Beam writers (sidecars as a side effect)."""
  result = UnitResult()
  n = 0
  for t in iter_unit(job, result):
    n += 1
    yield t.tile_index, to_example(t, job.tile_size)
  _write_sidecars(job, result, n)


def run_local(jobs: Sequence[UnitJob], num_workers: int) -> None:
  """Run the missing units in a process pool, with a progress bar."""
  import multiprocessing  # pylint: disable=g-import-not-at-top
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
  todo = [j for j in jobs if not unit_done(j, need_shard=True)]
  workers = min(num_workers or os.cpu_count() or 1, max(len(todo), 1))
  bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), unit="shard", desc="prepare")
  tiles = 0
  if workers <= 1:
    results = map(write_unit_local, todo)
    pool = None
  else:
    pool = multiprocessing.get_context("spawn").Pool(workers)
    results = pool.imap_unordered(write_unit_local, todo)
  try:
    for _, n in results:
      tiles += n
      bar.update(1)
      bar.set_postfix(tiles=tiles)
  finally:
    bar.close()
    if pool is not None:
      pool.terminate()
      pool.join()
