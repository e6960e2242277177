"""Test-only entry: the trainer's command line with faults and recorders injected as hooks.

  python tests/train/fault_train.py [--die_after_step=N [--die_after_commit=false]]
      [--nan_at_step=N] [--record_tiles] <every flag of python -m terrafm_jax.train>

--die_after_step: SIGKILL (no cleanup, no atexit) once the checkpoint of step N was handed to the
  manager, after it committed unless --die_after_commit=false (then mid-save).
--nan_at_step: the host batch that feeds step N is poisoned (S1 all NaN).
--record_tiles: the tile ids of each global batch (every process' slice, in global order) go to
  <workdir>/tiles.jsonl, one row per step (a collective per step).

None of this is in the production loop: the trainer only knows train/hooks.py's calls.
"""
from __future__ import annotations

import json
import os
import signal

import numpy as np
from absl import flags
from absl import logging

from terrafm_jax.train import cli
from terrafm_jax.train import hooks as hooks_lib

_DIE = flags.DEFINE_integer("die_after_step", -1, "SIGKILL after the checkpoint of this step.")
_COMMIT = flags.DEFINE_bool("die_after_commit", True, "Wait for the save to commit first.")
_NAN = flags.DEFINE_integer("nan_at_step", -1, "Poison the inputs of this step with NaN.")
_TILES = flags.DEFINE_bool("record_tiles", False, "Write the global batches' tile ids.")


class _Faults(hooks_lib.Hook):

  def __init__(self, ctx: hooks_lib.RunContext):
    self.ctx = ctx

  def before_step(self, step, batch):
    if _TILES.value:
      tiles = np.asarray(batch["tile_index"], np.int64)
      import jax  # pylint: disable=g-import-not-at-top
      if jax.process_count() > 1:  # process p holds rows p*b..(p+1)*b of the global batch
        from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
        tiles = np.asarray(multihost_utils.process_allgather(tiles)).reshape(-1)
      if self.ctx.is_main:
        with open(os.path.join(str(self.ctx.workdir), "tiles.jsonl"), "a",
                  encoding="utf-8") as f:
          f.write(json.dumps({"step": step, "tiles": [int(t) for t in tiles]}) + "\n")
    if step == _NAN.value:
      batch = dict(batch, s1=np.full_like(batch["s1"], np.nan))
    return batch

  def after_save(self, step, manager):
    if step != _DIE.value:
      return
    if _COMMIT.value:
      manager.wait_until_finished()
    logging.warning("fault_train: killing the process after the checkpoint of step %d", step)
    logging.flush()
    os.kill(os.getpid(), signal.SIGKILL)


class _FaultFactory:

  def check(self, config) -> None:
    del config

  def __call__(self, ctx):
    return _Faults(ctx)


if __name__ == "__main__":
  cli.run(extra_hooks=[_FaultFactory()])
