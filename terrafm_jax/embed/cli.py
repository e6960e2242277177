"""Command line of the embedding step (absl + ml_collections, as every entry point).

  terrafm-embed --config.majortom_dir=/data/majortom --config.weights=terrafm_b.pth \
      --config.modality=s2_l2a --config.out=/data/Core-S2L2A-TerraFM \
      [--config.fragment_size=224 --config.fragment_stride=224] [--config.batch_size=64] \
      [--config.cells_per_part=40 | --config.rows_per_part=1000] [--config.on_error=skip] \
      [--config.runner=local|beam] [--config.process_index=0 --config.process_count=8 | \
       --config.multihost]
(`python -m terrafm_jax.embed` is the same; the fields and defaults: embed/config.py.)

Prints a JSON summary (this run's parts / rows, the merged counts of the output folder). Exit code 2
for a bad flag, 1 for bad data, weights or an output folder made with other options (one line that
names the file / row group).
"""
from __future__ import annotations

import json
import os
import sys

from absl import app, logging
from ml_collections import config_flags

from terrafm_jax import console
from terrafm_jax import platforms

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(os.path.abspath(__file__)), "config.py"),
    "embed config (default: the built-in schema, terrafm_jax/embed/config.py); override fields "
    "with --config.<field>=value", lock_config=True)


def options_from_config(cfg):
  from terrafm_jax import config_schema  # pylint: disable=g-import-not-at-top
  from terrafm_jax.embed.config import REQUIRED  # pylint: disable=g-import-not-at-top
  from terrafm_jax.embed.options import EmbedOptions  # pylint: disable=g-import-not-at-top
  try:
    return config_schema.build(EmbedOptions, cfg, required=REQUIRED)
  except ValueError as e:
    raise app.UsageError(str(e), exitcode=2) from None


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}", exitcode=2)
  platforms.quiet_libtpu_without_tpu()
  opts = options_from_config(_CONFIG.value)
  # Console only (progress bar, warnings, the summary): a failed plan must leave no output folder,
  # so no log file is put there; TERRAFM_VERBOSE=1 shows the INFO log.
  console.configure(None, "embed")
  if _CONFIG.value.multihost:
    import jax  # pylint: disable=g-import-not-at-top
    jax.distributed.initialize()
  from terrafm_jax.data.errors import BadInputError  # pylint: disable=g-import-not-at-top
  from terrafm_jax.embed.runner import embed  # pylint: disable=g-import-not-at-top
  try:
    report = embed(opts)
  except (BadInputError, ValueError, FileNotFoundError) as e:
    logging.info("embedding stopped", exc_info=True)  # the traceback: log file only
    console.error(f"{type(e).__name__}: {e}")
    sys.exit(1)
  keys = ("this_run", "parts_finished", "parts_total", "cells_total", "counts", "skipped_by_kind",
          "fragments_dropped_by_kind", "modality_unavailable_by_kind")
  print(json.dumps({"out": opts.out, **{k: report.get(k) for k in keys}}, indent=2), flush=True)


def run() -> None:
  """Console entry point."""
  app.run(main)
