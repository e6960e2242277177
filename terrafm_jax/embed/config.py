"""The config of `python -m terrafm_jax.embed` (its default `--config`).

Every field of `EmbedOptions` (options.py, where the defaults and the checks are written), plus
`multihost`, overridden as `--config.<field>=value`:

  majortom_dir   folder holding Core-S1RTC / Core-S2L1C / Core-S2L2A (any subset), or one Core-*
  out            output folder of the parquet parts (resumed if it exists)
  weights        training workdir, released-layout .pth / .safetensors, or random:<variant>
  modality       s2_l2a | s1 | s2_l1c | fused (every modality a cell has, through the fusion path)
  fragment_size / fragment_stride   in 10 m pixels; stride 211 with size 224 gives the published
                 5 x 5 grid of a 1068 px cell; cover_border adds a fragment aligned to the far edge
  input_size     encoder input (0: the fragment size rounded up to the patch size)
  batch_size, cells_per_part | rows_per_part, prefetch_cells, progress
  on_error       error | skip (a bad cell stops the run, or is skipped and counted)
  runner         local | beam (beam_pipeline_options: comma-separated Beam flags)
  process_index / process_count   for launchers without JAX's multi-process (-1: JAX's)
  multihost      call jax.distributed.initialize() first
"""
from terrafm_jax import config_schema
from terrafm_jax.embed.options import EmbedOptions

REQUIRED = ("majortom_dir", "out", "weights")


def get_config(arg: str | None = None):
  if arg:
    raise ValueError(f"the embed config has no variant {arg!r}")
  return config_schema.schema(EmbedOptions, multihost=False)
