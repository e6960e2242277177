"""The embedding run: plan the cells, load the weights, write this process' missing parts.

    report = embed(EmbedOptions(majortom_dir=..., out=..., weights="random:B/16"))

Streaming: cells are read one part at a time (a background thread reads `prefetch_cells` ahead),
fragments go to the encoder in fixed-size batches, and each part is written as soon as its cells
are done; memory holds a few cells and one part's rows, never the run.

Several hosts: each process takes its round-robin share of the parts (plan.py): process index and
count from --process_index / --process_count (any launcher), else jax.process_index() /
jax.process_count() (after jax.distributed.initialize(), as training does). Every process checks
or writes the same manifest and refreshes _report.json from the parts finished so far.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

from terrafm_jax.data import majortom
from terrafm_jax.data.errors import BadInputError
from terrafm_jax.embed import fragments as fragments_lib
from terrafm_jax.embed import plan as plan_lib
from terrafm_jax.embed import writer as writer_lib
from terrafm_jax.embed.options import EmbedOptions, content_fingerprint

_PROBE_CELLS = 8


def process_slot(opts: EmbedOptions) -> tuple[int, int]:
  if opts.process_count > 0:
    return opts.process_index, opts.process_count
  import jax  # pylint: disable=g-import-not-at-top
  return jax.process_index(), jax.process_count()


def resolve_cells_per_part(opts: EmbedOptions, cells) -> int:
  """--cells_per_part, or with --rows_per_part: rows_per_part // fragments of one cell, the cell
  size read from the first loadable cell (Major-TOM cells all have one size)."""
  if not opts.rows_per_part:
    return opts.cells_per_part
  for job in cells[:_PROBE_CELLS]:
    try:
      cell = majortom.load_cell({r.modality: r for r in job.refs}, align=opts.align)
    except BadInputError:
      continue
    n = len(fragments_lib.fragment_grid(cell.shape, opts.fragment_size, opts.fragment_stride,
                                        opts.cover_border))
    return max(1, opts.rows_per_part // max(n, 1))
  logging.warning("none of the first %d cells could be read to size --rows_per_part; using "
                  "--cells_per_part=%d", _PROBE_CELLS, opts.cells_per_part)
  return opts.cells_per_part


def _run_local(parts, opts: EmbedOptions, encoder, writer, info) -> dict[str, int]:
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
  from terrafm_jax.embed.part import embed_part, load_cells  # pylint: disable=g-import-not-at-top
  todo = [p for p in parts if not writer.done(p)]
  stale = writer.clean_stale(todo)
  if stale:
    logging.info("removed %d half-written part(s) of an interrupted run", stale)
  total = sum(len(p.cells) for p in parts)
  bar = tqdm(total=total, initial=total - sum(len(p.cells) for p in todo), unit="cell",
             desc=f"embed {opts.modality}", disable=not opts.progress)
  stats = {"parts_written": 0, "rows_written": 0, "cells_skipped": 0}
  frags = [0]
  t0 = time.perf_counter()

  def on_batch(n: int) -> None:
    frags[0] += n
    bar.set_postfix(fragments=frags[0],
                    frag_per_s=f"{frags[0] / max(time.perf_counter() - t0, 1e-9):.1f}",
                    refresh=False)

  loaded = load_cells((c for p in todo for c in p.cells), opts.align, opts.prefetch_cells)
  try:
    for p in todo:
      table, result = embed_part(p, loaded, encoder, opts, info, on_cell=lambda: bar.update(1),
                                 on_batch=on_batch)
      writer.write(p, table, result.to_json())
      stats["parts_written"] += 1
      stats["rows_written"] += table.num_rows
      stats["cells_skipped"] += result.counts["cells_skipped"]
  finally:
    loaded.close()
    bar.close()
  return stats


def embed(opts: EmbedOptions, model=None) -> dict[str, Any]:
  """Run (or resume) the embedding of `opts.majortom_dir` into `opts.out`; returns the report.

  `model`: an already loaded `terrafm_jax.api.TerraFM` (else `api.load(opts.weights)`).
  The cells are planned before JAX is imported, so a folder without data fails at once."""
  cells, plan_summary = plan_lib.plan_cells(opts.majortom_dir, opts.modalities, opts.max_cells)
  from terrafm_jax.embed.batches import Encoder  # pylint: disable=g-import-not-at-top
  if model is None:
    from terrafm_jax import api  # pylint: disable=g-import-not-at-top
    model = api.load(opts.weights, step=opts.step, seed=opts.seed)
  encoder = Encoder(model, opts.fragment_size, opts.input_size, opts.batch_size)
  k = resolve_cells_per_part(opts, cells)
  parts = plan_lib.plan_parts(cells, k)
  prov = dict(model.weights.provenance)
  fp = content_fingerprint(opts, input_size=encoder.input_size, cells_per_part=k,
                           cells_digest=plan_lib.cells_digest(cells), provenance=prov)
  writer = writer_lib.PartWriter(opts.out)
  writer.check_manifest(fp, {"weights": prov, "plan": plan_summary, "num_parts": len(parts),
                             "options": dataclasses.asdict(opts)})
  info = {"fingerprint": fp, "weights": prov, "embedding": "cls", "embedding_dim": encoder.dim,
          "modality": opts.modality, "fragment_size": opts.fragment_size,
          "fragment_stride": opts.fragment_stride, "cover_border": opts.cover_border,
          "input_size": encoder.input_size}
  if opts.runner == "beam":
    from terrafm_jax.embed import beam_runner  # pylint: disable=g-import-not-at-top
    stats = beam_runner.run_beam(parts, opts, info, model)
    slot = (0, 1)
  else:
    slot = process_slot(opts)
    mine = plan_lib.process_parts(parts, *slot)
    logging.info("process %d of %d: %d of %d parts (%d cells)", slot[0], slot[1], len(mine),
                 len(parts), sum(len(p.cells) for p in mine))
    stats = _run_local(mine, opts, encoder, writer, info)
  report = writer_lib.merge_report(writer.out, parts)
  report.update(parts_total=len(parts), cells_total=len(cells), cells_per_part=k,
                fingerprint=fp, plan=plan_summary)
  writer_lib.write_report(writer.out, report)
  return {**report, "this_run": {**stats, "process": list(slot)}}
