"""Entry point: `python -m terrafm_jax.train --config=configs/smoke.py --workdir=DIR`
(console script `terrafm-train`).

Config overrides use ml_collections syntax: `--config.global_batch_size=2048`,
`--config=configs/terrafm_b.py:L/16` for a `:arg` variant. An existing workdir resumes from its
latest complete checkpoint.

Multi-host: `jax.distributed.initialize()` runs when --multihost is set (TPU pods, SLURM and Open MPI
are auto-detected), or with an explicit coordinator (--coordinator_address, --num_processes,
--process_id), e.g. from the local CPU launcher (launch/local_multiprocess.sh), which also selects
gloo CPU collectives.
"""
from __future__ import annotations

import functools
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from terrafm_jax import console
from terrafm_jax import platforms

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training config file (configs/*.py[:arg]).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, TensorBoard events, metrics.jsonl.")
_MULTIHOST = flags.DEFINE_bool("multihost", False,
                               "Call jax.distributed.initialize() with auto-detection.")
_COORD = flags.DEFINE_string("coordinator_address", "",
                             "host:port of process 0 (explicit multi-process).")
_NPROC = flags.DEFINE_integer("num_processes", 0, "Number of processes (explicit multi-process).")
_VERBOSE = flags.DEFINE_bool("verbose", False,
                              "Full INFO log on the console (default: one progress line per log "
                              "interval; the full log is in <workdir>/train.log). Also "
                              "TERRAFM_VERBOSE=1.")
_DRY_RUN = flags.DEFINE_string(
    "dry_run", "", "Compile the step for this TPU topology (v5e:2x2, v4:2x2x4, v5e-64, ...) on this "
    "host and report HBM per chip, FLOPs, collectives and the attention form; trains nothing "
    "(train/dry_run.py). Exit code 4 if it does not fit.")
_PID = flags.DEFINE_integer("process_id", -1, "This process' index (explicit multi-process).")


def _init_distributed() -> None:
  import jax  # pylint: disable=g-import-not-at-top
  if _COORD.value:
    if _NPROC.value <= 0 or _PID.value < 0:
      raise app.UsageError("--coordinator_address needs --num_processes and --process_id")
    if os.environ.get("JAX_PLATFORMS", "") == "cpu":
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=_COORD.value, num_processes=_NPROC.value,
                               process_id=_PID.value)
  elif _MULTIHOST.value:
    jax.distributed.initialize()


def main(argv, extra_hooks=()) -> None:
  """`extra_hooks`: hook factories run after the default ones (train/hooks.py); the test-only
  entry tests/train/fault_train.py injects its crashes and recorders this way."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _CONFIG.value is None:
    raise app.UsageError("--config is required, e.g. --config=configs/smoke.py")
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required")
  platforms.quiet_libtpu_without_tpu()
  if _DRY_RUN.value:
    sys.exit(_dry_run(_DRY_RUN.value))
  _init_distributed()
  log_file = console.configure(_WORKDIR.value, "train", _VERBOSE.value)
  if log_file:
    console.say(f"full log: {log_file} (--verbose or TERRAFM_VERBOSE=1 shows it here)")
  from terrafm_jax.data.errors import BadInputError  # pylint: disable=g-import-not-at-top
  from terrafm_jax.errors import ConfigError  # pylint: disable=g-import-not-at-top
  from terrafm_jax.train import trainer  # pylint: disable=g-import-not-at-top
  from terrafm_jax.eval import run_hooks  # pylint: disable=g-import-not-at-top
  try:
    result = trainer.train_and_evaluate(_CONFIG.value, _WORKDIR.value,
                                        hooks=[*run_hooks.default_hooks(), *extra_hooks])
  except trainer.NonFiniteError as e:
    logging.info("training stopped: %s", e)
    console.error(str(e))
    sys.exit(3)
  except ConfigError as e:  # invalid config values: one clear line
    logging.info("invalid configuration: %s", e)
    console.error(f"invalid configuration: {e}")
    sys.exit(2)
  except (ValueError, FileNotFoundError, BadInputError) as e:  # bad data, path, checkpoint
    logging.info("training stopped", exc_info=True)  # the traceback: log file only
    console.error(f"{type(e).__name__}: {e}")
    sys.exit(1)
  knn = result.get("knn")
  if knn:
    print(f"[terrafm] kNN learning check (k={knn['k']}, {knn['num_test']} held-out tiles): "
          f"random init {knn['random_init']:.3f}, pretrained {knn['pretrained']:.3f}, "
          f"margin {knn['margin']:+.3f} ({knn['modality']})", flush=True)
    rows = [(f"{m} (memory and queries)", r) for m, r in knn["per_modality"].items()]
    rows += [(f"{p.replace('->', ' memory, ')} queries", r) for p, r in knn["cross_modal"].items()]
    rows.append(("cross-modal mean", knn["cross_modal_mean"]))
    for name, r in rows:
      print(f"[terrafm]   {name:34s} random init {r['random_init']:.3f}  pretrained "
            f"{r['pretrained']:.3f}  margin {r['pretrained'] - r['random_init']:+.3f}", flush=True)


def _dry_run(topology: str) -> int:
  from terrafm_jax.errors import ConfigError  # pylint: disable=g-import-not-at-top
  from terrafm_jax.train import dry_run  # pylint: disable=g-import-not-at-top
  try:
    report = dry_run.run(_CONFIG.value, topology, _WORKDIR.value)
  except dry_run.DoesNotFit as e:
    print(f"[terrafm] {e}", file=sys.stderr)
    return 4
  except ConfigError as e:
    console.error(f"invalid configuration: {e}")
    return 2
  print("\n".join(f"[terrafm] {line}" for line in report.lines()), flush=True)
  return 0


def run(extra_hooks=()) -> None:
  """Console script `terrafm-train`."""
  app.run(functools.partial(main, extra_hooks=tuple(extra_hooks)))


if __name__ == "__main__":
  run()
