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
                   `nodata_frac_*`, `unavailable_*` (defect kind of a modality marked
                   unavailable in that tile, "" otherwise);
  `contract.json`  the input contract with statistics computed over the prepared tiles;
  `band_stats.json`, `prepare.json`, `report.json`: `counts` (cells read / skipped, tiles
                   written / skipped / degraded), `skipped_by_kind`, `modality_unavailable_by_kind`
                   ({kind: {modality: tiles}}), `offset_decisions`, `errors` (skipped cells /
                   tiles) and `unavailable` (modalities marked unavailable), the first 200 of
                   each, naming file / row group / column; `plan`.

Records: `s1` (T,T,2) float16 dB with NaN nodata, `s2_l1c` / `s2_l2a` (T,T,12) uint16 harmonised DN
(all zeros if absent or unavailable), `available` (3,) bool, `wc_hist` (11,) float32, `label` int32,
`tile_index` int64, `grid_cell` text.

Bad input (rule in majortom.py):
  * hard input errors (corrupt parquet or band bytes, missing band column, band that is not a
    single-band GeoTIFF, wrong CRS / geotransform / size, mismatched modalities) raise
    `BadInputError` naming file / row group / column; with `on_error="skip"` the cell is skipped
    and counted in `report.json`;
  * per-modality defects of a tile (all nodata, NaN in S1) mark that modality unavailable in that
    tile (`available` False, zeros) and are counted per kind and modality; a tile left with no
    modality, or without one in `require`, is dropped and counted. Both modes.

Public API: `prepare(majortom_dir, out_dir, options) -> dataset_dir`, `PrepareOptions`,
`MajorTomTiles`, `dataset_dir(out_dir, tile_size)`, `main(argv)`. One concern per module, all
re-exported here: prepare_options (options, work units), prepare_records (records, index rows,
report counts), prepare_units (planning, one unit's tiles), prepare_runners (local / Beam writers),
prepare_outputs (index and side files), prepare_builder (TFDS builder, `prepare`); CLI here.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Sequence

from terrafm_jax.data.prepare_builder import builder_classes, config_name, dataset_dir, prepare
from terrafm_jax.data.prepare_options import (DATASET_NAME, MAX_REPORTED_ERRORS, VERSION,
                                              WATER_ONLY_THRESHOLD, PrepareOptions, UnitJob)
from terrafm_jax.data.prepare_outputs import merge_units, write_extras
from terrafm_jax.data.prepare_records import UnitResult, features, index_row, to_example
from terrafm_jax.data.prepare_runners import (beam_unit_examples, run_local, unit_done,
                                              write_unit_local)
from terrafm_jax.data.prepare_units import iter_unit, plan_units

__all__ = [
    "DATASET_NAME", "MAX_REPORTED_ERRORS", "VERSION", "WATER_ONLY_THRESHOLD", "MajorTomTiles",
    "MajorTomTilesConfig", "PrepareOptions", "UnitJob", "UnitResult", "beam_unit_examples",
    "builder_classes", "config_name", "dataset_dir", "features", "index_row", "iter_unit", "main",
    "merge_units", "plan_units", "prepare", "run_local", "to_example", "unit_done",
    "write_extras", "write_unit_local",
]


def __getattr__(name: str):
  if name in ("MajorTomTiles", "MajorTomTilesConfig"):
    config_cls, builder_cls = builder_classes()
    return builder_cls if name == "MajorTomTiles" else config_cls
  raise AttributeError(name)


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
                    "skipped_by_kind": report["skipped_by_kind"],
                    "modality_unavailable_by_kind": report["modality_unavailable_by_kind"]},
                   indent=2))
  return 0


if __name__ == "__main__":
  sys.exit(main())
