"""Prepare step: Major-TOM folders (+ WorldCover) -> ArrayRecord training shards + tile index.

    terrafm-prepare --config.majortom_dir=/data/majortom --config.out_dir=/data/prepared \
        [--config.landcover=/data/worldcover.parquet | --config.landcover=/data/worldcover_tifs/] \
        [--config.tile_size=534] [--config.cells_per_shard=16] [--config.num_workers=8] \
        [--config.on_error=skip] [--config.require="('s1','s2_l1c','s2_l2a')"] \
        [--config.runner=local|beam|generator]
(`python -m terrafm_jax.data.prepare` is the same; the fields and defaults: prepare/config.py.)

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

Bad input (rule in data/majortom/__init__.py):
  * hard input errors (corrupt parquet or band bytes, missing band column, band that is not a
    single-band GeoTIFF, wrong CRS / geotransform / size, mismatched modalities) raise
    `BadInputError` naming file / row group / column; with `on_error="skip"` the cell is skipped
    and counted in `report.json`;
  * per-modality defects of a tile (all nodata, NaN in S1) mark that modality unavailable in that
    tile (`available` False, zeros) and are counted per kind and modality; a tile left with no
    modality, or without one in `require`, is dropped and counted. Both modes.

Public API: `prepare(majortom_dir, out_dir, options) -> dataset_dir`, `PrepareOptions`,
`MajorTomTiles`, `dataset_dir(out_dir, tile_size)`. One concern per module, all re-exported
here: options (options, work units), records (records, index rows, report counts),
units (planning, one unit's tiles), runners (local / Beam writers), outputs (index and side
files), builder (TFDS builder, `prepare`); the command line is cli.py (config.py its schema).
"""
from __future__ import annotations


from terrafm_jax.data.prepare.builder import builder_classes, config_name, dataset_dir, prepare
from terrafm_jax.data.prepare.options import (DATASET_NAME, MAX_REPORTED_ERRORS, VERSION,
                                              WATER_ONLY_THRESHOLD, PrepareOptions, UnitJob)
from terrafm_jax.data.prepare.outputs import merge_units, write_extras
from terrafm_jax.data.prepare.records import UnitResult, features, index_row, to_example
from terrafm_jax.data.prepare.runners import (beam_unit_examples, run_local, unit_done,
                                              write_unit_local)
from terrafm_jax.data.prepare.units import iter_unit, plan_units

__all__ = [
    "DATASET_NAME", "MAX_REPORTED_ERRORS", "VERSION", "WATER_ONLY_THRESHOLD", "MajorTomTiles",
    "MajorTomTilesConfig", "PrepareOptions", "UnitJob", "UnitResult", "beam_unit_examples",
    "builder_classes", "config_name", "dataset_dir", "features", "index_row", "iter_unit",
    "merge_units", "plan_units", "prepare", "run_local", "to_example", "unit_done",
    "write_extras", "write_unit_local",
]


def __getattr__(name: str):
  if name in ("MajorTomTiles", "MajorTomTilesConfig"):
    config_cls, builder_cls = builder_classes()
    return builder_cls if name == "MajorTomTiles" else config_cls
  raise AttributeError(name)
