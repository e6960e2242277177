"""Command line of the prepare step (absl + ml_collections, as every entry point).

  terrafm-prepare --config.majortom_dir=/data/majortom --config.out_dir=/data/prepared \
      [--config.on_error=skip] [--config.num_workers=8] [--config.runner=beam \
      --config.beam_pipeline_options=--runner=DirectRunner]
  python -m terrafm_jax.data.prepare ...   (the same)

The fields and their defaults: prepare/config.py (from PrepareOptions). Prints the dataset folder
and the report's counts as JSON. Exit code 1 for bad input (one line naming file / row group /
column), 2 for a bad flag or config value.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Sequence

from absl import app
from absl import logging
from ml_collections import config_flags

from terrafm_jax import config_schema
from terrafm_jax import console
from terrafm_jax.data.errors import BadInputError
from terrafm_jax.data.prepare.builder import check_majortom_dir, prepare
from terrafm_jax.data.prepare.config import REQUIRED
from terrafm_jax.data.prepare.options import PrepareOptions

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(os.path.abspath(__file__)), "config.py"),
    "prepare config (default: the built-in schema, terrafm_jax/data/prepare/config.py); "
    "override fields with --config.<field>=value", lock_config=True)


def options_from_config(cfg) -> PrepareOptions:
  return config_schema.build(PrepareOptions, cfg, required=REQUIRED)


def main(argv: Sequence[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}", exitcode=2)
  cfg = _CONFIG.value
  try:
    opts = options_from_config(cfg)
  except ValueError as e:
    raise app.UsageError(str(e), exitcode=2) from None
  beam_options = None
  if opts.runner == "beam":
    from apache_beam.options.pipeline_options import PipelineOptions  # pylint: disable=g-import-not-at-top
    beam_options = PipelineOptions([o for o in cfg.beam_pipeline_options.split(",") if o])
  try:
    check_majortom_dir(cfg.majortom_dir)
  except FileNotFoundError as e:
    console.error(f"FileNotFoundError: {e}")
    return 1
  log_file = console.configure(cfg.out_dir, "prepare")
  if log_file:
    console.say(f"full log: {log_file} (TERRAFM_VERBOSE=1 shows it here)")
  try:
    out = prepare(cfg.majortom_dir, cfg.out_dir, opts, beam_options=beam_options)
  except (BadInputError, FileNotFoundError, ValueError) as e:
    logging.info("prepare stopped", exc_info=True)  # the traceback: log file only
    console.error(f"{type(e).__name__}: {e}")
    return 1
  with open(os.path.join(out, "report.json"), encoding="utf-8") as f:
    report = json.load(f)
  print(json.dumps({"dataset_dir": out, "counts": report["counts"],
                    "skipped_by_kind": report["skipped_by_kind"],
                    "modality_unavailable_by_kind": report["modality_unavailable_by_kind"]},
                   indent=2))
  return 0


def run() -> None:
  """Console script `terrafm-prepare`."""
  app.run(lambda argv: sys.exit(main(argv)))


if __name__ == "__main__":
  run()
