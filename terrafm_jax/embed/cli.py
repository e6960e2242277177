"""Command line of the embedding step (absl flags, as the trainer and the evaluation harness).

  python -m terrafm_jax.embed --majortom_dir=/data/majortom --weights=terrafm_b.pth \
      --modality=s2_l2a --out=/data/Core-S2L2A-TerraFM [--fragment_size=224 --fragment_stride=224] \
      [--batch_size=64] [--cells_per_part=40 | --rows_per_part=1000] [--on_error=skip] \
      [--runner=local|beam] [--process_index=0 --process_count=8 | --multihost]

Prints a JSON summary (this run's parts / rows, the merged counts of the output folder). Exit code 2
for a bad flag, 1 for bad data, weights or an output folder made with other options (one line that
names the file / row group), 75 when --debug_stop_after_parts stopped it.
"""
from __future__ import annotations

import json
import sys

from absl import app, flags, logging

from terrafm_jax import platforms
from terrafm_jax.data import harmonize

_DIR = flags.DEFINE_string("majortom_dir", None, "folder holding Core-S1RTC / Core-S2L1C / "
                           "Core-S2L2A (any subset; metadata.parquet + images/part_*.parquet), or "
                           "one Core-* folder")
_WEIGHTS = flags.DEFINE_string("weights", None, "training workdir, released-layout .pth / "
                               ".safetensors, or random:<variant> (e.g. random:B/16)")
_MODALITY = flags.DEFINE_enum("modality", "s2_l2a", ["s2_l2a", "s1", "s2_l1c", "fused"],
                              "what to embed; fused = every modality a cell has, through the "
                              "fusion path (one row per fragment)")
_OUT = flags.DEFINE_string("out", None, "output folder of the parquet parts (resumed if it exists)")
_SIZE = flags.DEFINE_integer("fragment_size", 224, "fragment side in 10 m pixels")
_STRIDE = flags.DEFINE_integer("fragment_stride", 224, "distance between fragment corners; 211 "
                               "with size 224 reproduces the published 5x5 grid of a 1068 px cell")
_BORDER = flags.DEFINE_bool("cover_border", True, "add a fragment aligned to the far edge when "
                            "the stride leaves a strip uncovered (Major-TOM's border_shift)")
_INPUT = flags.DEFINE_integer("input_size", 0, "encoder input size (fragments are resized on the "
                              "device); 0: fragment size rounded up to the patch size")
_BATCH = flags.DEFINE_integer("batch_size", 32, "fragments per encoder call (rounded up to a "
                              "multiple of the local devices)")
_CPP = flags.DEFINE_integer("cells_per_part", 40, "cells per output part")
_RPP = flags.DEFINE_integer("rows_per_part", 0, "> 0: cells per part = this // fragments per "
                            "cell (overrides --cells_per_part)")
_ON_ERROR = flags.DEFINE_enum("on_error", "raise", ["raise", "skip", "error"],
                              "bad cell: stop with its error, or skip and count it")
_RUNNER = flags.DEFINE_enum("runner", "local", ["local", "beam"], "local loop or Apache Beam")
_BEAM = flags.DEFINE_string("beam_pipeline_options", "", "comma-separated Beam options, e.g. "
                            "--runner=DirectRunner,--direct_num_workers=4")
_MAX = flags.DEFINE_integer("max_cells", None, "embed only the first N cells (sorted)")
_ALIGN = flags.DEFINE_enum("align", "reproject", ["reproject", "error"], "fused: a modality on "
                           "another grid is reprojected, or is a bad cell")
_OFFSET = flags.DEFINE_float("offset_threshold", harmonize.DETECT_THRESHOLD,
                             "S2 data-driven +1000 offset threshold (N9999 products)")
_PIDX = flags.DEFINE_integer("process_index", -1, "this process (non-JAX launchers); -1: JAX's")
_PCOUNT = flags.DEFINE_integer("process_count", -1, "number of processes; -1: JAX's")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "call jax.distributed.initialize() first")
_PREFETCH = flags.DEFINE_integer("prefetch_cells", 2, "cells read ahead by the reader thread")
_SEED = flags.DEFINE_integer("seed", 0, "seed of random:<variant> weights")
_STEP = flags.DEFINE_integer("step", None, "workdir checkpoint step (default: latest)")
_PROGRESS = flags.DEFINE_bool("progress", True, "tqdm progress bar")
_DEBUG_STOP = flags.DEFINE_integer("debug_stop_after_parts", 0, "testing: after N parts, die "
                                   "half-way through writing the next one (exit code 75)")


def options_from_flags():
  from terrafm_jax.embed.options import EmbedOptions  # pylint: disable=g-import-not-at-top
  for name, flag in (("majortom_dir", _DIR), ("weights", _WEIGHTS), ("out", _OUT)):
    if not flag.value:
      raise app.UsageError(f"--{name} is required", exitcode=2)
  try:
    return EmbedOptions(
        majortom_dir=_DIR.value, out=_OUT.value, weights=_WEIGHTS.value, modality=_MODALITY.value,
        fragment_size=_SIZE.value, fragment_stride=_STRIDE.value, cover_border=_BORDER.value,
        input_size=_INPUT.value, batch_size=_BATCH.value, cells_per_part=_CPP.value,
        rows_per_part=_RPP.value, on_error=_ON_ERROR.value, runner=_RUNNER.value,
        beam_pipeline_options=_BEAM.value, max_cells=_MAX.value, align=_ALIGN.value,
        offset_threshold=_OFFSET.value, process_index=_PIDX.value, process_count=_PCOUNT.value,
        prefetch_cells=_PREFETCH.value, seed=_SEED.value, step=_STEP.value,
        progress=_PROGRESS.value, debug_stop_after_parts=_DEBUG_STOP.value)
  except ValueError as e:
    raise app.UsageError(str(e), exitcode=2) from None


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}", exitcode=2)
  platforms.quiet_libtpu_without_tpu()
  opts = options_from_flags()
  if _MULTIHOST.value:
    import jax  # pylint: disable=g-import-not-at-top
    jax.distributed.initialize()
  from terrafm_jax.data.errors import BadInputError  # pylint: disable=g-import-not-at-top
  from terrafm_jax.embed.runner import embed  # pylint: disable=g-import-not-at-top
  try:
    report = embed(opts)
  except (BadInputError, ValueError, FileNotFoundError) as e:
    logging.error("embedding stopped: %s", e)
    print(f"[terrafm] ERROR: {type(e).__name__}: {e}", file=sys.stderr)
    sys.exit(1)
  keys = ("this_run", "parts_finished", "parts_total", "cells_total", "counts", "skipped_by_kind",
          "fragments_dropped_by_kind", "modality_unavailable_by_kind")
  print(json.dumps({"out": opts.out, **{k: report.get(k) for k in keys}}, indent=2), flush=True)


def run() -> None:
  """Console entry point."""
  app.run(main)
