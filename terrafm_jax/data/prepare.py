"""Prepare step: Major-TOM folders (+ WorldCover) -> ArrayRecord training shards + tile index.

    python -m terrafm_jax.data.prepare --majortom_dir=/data/majortom --out_dir=/data/prepared \
        [--landcover=/data/worldcover.parquet | --landcover=/data/worldcover_tifs/] \
        [--tile_size=534] [--cells_per_shard=16] [--workers=8] [--on_error=skip] \
        [--require=s1,s2_l1c,s2_l2a] [--runner=local|beam|generator]

The step is a TensorFlow Datasets builder (`MajorTomTiles`, a `tfds.core.GeneratorBasedBuilder`
with `manual_dir` = the folder holding `Core-S1RTC/`, `Core-S2L1C/`, `Core-S2L2A/`, any subset, and
`file_format='array_record'`), so the output is a regular TFDS dataset: `tfds.data_source(
"majortom_tiles/tile534", data_dir=out_dir)` (or `tfds.builder_from_directory(dataset_dir)`) reads
it without TensorFlow, and Grain streams it (pipeline.py).

Runners:
  * `local` (default): work units of `cells_per_shard` cells run in a process pool (one ArrayRecord
    shard each, written under `<out_dir>/_parts/` and renamed when complete), with a tqdm bar.
    Re-running after an interruption skips the finished shards. When every unit is done the shards
    are moved into the TFDS dataset directory.
  * `beam`: the same builder yields `beam.Create(units) | beam.FlatMap(unit examples)`, and TFDS's
    Beam writer writes the shards (for the full corpus on Dataflow / Flink / Spark; DirectRunner
    locally). Pass `beam_runner` / `beam_options`.
  * `generator`: TFDS's plain single-process generator path.

Next to the TFDS files the dataset directory holds:
  `index.parquet`  one row per record (row i = record i): ids (`tile_index`, `grid_cell`,
                   `tile_row`, `tile_col`), `has_<modality>`, WorldCover `wc_10..wc_100`,
                   `wc_nodata`, `label` (dominant class, -1 unknown), `water_only`, `climate`,
                   `region`, per modality `product_id_*`, `offset_*`, `offset_source_*`,
                   `nodata_frac_*`;
  `contract.json`  the input contract with statistics computed over the prepared tiles;
  `band_stats.json`, `report.json` (counts, offset decisions, skipped inputs), `prepare.json`.

Records: `s1` (T,T,2) float16 dB with NaN nodata, `s2_l1c` / `s2_l2a` (T,T,12) uint16 harmonised DN
(all zeros if absent), `available` (3,) bool, `wc_hist` (11,) float32, `label` int32,
`tile_index` int64, `grid_cell` text.

Bad input (corrupt parquet, missing band column, band of the wrong size, NaN / all-nodata tile,
mismatched modalities) raises `BadInputError` naming file / row group / column; with
`on_error="skip"` the cell or tile is skipped and counted in `report.json`.

Public API: `prepare(majortom_dir, out_dir, options) -> dataset_dir`, `PrepareOptions`,
`MajorTomTiles`, `dataset_dir(out_dir, tile_size)`, `main(argv)`.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import logging
import os
import shutil
import sys
from typing import Any, Iterator, Sequence

import numpy as np

from terrafm_jax.data import contract as contract_lib
from terrafm_jax.data import harmonize
from terrafm_jax.data import landcover as lc_lib
from terrafm_jax.data import majortom
from terrafm_jax.data import tiling
from terrafm_jax.data.errors import BadInputError

DATASET_NAME = "majortom_tiles"
VERSION = "1.0.0"
WATER_ONLY_THRESHOLD = 0.95
MAX_REPORTED_ERRORS = 200


@dataclasses.dataclass(frozen=True)
class PrepareOptions:
  """Options of the prepare step (all have defaults matching TerraFM / DATA.md)."""
  tile_size: int = 534
  cells_per_shard: int = 16
  landcover: str | None = None          # table (parquet/csv) or folder of WorldCover GeoTIFFs
  landcover_step: int = 4               # GeoTIFF mode: histogram on a 4x coarser tile grid
  on_error: str = "error"               # "error" | "skip"
  align: str = "reproject"              # modalities on another grid: "reproject" | "error"
  require: tuple[str, ...] = ()         # modalities a cell must have (TerraFM: all three)
  max_cells: int | None = None
  stats: str = "computed"               # contract statistics: "computed" | "default"
  num_workers: int = 0                  # 0: all CPU cores
  compression: str = "zstd:1"           # ArrayRecord options of the local runner
  offset_threshold: float = harmonize.DETECT_THRESHOLD
  runner: str = "local"                 # "local" | "beam" | "generator"

  def __post_init__(self):
    if self.on_error not in ("error", "skip"):
      raise ValueError(f"on_error must be 'error' or 'skip', got {self.on_error!r}")
    if self.runner not in ("local", "beam", "generator"):
      raise ValueError(f"runner must be local, beam or generator, got {self.runner!r}")
    if self.stats not in ("computed", "default"):
      raise ValueError(f"stats must be 'computed' or 'default', got {self.stats!r}")
    bad = set(self.require) - set(contract_lib.MODALITIES)
    if bad:
      raise ValueError(f"unknown modalities in require: {sorted(bad)}")

  def fingerprint(self) -> str:
    """Hash of what changes the shards' content (not workers / runner)."""
    d = dataclasses.asdict(self)
    for k in ("num_workers", "runner"):
      d.pop(k)
    return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


@dataclasses.dataclass(frozen=True)
class UnitJob:
  """One work unit = one shard: consecutive cells of the sorted cell list."""
  unit: int
  cells: tuple[tuple[int, str, tuple[majortom.ProductRef, ...]], ...]  # (ordinal, cell, refs)
  tile_size: int
  options: PrepareOptions
  parts_dir: str

  @property
  def stem(self) -> str:
    return os.path.join(self.parts_dir, f"unit_{self.unit:05d}")


def features(tile_size: int):
  """The TFDS FeaturesDict of one record."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  t = tile_size
  enc = tfds.features.Encoding.BYTES   # raw bytes: fast numpy decoding without TensorFlow
  nc = contract_lib.DEFAULT_CONTRACT.num_channels
  return tfds.features.FeaturesDict({
      "tile_index": np.int64,
      "grid_cell": tfds.features.Text(),
      "s1": tfds.features.Tensor(shape=(t, t, nc["s1"]), dtype=np.float16, encoding=enc),
      "s2_l1c": tfds.features.Tensor(shape=(t, t, nc["s2_l1c"]), dtype=np.uint16, encoding=enc),
      "s2_l2a": tfds.features.Tensor(shape=(t, t, nc["s2_l2a"]), dtype=np.uint16, encoding=enc),
      "available": tfds.features.Tensor(shape=(len(contract_lib.MODALITIES),), dtype=np.bool_),
      "wc_hist": tfds.features.Tensor(shape=(lc_lib.NUM_CLASSES,), dtype=np.float32),
      "label": np.int32,
  })


def _label(lc: lc_lib.LandCover | None) -> tuple[int, bool]:
  """(label, water_only). Open sea (no classified pixel, or >= 95 % water) is labelled water."""
  if lc is None:
    return lc_lib.UNKNOWN_LABEL, False
  water = (1 - lc.nodata_frac) * float(lc.hist[lc_lib.WATER]) + lc.nodata_frac
  water_only = water >= WATER_ONLY_THRESHOLD
  label = lc.dominant
  if label == lc_lib.UNKNOWN_LABEL and water_only:
    label = lc_lib.WATER
  return label, water_only


def to_example(t: tiling.TileRecord, tile_size: int) -> dict[str, Any]:
  nc = contract_lib.DEFAULT_CONTRACT.num_channels
  ex: dict[str, Any] = {"tile_index": t.tile_index, "grid_cell": t.grid_cell,
                        "available": t.available}
  for m in contract_lib.MODALITIES:
    dtype = np.float16 if m == "s1" else np.uint16
    ex[m] = t.arrays.get(m, np.zeros((tile_size, tile_size, nc[m]), dtype))
  ex["wc_hist"] = (t.landcover.hist if t.landcover is not None
                   else np.zeros(lc_lib.NUM_CLASSES, np.float32))
  ex["label"] = _label(t.landcover)[0]
  return ex


def index_row(t: tiling.TileRecord) -> dict[str, Any]:
  label, water_only = _label(t.landcover)
  lc = t.landcover
  row: dict[str, Any] = {"tile_index": t.tile_index, "grid_cell": t.grid_cell,
                         "tile_row": t.tile_row, "tile_col": t.tile_col, "tile_id": t.tile_id}
  for m, a in zip(contract_lib.MODALITIES, t.available):
    row[f"has_{m}"] = bool(a)
  hist = lc.hist if lc is not None else np.zeros(lc_lib.NUM_CLASSES, np.float32)
  row.update({k: float(v) for k, v in zip(lc_lib.HIST_COLUMNS, hist)})
  row["wc_nodata"] = 1.0 if lc is None else float(lc.nodata_frac)
  row["label"] = label
  row["water_only"] = water_only
  row["climate"] = "" if lc is None else lc.climate
  row["region"] = "" if lc is None else lc.region
  for m in contract_lib.MODALITIES:
    row[f"product_id_{m}"] = t.meta.get(f"product_id_{m}", "")
    row[f"offset_{m}"] = t.meta.get(f"offset_{m}", -1)
    row[f"offset_source_{m}"] = t.meta.get(f"offset_source_{m}", "")
    row[f"nodata_frac_{m}"] = t.meta.get(f"nodata_frac_{m}", 1.0)
  return row


class UnitResult:
  """What a unit produced besides its records: index rows, band statistics, report counts."""

  def __init__(self):
    self.rows: list[dict[str, Any]] = []
    self.stats = tiling.new_stats()
    self.counts: dict[str, int] = {"cells_read": 0, "tiles_written": 0, "cells_skipped": 0,
                                   "tiles_skipped": 0, "cells_realigned": 0}
    self.skipped_by_kind: dict[str, int] = {}
    self.errors: list[dict[str, Any]] = []
    self.offsets: dict[str, dict[str, int]] = {}

  def skip(self, err: BadInputError, what: str) -> None:
    self.counts[f"{what}s_skipped"] += 1
    self.skipped_by_kind[err.kind] = self.skipped_by_kind.get(err.kind, 0) + 1
    if len(self.errors) < MAX_REPORTED_ERRORS:
      self.errors.append({**err.to_record(), "skipped": what})
    logging.warning("skipping %s: %s", what, err)

  def add_tile(self, t: tiling.TileRecord) -> None:
    self.rows.append(index_row(t))
    self.counts["tiles_written"] += 1
    for m in ("s2_l1c", "s2_l2a"):
      if m in t.arrays:
        key = f"{t.meta[f'offset_source_{m}']}_{'yes' if t.meta[f'offset_{m}'] else 'no'}"
        d = self.offsets.setdefault(m, {})
        d[key] = d.get(key, 0) + 1

  def to_json(self) -> dict[str, Any]:
    return {"counts": self.counts, "skipped_by_kind": self.skipped_by_kind,
            "errors": self.errors, "offset_decisions": self.offsets,
            "stats": {m: s.to_dict() for m, s in self.stats.items()}}


@functools.lru_cache(maxsize=4)
def _landcover_provider(path: str | None, step: int):
  return lc_lib.open_landcover(path, step)


def iter_unit(job: UnitJob, result: UnitResult) -> Iterator[tiling.TileRecord]:
  """Tiles of one unit, in tile_index order; bad input raises or is skipped into `result`."""
  opts = job.options
  skip = opts.on_error == "skip"
  lc = _landcover_provider(opts.landcover, opts.landcover_step)
  for ordinal, _, refs in job.cells:
    try:
      cell = majortom.load_cell({r.modality: r for r in refs}, align=opts.align)
      result.counts["cells_read"] += 1
      result.counts["cells_realigned"] += any(md.realigned for md in cell.modalities.values())
      tiles = tiling.tile_cell(
          cell, tile_size=job.tile_size, cell_ordinal=ordinal, landcover=lc,
          stats=result.stats, offset_threshold=opts.offset_threshold,
          on_tile_error=(lambda e: result.skip(e, "tile")) if skip else None)
    except BadInputError as err:
      if not skip:
        raise
      result.skip(err, "cell")
      continue
    for t in tiles:
      result.add_tile(t)
      yield t


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


def plan_units(majortom_dir: str, opts: PrepareOptions, parts_dir: str,
               folders: dict[str, str] | None = None) -> tuple[list[UnitJob], dict[str, Any]]:
  """Join the modalities by grid cell and cut the sorted cell list into units."""
  folders = folders or majortom.find_modality_folders(majortom_dir)
  if not folders:
    raise BadInputError("no Core-S1RTC / Core-S2L1C / Core-S2L2A folder found",
                        file=majortom_dir, kind="missing_file")
  indexes = {m: majortom.MajorTomFolder(p, m) for m, p in folders.items()}
  cells = sorted(set().union(*[set(ix.refs) for ix in indexes.values()]))
  kept, not_required = [], 0
  for name in cells:
    refs = tuple(indexes[m].refs[name] for m in contract_lib.MODALITIES
                 if m in indexes and name in indexes[m].refs)
    if not set(opts.require) <= {r.modality for r in refs}:
      not_required += 1
      continue
    kept.append((name, refs))
  if opts.max_cells is not None:
    kept = kept[:opts.max_cells]
  cells_with_ordinals = [(i, name, refs) for i, (name, refs) in enumerate(kept)]
  k = opts.cells_per_shard
  jobs = [UnitJob(u, tuple(cells_with_ordinals[s:s + k]), opts.tile_size, opts, parts_dir)
          for u, s in enumerate(range(0, len(cells_with_ordinals), k))]
  plan = {"folders": folders, "cells_total": len(cells), "cells_kept": len(kept),
          "cells_missing_required": not_required,
          "metadata_rows_without_local_file": {m: ix.missing_files for m, ix in indexes.items()},
          "duplicate_products": {m: ix.duplicates for m, ix in indexes.items()},
          "products": {m: len(ix.refs) for m, ix in indexes.items()}}
  return jobs, plan


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


def _merge_units(jobs: Sequence[UnitJob]):
  import pandas as pd  # pylint: disable=g-import-not-at-top
  stats = tiling.new_stats()
  counts: dict[str, int] = {}
  kinds: dict[str, int] = {}
  offsets: dict[str, dict[str, int]] = {}
  errors: list[dict[str, Any]] = []
  frames, lengths = [], []
  for j in jobs:
    with open(j.stem + ".json", encoding="utf-8") as f:
      info = json.load(f)
    lengths.append(info["num_records"])
    for m, d in info["stats"].items():
      stats[m].merge_arrays(d["n"], d["mean"], d["m2"])
    for src, dst in ((info["counts"], counts), (info["skipped_by_kind"], kinds)):
      for k, v in src.items():
        dst[k] = dst.get(k, 0) + v
    for m, d in info["offset_decisions"].items():
      for k, v in d.items():
        offsets.setdefault(m, {})[k] = offsets.setdefault(m, {}).get(k, 0) + v
    errors.extend(info["errors"][:MAX_REPORTED_ERRORS - len(errors)])
    if info["num_records"]:
      frames.append(pd.read_parquet(j.stem + ".index.parquet"))
  index = (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame())
  if len(index):
    index = index.sort_values("tile_index", kind="stable").reset_index(drop=True)
  index.insert(0, "record", np.arange(len(index), dtype=np.int64))
  report = {"counts": counts, "skipped_by_kind": kinds, "offset_decisions": offsets,
            "errors": errors}
  return index, stats, report, lengths


def _contract(stats: dict[str, tiling.BandStats], opts: PrepareOptions, where: str):
  c = contract_lib.DEFAULT_CONTRACT
  if opts.stats == "default":
    return c
  for m, s in stats.items():
    if (s.n > 1).all():
      c = c.with_stats(m, s.mean, np.maximum(s.std, 1e-6),
                       f"computed by terrafm_jax.data.prepare over {int(s.n.min())}+ valid "
                       f"pixels per band of {where}")
  return c


def _write_extras(path: str, jobs: Sequence[UnitJob], opts: PrepareOptions,
                  plan: dict[str, Any]) -> None:
  index, stats, report, _ = _merge_units(jobs)
  index.to_parquet(os.path.join(path, "index.parquet"), index=False)
  _contract(stats, opts, plan["folders"]).to_json(os.path.join(path, "contract.json"))
  band_stats = {m: {"bands": list(contract_lib.DEFAULT_CONTRACT[m].bands), "n": s.n.tolist(),
                    "mean": s.mean.tolist(), "std": s.std.tolist()} for m, s in stats.items()}
  with open(os.path.join(path, "band_stats.json"), "w", encoding="utf-8") as f:
    json.dump(band_stats, f, indent=2)
  with open(os.path.join(path, "report.json"), "w", encoding="utf-8") as f:
    json.dump({**report, "plan": plan}, f, indent=2)
  with open(os.path.join(path, "prepare.json"), "w", encoding="utf-8") as f:
    json.dump({"options": dataclasses.asdict(opts), "dataset": DATASET_NAME,
               "version": VERSION, "num_records": int(len(index))}, f, indent=2)


def _make_builder_classes():
  """Defined lazily so that importing this module does not import TFDS."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  @dataclasses.dataclass
  class MajorTomTilesConfig(tfds.core.BuilderConfig):
    tile_size: int = 534

  class MajorTomTiles(tfds.core.GeneratorBasedBuilder):
    """Major-TOM Core-S1RTC / S2L1C / S2L2A cut into co-registered tiles (see module doc)."""
    name = DATASET_NAME
    VERSION = tfds.core.Version(VERSION)
    BUILDER_CONFIGS = [MajorTomTilesConfig(name="tile534", tile_size=534)]
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download any subset of Major-TOM Core-S1RTC, Core-S2L1C, Core-S2L2A "
        "(huggingface.co/Major-TOM) into manual_dir, keeping the metadata.parquet + images/ layout.")

    # TFDS locates a builder's source folder (for checksum files, which a manual-download dataset
    # does not have) through `importlib_resources`, which TFDS does not install; skip it.
    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
      return None

    def __init__(self, *, options: PrepareOptions | None = None, parts_dir: str | None = None,
                 **kwargs):
      self._options = options or PrepareOptions()
      self._parts_dir = parts_dir
      self._jobs: list[UnitJob] | None = None
      self._plan: dict[str, Any] = {}
      super().__init__(**kwargs)

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self, description=__doc__, features=features(self.builder_config.tile_size),
          homepage="https://huggingface.co/Major-TOM", disable_shuffling=True)

    def _plan_jobs(self, manual_dir: str) -> list[UnitJob]:
      if self._jobs is None:
        parts = self._parts_dir or os.path.join(os.fspath(self.data_dir_root), "_parts",
                                                 self.builder_config.name)
        os.makedirs(parts, exist_ok=True)
        opts = dataclasses.replace(self._options, tile_size=self.builder_config.tile_size)
        self._jobs, self._plan = plan_units(os.fspath(manual_dir), opts, parts)
      return self._jobs

    def _split_generators(self, dl_manager):
      jobs = self._plan_jobs(dl_manager.manual_dir)
      if self._options.runner == "beam":
        beam = tfds.core.lazy_imports.apache_beam
        return {"train": beam.Create(jobs) | "units" >> beam.FlatMap(beam_unit_examples)}
      return {"train": self._generate_examples(jobs)}

    def _generate_examples(self, jobs):
      for job in jobs:
        yield from beam_unit_examples(job)

    def _download_and_prepare(self, dl_manager, download_config):
      jobs = self._plan_jobs(dl_manager.manual_dir)
      opts = dataclasses.replace(self._options, tile_size=self.builder_config.tile_size)
      if self._options.runner != "local":
        super()._download_and_prepare(dl_manager, download_config)
        _write_extras(os.fspath(self.data_path), jobs, opts, self._plan)
        return
      run_local(jobs, self._options.num_workers)
      _, _, _, lengths = _merge_units(jobs)
      template = self._get_filename_template(split_name="train")
      shards = [(j, n) for j, n in zip(jobs, lengths) if n]
      num_bytes = 0
      for i, (j, _) in enumerate(shards):
        dst = os.fspath(template.sharded_filepath(shard_index=i, num_shards=len(shards)))
        try:
          os.link(j.stem + ".array_record", dst)   # parts stay until the dataset is complete
        except OSError:
          shutil.copyfile(j.stem + ".array_record", dst)
        num_bytes += os.path.getsize(dst)
      split = tfds.core.SplitInfo(name="train", shard_lengths=[n for _, n in shards],
                                  num_bytes=num_bytes, filename_template=template)
      self.info.set_splits(tfds.core.SplitDict([split]))
      _write_extras(os.fspath(self.data_path), jobs, opts, self._plan)

  return MajorTomTilesConfig, MajorTomTiles


@functools.lru_cache(maxsize=1)
def builder_classes():
  return _make_builder_classes()


def __getattr__(name: str):
  if name in ("MajorTomTiles", "MajorTomTilesConfig"):
    config_cls, builder_cls = builder_classes()
    return builder_cls if name == "MajorTomTiles" else config_cls
  raise AttributeError(name)


def config_name(tile_size: int) -> str:
  return f"tile{tile_size}"


def dataset_dir(out_dir: str, tile_size: int) -> str:
  """The TFDS dataset directory that `prepare` writes under `out_dir`."""
  return os.path.join(out_dir, DATASET_NAME, config_name(tile_size), VERSION)


def prepare(majortom_dir: str, out_dir: str, options: PrepareOptions | None = None, *,
            beam_runner: Any = None, beam_options: Any = None) -> str:
  """Run the builder; returns the dataset directory. Skipped when the dataset is complete."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  opts = options or PrepareOptions()
  config_cls, builder_cls = builder_classes()
  out = dataset_dir(out_dir, opts.tile_size)
  if os.path.exists(os.path.join(out, "dataset_info.json")) and os.path.exists(
      os.path.join(out, "index.parquet")):
    return out
  parts = os.path.join(out_dir, "_parts", config_name(opts.tile_size))
  name = config_name(opts.tile_size)
  # a config listed in BUILDER_CONFIGS must be passed by name, any other as an object
  known = any(c.name == name for c in builder_cls.BUILDER_CONFIGS)
  builder = builder_cls(
      options=opts, parts_dir=parts, data_dir=out_dir, file_format="array_record",
      config=name if known else config_cls(name=name, tile_size=opts.tile_size))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=majortom_dir, beam_runner=beam_runner, beam_options=beam_options))
  if not os.path.exists(os.path.join(out, "index.parquet")):
    raise RuntimeError(f"prepare finished without an index in {out}")
  shutil.rmtree(parts, ignore_errors=True)
  return out


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog="python -m terrafm_jax.data.prepare",
                              description=__doc__.split("\n\n")[0])
  p.add_argument("--majortom_dir", required=True,
                 help="folder holding Core-S1RTC / Core-S2L1C / Core-S2L2A (any subset)")
  p.add_argument("--out_dir", required=True)
  p.add_argument("--landcover", default=None,
                 help="WorldCover histogram table (parquet/csv) or folder of WorldCover GeoTIFFs")
  p.add_argument("--tile_size", type=int, default=534)
  p.add_argument("--cells_per_shard", type=int, default=16)
  p.add_argument("--workers", type=int, default=0, help="0: all CPU cores")
  p.add_argument("--on_error", choices=("error", "skip"), default="error")
  p.add_argument("--align", choices=("reproject", "error"), default="reproject")
  p.add_argument("--require", default="", help="comma-separated modalities a cell must have")
  p.add_argument("--max_cells", type=int, default=None)
  p.add_argument("--stats", choices=("computed", "default"), default="computed")
  p.add_argument("--compression", default="zstd:1")
  p.add_argument("--runner", choices=("local", "beam", "generator"), default="local")
  p.add_argument("--beam_pipeline_options", default="",
                 help="Beam options, e.g. '--runner=DirectRunner,--direct_num_workers=8'")
  a = p.parse_args(argv)
  opts = PrepareOptions(
      tile_size=a.tile_size, cells_per_shard=a.cells_per_shard, landcover=a.landcover,
      on_error=a.on_error, align=a.align,
      require=tuple(m for m in a.require.split(",") if m), max_cells=a.max_cells,
      stats=a.stats, num_workers=a.workers, compression=a.compression, runner=a.runner)
  beam_options = None
  if a.runner == "beam":
    from apache_beam.options.pipeline_options import PipelineOptions  # pylint: disable=g-import-not-at-top
    beam_options = PipelineOptions([o for o in a.beam_pipeline_options.split(",") if o])
  logging.basicConfig(level=logging.INFO)
  out = prepare(a.majortom_dir, a.out_dir, opts, beam_options=beam_options)
  with open(os.path.join(out, "report.json"), encoding="utf-8") as f:
    report = json.load(f)
  print(json.dumps({"dataset_dir": out, "counts": report["counts"],
                    "skipped_by_kind": report["skipped_by_kind"]}, indent=2))
  return 0


if __name__ == "__main__":
  sys.exit(main())
