"""Host-side data throughput: prepare (tiles/s per worker) and streaming (samples/s per worker).

    python bench/data_pipeline.py [--num_cells=4] [--cell_size=1068] [--tile_size=534] \
        [--batch=8] [--batches=24] [--workdir=/tmp/terrafm_bench_data] [--workers=0,1] \
        [--compare_grain_transfer] [--stream_only]

Writes synthetic Major-TOM cells at full size (1068 px, 4 tiles of 534 px each), prepares them with
one worker, then streams batches with Grain in-process (worker_count=0) and with worker processes
(--workers; --compare_grain_transfer adds Grain's own fresh-shared-memory transfer, the pre-slot path).
Reports steady-state samples/s (timed after a warm-up in which every worker's shared-memory slot
has been used once), per core, the seconds to the first batch, and bytes per sample shipped to the
device. A benchmark, not a test.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time


from terrafm_jax.data import crops as crops_lib
from terrafm_jax.data import pipeline
from terrafm_jax.data import prepared as prepared_lib
from terrafm_jax.data import prepare as prepare_lib
from terrafm_jax.data import synthetic


def _stream(d: str, batch: int, batches: int, workers: int, reuse_shm: bool = True,
            buffer: int = 2) -> tuple[float, float, int]:
  """(steady-state samples/s, seconds to the first batch, bytes per sample)."""
  pipeline.REUSE_WORKER_SHM = reuse_shm
  t = time.perf_counter()
  it = pipeline.make_train_iterator(d, global_batch_size=batch, seed=0,
                                    crops=crops_lib.CropConfig(), process_index=0,
                                    process_count=1, worker_count=workers,
                                    worker_buffer_size=buffer)
  b = next(it)
  first = time.perf_counter() - t
  # Warm up until every shared-memory slot has been written once: a slot's first use faults in
  # its tmpfs pages (~120 MB a batch here), a start-up cost that steady streaming does not pay.
  warm = max(2, workers * pipeline.worker_slots(buffer) + 2) if reuse_shm else 2
  for _ in range(warm):
    b = next(it)
  t = time.perf_counter()
  for _ in range(batches):
    b = next(it)
  dt = time.perf_counter() - t
  it.close()
  pipeline.REUSE_WORKER_SHM = True
  return batches * batch / dt, first, sum(v.nbytes for v in b.values()) // batch


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("--num_cells", type=int, default=4)
  p.add_argument("--cell_size", type=int, default=1068)
  p.add_argument("--tile_size", type=int, default=534)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--batches", type=int, default=24,
                 help="timed batches per setting, after the warm-up")
  p.add_argument("--workdir", default="/tmp/terrafm_bench_data")
  p.add_argument("--workers", default="0,1",
                 help="comma-separated worker_count values to stream with")
  p.add_argument("--compare_grain_transfer", action="store_true",
                 help="also stream worker_count > 0 with Grain's own transfer (fresh shared "
                      "memory per array) instead of the reused slots")
  p.add_argument("--stream_only", action="store_true",
                 help="reuse the dataset prepared in --workdir; only stream")
  a = p.parse_args()
  workers = [int(w) for w in a.workers.split(",")]
  if a.stream_only:
    found = [r for r, _, fs in os.walk(os.path.join(a.workdir, "prepared"))
             if "dataset_info.json" in fs]
    _stream_report(found[0], a, workers, {})
    return
  shutil.rmtree(a.workdir, ignore_errors=True)
  raw = os.path.join(a.workdir, "majortom")
  t = time.perf_counter()
  synthetic.write_synthetic_majortom(raw, synthetic.SyntheticConfig(
      num_cells=a.num_cells, cell_size=a.cell_size, tile_size=a.tile_size, seed=0))
  t_syn = time.perf_counter() - t
  raw_bytes = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(raw) for f in fs)
  t = time.perf_counter()
  d = prepare_lib.prepare(raw, os.path.join(a.workdir, "prepared"), prepare_lib.PrepareOptions(
      tile_size=a.tile_size, cells_per_shard=max(1, a.num_cells // 2), num_workers=1,
      landcover=os.path.join(raw, "worldcover.parquet")))
  t_prep = time.perf_counter() - t
  n_tiles = json.load(open(os.path.join(d, "prepare.json")))["num_records"]
  shard_bytes = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d)
                    if ".array_record-" in f)
  # decode only: record read + deserialize, one thread
  prep = prepared_lib.load_prepared(d)
  dec = pipeline._ReadDecode(prep)
  dec((0, 0))
  t = time.perf_counter()
  for i in range(2 * n_tiles):
    dec((i, i % n_tiles))
  decode_rate = 2 * n_tiles / (time.perf_counter() - t)
  _stream_report(d, a, workers, {
      "tiles": n_tiles, "tile_size": a.tile_size,
      "synthetic_write_s_per_cell": round(t_syn / a.num_cells, 2),
      "raw_majortom_MB_per_tile": round(raw_bytes / n_tiles / 1e6, 2),
      "prepare_tiles_per_s_one_worker": round(n_tiles / t_prep, 2),
      "shard_MB_per_tile": round(shard_bytes / n_tiles / 1e6, 2),
      "decode_samples_per_s_one_thread": round(decode_rate, 1)})


def _stream_report(d: str, a, workers: list[int], res: dict) -> None:
  cores = os.cpu_count()
  res = {"cpu_count": cores, **res}
  bytes_per_sample = 0
  for w in workers:
    modes = [True, False] if w and a.compare_grain_transfer else [True]
    for reuse in modes:
      rate, first, bytes_per_sample = _stream(d, a.batch, a.batches, w, reuse)
      name = "in_process" if not w else f"{w}_worker_processes" + (
          "" if reuse else "_grain_transfer")
      res[f"first_batch_s_{name}"] = round(first, 2)
      res[f"stream_samples_per_s_{name}"] = round(rate, 1)
      res[f"stream_samples_per_s_per_core_{name}"] = round(rate / cores, 1)
  res["bytes_per_sample_to_device"] = int(bytes_per_sample)
  res["MB_per_s_to_device_at_150_samples_per_s"] = round(150 * bytes_per_sample / 1e6, 1)
  print(json.dumps(res, indent=2))


if __name__ == "__main__":
  main()
