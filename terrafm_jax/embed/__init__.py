"""Embedding Major-TOM cells at scale into the schema of the published Major-TOM embedding
expansions (Core-S2L1C-SSL4EO, Core-S1RTC-SSL4EO, Core-S2RGB-DINOv2 / -SigLIP).

    python -m terrafm_jax.embed --config.majortom_dir=/data/majortom \
        --config.weights=terrafm_b.pth --config.modality=s2_l2a|s1|s2_l1c|fused \
        --config.out=/data/Core-S2L2A-TerraFM

    from terrafm_jax.embed import EmbedOptions, embed
    report = embed(EmbedOptions(majortom_dir=..., out=..., weights="random:B/16"))
    gdf = geopandas.read_parquet(out)          # one row per fragment, EPSG:4326

Each cell is read with the prepare stage's reader (`data.majortom.load_cell`: bands decoded,
validated and put on the cell's 10 m grid), harmonised as prepare does (S2 offset removed, S1 in
dB), cut into fragments (fragments.py), normalised with the weights' input contract (inputs.py)
and encoded; the CLS token is the embedding (batches.py). Rows go into GeoParquet parts of
consecutive cells, written atomically and skipped on resume (plan.py, schema.py, writer.py);
processes take round-robin shares of the parts, or Beam distributes them (runner.py,
beam_runner.py). One concern per module:

  options      EmbedOptions, the content fingerprint a resume must match
  plan         cell list (sorted grid cells), parts of consecutive cells, process slices
  fragments    fragment grid over a cell, footprints (UTM, WGS84, centre), unique_id
  inputs       cell -> normalised encoder inputs, per-fragment availability
  batches      fixed-size batches through the jitted forward, per modality set
  part         one part: cells read ahead, skip-and-count of bad cells, rows -> table
  schema       arrow schema, GeoParquet "geo" metadata
  writer       atomic parts, manifest, sidecars, report
  runner       embed(): plan, weights, local loop with a progress bar, process slicing
  beam_runner  the same parts as a Beam pipeline
  cli          absl flags
"""
from __future__ import annotations

from terrafm_jax.embed.options import EmbedOptions
from terrafm_jax.embed.schema import COLUMNS, SCHEMA


def embed(opts, model=None):
  """See terrafm_jax.embed.runner.embed (imported lazily: it imports JAX)."""
  from terrafm_jax.embed.runner import embed as _embed  # pylint: disable=g-import-not-at-top
  return _embed(opts, model)


__all__ = ["COLUMNS", "SCHEMA", "EmbedOptions", "embed"]
