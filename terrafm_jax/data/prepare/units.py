"""Planning the prepare work units (cells joined across modalities) and running one unit's cells."""
from __future__ import annotations

import functools
from typing import Any, Iterator

from terrafm_jax.data import contract as contract_lib
from terrafm_jax.data import landcover as lc_lib
from terrafm_jax.data import majortom
from terrafm_jax.data import tiling
from terrafm_jax.data.errors import BadInputError
from terrafm_jax.data.prepare.options import PrepareOptions, UnitJob
from terrafm_jax.data.prepare.records import UnitResult


@functools.lru_cache(maxsize=4)
def _landcover_provider(path: str | None, step: int):
  return lc_lib.open_landcover(path, step)


def iter_unit(job: UnitJob, result: UnitResult) -> Iterator[tiling.TileRecord]:
  """Tiles of one unit, in tile_index order, counted into `result`.

  A hard input error of a cell raises (skipped into `result` with on_error="skip"); a per-modality
  defect of a tile marks that modality unavailable; a tile left without any (required) modality is
  dropped and counted, in both modes (rule in data/majortom/__init__.py).
  """
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
          on_tile_error=lambda e: result.skip(e, "tile"),
          on_unavailable=result.modality_unavailable, require=opts.require)
    except BadInputError as err:
      if not skip:
        raise
      result.skip(err, "cell")
      continue
    for t in tiles:
      result.add_tile(t)
      yield t


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
