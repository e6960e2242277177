"""One part: its cells read (ahead, in a background thread), fragmented, embedded, counted.

Bad input follows prepare's rule (data/majortom/__init__.py): a hard input error of a cell (corrupt parquet or
band bytes, not a GeoTIFF, wrong CRS / geotransform / size, modalities that cannot be aligned, a
cell smaller than the fragment) is a `BadInputError` naming file / row group / column; it stops the
run with on_error="error" and is skipped and counted (per kind, first errors listed) with "skip".
Per-fragment defects (a modality with no valid pixel or NaN in the window) are counted, never
raised (inputs.py).
"""
from __future__ import annotations

import collections
import concurrent.futures
import logging
from typing import Any, Callable, Iterable, Iterator

from terrafm_jax.data import grid as grid_lib
from terrafm_jax.data import majortom
from terrafm_jax.data.errors import BadInputError
from terrafm_jax.embed import fragments as fragments_lib
from terrafm_jax.embed import inputs as inputs_lib
from terrafm_jax.embed import schema
from terrafm_jax.embed.batches import Encoder, FragmentBatcher
from terrafm_jax.embed.options import MAX_REPORTED_ERRORS, EmbedOptions
from terrafm_jax.embed.plan import CellJob, PartJob

Loaded = tuple[CellJob, "majortom.CellData | BadInputError"]


def load_cells(cells: Iterable[CellJob], align: str, prefetch: int) -> Iterator[Loaded]:
  """(cell, CellData or its BadInputError) in order, read `prefetch` cells ahead.

  One reader thread: decoding (GDAL, GIL released) overlaps the encoder, and the cached parquet
  handles of the reader are never used by two threads at once. Other exceptions propagate."""
  def load(job: CellJob) -> Loaded:
    try:
      return job, majortom.load_cell({r.modality: r for r in job.refs}, align=align)
    except BadInputError as err:
      return job, err

  if prefetch <= 0:
    yield from map(load, cells)
    return
  it = iter(cells)
  ex = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="embed-reader")
  queue: collections.deque = collections.deque()
  try:
    for job in it:
      queue.append(ex.submit(load, job))
      if len(queue) > prefetch:
        yield queue.popleft().result()
    while queue:
      yield queue.popleft().result()
  finally:
    ex.shutdown(wait=True, cancel_futures=True)


class PartResult:
  """What one part counts (merged into _report.json)."""

  def __init__(self):
    self.counts = collections.Counter(cells=0, cells_read=0, cells_skipped=0, rows=0,
                                      fragments_dropped=0)
    self.skipped_by_kind: dict[str, int] = {}
    self.fragments_dropped_by_kind: dict[str, int] = {}
    self.modality_unavailable_by_kind: dict[str, dict[str, int]] = {}
    self.offset_decisions: dict[str, dict[str, int]] = {}
    self.errors: list[dict[str, Any]] = []

  def skip(self, err: BadInputError) -> None:
    self.counts["cells_skipped"] += 1
    self.skipped_by_kind[err.kind] = self.skipped_by_kind.get(err.kind, 0) + 1
    if len(self.errors) < MAX_REPORTED_ERRORS:
      self.errors.append({**err.to_record(), "skipped": "cell"})
    logging.warning("skipping cell: %s", err)

  def unavailable(self, kind: str, modality: str) -> None:
    d = self.modality_unavailable_by_kind.setdefault(kind, {})
    d[modality] = d.get(modality, 0) + 1

  def drop(self, kind: str) -> None:
    self.counts["fragments_dropped"] += 1
    self.fragments_dropped_by_kind[kind] = self.fragments_dropped_by_kind.get(kind, 0) + 1

  def offset(self, modality: str, offset: int, source: str) -> None:
    if offset < 0:
      return
    key = f"{source}_{'offset' if offset else 'no_offset'}"
    d = self.offset_decisions.setdefault(modality, {})
    d[key] = d.get(key, 0) + 1

  def to_json(self) -> dict[str, Any]:
    return {"counts": dict(self.counts), "skipped_by_kind": self.skipped_by_kind,
            "fragments_dropped_by_kind": self.fragments_dropped_by_kind,
            "modality_unavailable_by_kind": self.modality_unavailable_by_kind,
            "offset_decisions": self.offset_decisions, "errors": self.errors}


def _cell_fragments(job: CellJob, cell, opts: EmbedOptions) -> list[fragments_lib.Fragment]:
  frags = fragments_lib.fragment_grid(cell.shape, opts.fragment_size, opts.fragment_stride,
                                      opts.cover_border)
  if not frags:
    ref = job.refs[-1]
    raise BadInputError(f"cell of {cell.shape[0]}x{cell.shape[1]} px is smaller than the "
                        f"fragment size {opts.fragment_size}", file=ref.file,
                        row_group=ref.row_group, grid_cell=job.grid_cell, kind="wrong_size")
  return frags


def _add_cell(job: CellJob, cell, opts: EmbedOptions, contract, batcher: FragmentBatcher,
              result: PartResult) -> None:
  """Every fragment of one cell into the batcher; a BadInputError leaves nothing behind."""
  frags = _cell_fragments(job, cell, opts)
  inputs = inputs_lib.cell_inputs(cell, opts.modalities, contract, opts.offset_threshold)
  fp = fragments_lib.footprints(frags, cell.transform, cell.crs)
  row_u, col_r = grid_lib.parse_cell(job.grid_cell)
  for mi in inputs.values():
    result.offset(mi.modality, mi.offset, mi.offset_source)
  for k, fr in enumerate(frags):
    mods, defects = inputs_lib.available(inputs, fr)
    if opts.modality == "fused":
      for m, kind in defects.items():
        result.unavailable(kind, m)
    if not mods:
      result.drop(next(iter(defects.values())))
      continue
    product_id = "|".join(inputs[m].product_id for m in mods)
    timestamp = "|".join(inputs[m].timestamp for m in mods)
    meta = {"unique_id": fragments_lib.unique_id(job.grid_cell, product_id, timestamp, fr),
            "timestamp": timestamp, "product_id": product_id, "grid_cell": job.grid_cell,
            "grid_row_u": row_u, "grid_col_r": col_r, "geometry": fp.wgs84_wkb[k],
            "centre_lat": float(fp.centre_lat[k]), "centre_lon": float(fp.centre_lon[k]),
            "utm_footprint": fp.utm_wkt[k], "utm_crs": cell.crs, "pixel_bbox": fr.pixel_bbox}
    batcher.add(mods, (job.ordinal, fr.index), meta,
                {m: inputs[m].x[fr.rows, fr.cols] for m in mods})


def embed_part(part: PartJob, loaded: Iterator[Loaded], encoder: Encoder, opts: EmbedOptions,
               info: dict[str, Any], on_cell: Callable[[], None] | None = None,
               on_batch: Callable[[int], None] | None = None):
  """(arrow table of the part's rows in (cell, fragment) order, PartResult) for `part`.

  Consumes exactly len(part.cells) items of `loaded`, which must yield the part's cells in order.
  """
  result = PartResult()
  batcher = FragmentBatcher(encoder, on_batch)
  contract = encoder.model.contract
  for want in part.cells:
    job, cell = next(loaded)
    if job.ordinal != want.ordinal:
      raise RuntimeError(f"cell stream out of order: got cell {job.ordinal} ({job.grid_cell}), "
                         f"expected {want.ordinal} ({want.grid_cell}) in {part.name}")
    result.counts["cells"] += 1
    try:
      if isinstance(cell, BadInputError):
        raise cell
      _add_cell(job, cell, opts, contract, batcher, result)
      result.counts["cells_read"] += 1
    except BadInputError as err:
      if opts.on_error == "error":
        raise
      result.skip(err)
    finally:
      if on_cell is not None:
        on_cell()
  batcher.flush()
  cols = schema.empty_columns()
  for _, meta, emb in batcher.take_sorted():
    for c, v in meta.items():
      cols[c].append(v)
    cols["embedding"].append(emb)
  result.counts["rows"] = len(cols["unique_id"])
  return schema.to_table(cols, {**info, "part": part.name, "first_cell": part.first,
                                "last_cell": part.last}), result
