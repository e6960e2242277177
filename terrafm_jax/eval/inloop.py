"""In-loop evaluation: a configured task and protocol scored every N steps during pretraining.

`config.eval` (train/default_config.py) names the task, protocol, data folder and interval; the
teacher encoder of the current step is scored exactly as `python -m terrafm_jax.eval` would score
a workdir (same readers, band table, features and protocol), with the run's input contract and the
"tiny" protocol settings of configs/eval.py. The splits are opened once; the jitted forward is
compiled once. Features are not cached (the weights change every time). Results go through the
run's metric writers as `eval/<task>/<protocol>` (and metrics.jsonl), on process 0.
"""
from __future__ import annotations

import os
import time
from typing import Any

import jax
import ml_collections
from absl import logging
from jax.experimental import multihost_utils

from terrafm_jax.data.contract import InputContract
from terrafm_jax.eval import runner, tasks as tasks_lib
from terrafm_jax.eval.config import get_eval_config
from terrafm_jax.eval.weights import Weights, contract_digest


def check_config(c: ml_collections.ConfigDict) -> None:
  """ValueError naming the config.eval field that cannot work."""
  e = c.eval
  if e.every_steps <= 0:
    return
  tasks_lib.get_task(e.task)
  runner.check_protocol(tasks_lib.get_task(e.task), e.protocol)
  if e.protocol == "finetune":
    raise ValueError("config.eval.protocol='finetune' is too costly in the loop; use knn, linear "
                     "or a segmentation probe")


class InLoopEval:
  def __init__(self, config: ml_collections.ConfigDict, contract: InputContract):
    e = config.eval
    self.task = tasks_lib.get_task(e.task)
    self.protocol, self.partition = e.protocol, e.partition
    self.model_config = config.model
    self.contract = contract
    self.cfg = get_eval_config("tiny")
    self.cfg.cache_dir = "none"
    self.cfg.batch_size = e.batch_size
    self.cfg.max_samples = e.max_samples
    self.cfg.seed = config.seed
    root = e.data_root
    if not root and self.task.benchmark == "eosamples":
      from terrafm_jax.eval.readers import eosamples
      root = eosamples.default_root()
    self.root = root
    self.splits = runner.open_splits(self.task, root, self.partition, self.cfg)

  def __call__(self, step: int, teacher_encoder: Any) -> dict[str, float] | None:
    """Score the teacher encoder of `step`; a collective on multi-host (call on every process)."""
    if jax.process_count() > 1:
      teacher_encoder = multihost_utils.process_allgather(teacher_encoder, tiled=True)
    if jax.process_index() != 0:
      return None
    t0 = time.time()
    params = jax.device_get(teacher_encoder)
    w = Weights(params, self.model_config, self.contract,
                {"kind": "in-loop", "step": step, "params_digest": f"step{step}",
                 "contract_digest": contract_digest(self.contract)})
    row = runner.run(self.task, self.protocol, w, self.root, self.cfg, partition=self.partition,
                     progress=False, splits=self.splits)
    tag = f"eval/{self.task.name.replace('/', '_')}/{self.protocol}"
    out = {tag: row.value, f"{tag}_seconds": time.time() - t0}
    logging.info("in-loop eval at step %d: %s %s %s = %.2f (%.1f s)", step, self.task.name,
                 self.protocol, row.metric, row.value, out[f"{tag}_seconds"])
    return out


def maybe_create(config: ml_collections.ConfigDict, contract: InputContract
                 ) -> InLoopEval | None:
  e = config.eval
  if e.every_steps <= 0:
    return None
  try:
    return InLoopEval(config, contract)
  except (FileNotFoundError, ValueError) as err:
    if e.skip_if_missing and not (e.data_root and os.path.exists(e.data_root)):
      logging.warning("in-loop evaluation of %s disabled: %s", e.task, err)
      return None
    raise
