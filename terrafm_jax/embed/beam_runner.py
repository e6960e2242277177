"""--runner=beam: the missing parts as an Apache Beam pipeline (one element = one part).

    python -m terrafm_jax.embed ... --runner=beam \
        --beam_pipeline_options=--runner=DirectRunner,--direct_num_workers=4

Each worker loads the weights once (`DoFn.setup`), embeds a part with the same code as the local
runner (part.py) and writes it with the same atomic writer, so Beam and local outputs are the same
files and either can resume the other. Beam distributes the parts, so there is no process slicing.
Results are written as side effects (the part files); the pipeline's output is per-part counts.

The weights never travel inside the pipeline graph (a B/16 tree would be pickled into every
bundle): the DoFn carries the weights spec and their digest; a worker in the launching process
(DirectRunner) reuses the model already loaded there, any other loads the spec and checks the
digest.
"""
from __future__ import annotations

from typing import Any, Sequence
import weakref

from terrafm_jax.embed import writer as writer_lib
from terrafm_jax.embed.options import EmbedOptions
from terrafm_jax.embed.plan import PartJob

# params digest -> model loaded in this process (see the module doc).
_LOADED: "weakref.WeakValueDictionary[str, Any]" = weakref.WeakValueDictionary()


def loaded_model(params_digest: str):
  """The model with these parameters if this process loaded it (by reference when pickled)."""
  return _LOADED.get(params_digest)


def _make_dofn():
  import apache_beam as beam  # pylint: disable=g-import-not-at-top

  class EmbedPartFn(beam.DoFn):
    """Embeds and writes one part; yields (part name, rows, cells skipped)."""

    def __init__(self, opts: EmbedOptions, info: dict[str, Any]):
      super().__init__()
      self._opts, self._info = opts, info
      self._model = self._encoder = self._writer = None

    def setup(self):
      from terrafm_jax.embed.batches import Encoder  # pylint: disable=g-import-not-at-top
      want = self._info["fingerprint"]["params_digest"]
      self._model = loaded_model(want)
      if self._model is None:
        from terrafm_jax import api  # pylint: disable=g-import-not-at-top
        self._model = api.load(self._opts.weights, step=self._opts.step, seed=self._opts.seed)
      got = self._model.weights.provenance.get("params_digest")
      if got != want:
        raise ValueError(f"worker loaded weights {got}, the run planned with {want}")
      self._encoder = Encoder(self._model, self._opts.fragment_size, self._opts.input_size,
                              self._opts.batch_size)
      self._writer = writer_lib.PartWriter(self._opts.out)

    def process(self, part: PartJob):
      from terrafm_jax.embed import part as part_lib  # pylint: disable=g-import-not-at-top
      if self._writer.done(part):
        return
      self._writer.clean_stale([part])
      loaded = part_lib.load_cells(part.cells, self._opts.align, self._opts.prefetch_cells)
      try:
        table, result = part_lib.embed_part(part, loaded, self._encoder, self._opts, self._info)
      finally:
        loaded.close()
      self._writer.write(part, table, result.to_json())
      yield part.name, table.num_rows, result.counts["cells_skipped"]

  return EmbedPartFn


def run_beam(parts: Sequence[PartJob], opts: EmbedOptions, info: dict[str, Any],
             model=None) -> dict[str, int]:
  """Run the parts not yet written; workers in this process reuse `model` (module doc)."""
  import apache_beam as beam  # pylint: disable=g-import-not-at-top
  from apache_beam.options import pipeline_options  # pylint: disable=g-import-not-at-top
  writer = writer_lib.PartWriter(opts.out)
  todo = [p for p in parts if not writer.done(p)]
  if not todo:
    return {"parts_written": 0, "rows_written": 0, "cells_skipped": 0}
  flags = [f for f in opts.beam_pipeline_options.split(",") if f] or ["--runner=DirectRunner"]
  if model is not None:
    _LOADED[info["fingerprint"]["params_digest"]] = model
  dofn = _make_dofn()(opts, info)
  with beam.Pipeline(options=pipeline_options.PipelineOptions(flags)) as pipeline:
    _ = (pipeline
         | "parts" >> beam.Create(todo)
         | "spread" >> beam.Reshuffle()
         | "embed" >> beam.ParDo(dofn))
  done = writer_lib.merge_report(writer.out, todo)
  return {"parts_written": done["parts_finished"], "rows_written": done["counts"].get("rows", 0),
          "cells_skipped": done["counts"].get("cells_skipped", 0)}
