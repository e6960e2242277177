"""Which cells a run embeds, how they are cut into parts, and which parts this process writes.

Cells: the sorted grid cells that have the requested modality (fused: any of the three), found
with the prepare stage's index (`majortom.find_modality_folders`, `MajorTomFolder`: metadata.parquet
or a scan of images/). Cell ordinal i = position in that sorted list (after `max_cells`).

Parts: consecutive runs of `cells_per_part` cells; part k holds cells [k*K, min((k+1)*K, N)) and is
named `part_{first:05d}-{last:05d}.parquet` with the first and last (inclusive) cell ordinals, so a
name says which cells it covers whatever happened to them (a skipped cell has no rows). Because
part boundaries do not depend on the process count, process p of P writes parts k with
k % P == p, and a resume may use another number of processes (or Beam) than the first run.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Sequence

from terrafm_jax.data import majortom
from terrafm_jax.data.errors import BadInputError
from terrafm_jax.data.majortom import ProductRef


@dataclasses.dataclass(frozen=True)
class CellJob:
  ordinal: int
  grid_cell: str
  refs: tuple[ProductRef, ...]    # one per modality present, contract order (s1, s2_l1c, s2_l2a)


@dataclasses.dataclass(frozen=True)
class PartJob:
  index: int
  first: int
  last: int
  cells: tuple[CellJob, ...]

  @property
  def name(self) -> str:
    return f"part_{self.first:05d}-{self.last:05d}.parquet"


def _no_data_error(root: str, why: str) -> BadInputError:
  return BadInputError(
      f"no Major-TOM parquet found: {why}. Expected Core-S1RTC / Core-S2L1C / Core-S2L2A "
      "folders (or one of them) holding metadata.parquet and images/part_*.parquet",
      file=root, kind="missing_file")


def plan_cells(majortom_dir: str, modalities: Sequence[str],
               max_cells: int | None = None) -> tuple[list[CellJob], dict]:
  """(cells in ordinal order, plan summary); one clear BadInputError when there is nothing."""
  if not os.path.isdir(majortom_dir):
    raise _no_data_error(majortom_dir, "the folder does not exist")
  folders = majortom.find_modality_folders(majortom_dir)
  if not folders:
    raise _no_data_error(majortom_dir, "no Core-* folder in it")
  wanted = {m: p for m, p in folders.items() if m in modalities}
  if not wanted:
    raise _no_data_error(majortom_dir, f"it has {sorted(folders)} but not "
                                       f"{' / '.join(modalities)}")
  indexes = {m: majortom.MajorTomFolder(p, m) for m, p in wanted.items()}
  names = sorted(set().union(*[set(ix.refs) for ix in indexes.values()]))
  if not names:
    raise _no_data_error(majortom_dir, "the Core-* folders hold no product with a local image "
                                       "parquet (metadata rows without images: "
                                       f"{ {m: ix.missing_files for m, ix in indexes.items()} })")
  if max_cells is not None:
    names = names[:max_cells]
  order = ("s1", "s2_l1c", "s2_l2a")
  cells = [CellJob(i, n, tuple(indexes[m].refs[n] for m in order
                               if m in indexes and n in indexes[m].refs))
           for i, n in enumerate(names)]
  summary = {"folders": {m: os.path.abspath(p) for m, p in wanted.items()}, "cells": len(cells),
             "products": {m: len(ix.refs) for m, ix in indexes.items()},
             "metadata_rows_without_local_file": {m: ix.missing_files for m, ix in indexes.items()},
             "duplicate_products": {m: ix.duplicates for m, ix in indexes.items()}}
  return cells, summary


def cells_digest(cells: Sequence[CellJob]) -> str:
  """Hash of the cell list (names and products): a resume must see the same list."""
  h = hashlib.sha256()
  for c in cells:
    h.update(c.grid_cell.encode())
    for r in c.refs:
      h.update(f"|{r.modality}:{r.product_id}".encode())
    h.update(b"\n")
  return h.hexdigest()[:16]


def plan_parts(cells: Sequence[CellJob], cells_per_part: int) -> list[PartJob]:
  k = cells_per_part
  return [PartJob(i, cells[s].ordinal, cells[min(s + k, len(cells)) - 1].ordinal,
                  tuple(cells[s:s + k]))
          for i, s in enumerate(range(0, len(cells), k))]


def process_parts(parts: Sequence[PartJob], index: int, count: int) -> list[PartJob]:
  """Round-robin slice of the parts for process `index` of `count`."""
  return [p for p in parts if p.index % count == index]
