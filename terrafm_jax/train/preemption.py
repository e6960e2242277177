"""SIGTERM (preemption, SLURM --signal) -> save at a step boundary, then exit.

One process: a Python handler sets a flag. Several processes: the stop must be decided at the same
step everywhere (a process alone in Orbax's collective save would hang), so no Python handler is
installed: JAX's preemption sync service (started by jax.distributed.initialize) catches SIGTERM
on any host, and `manager.reached_preemption(step)` turns true on every process at the same step.
"""
from __future__ import annotations

import signal

import jax
from absl import logging


class Preemption:

  def __init__(self, manager):
    self.manager = manager
    self.multi = jax.process_count() > 1
    self.requested = False
    self._old = None

  def __enter__(self):
    if self.multi:
      return self

    def handler(signum, frame):
      del frame
      logging.warning("signal %d received: saving a checkpoint at the next step", signum)
      self.requested = True
    self._old = signal.signal(signal.SIGTERM, handler)
    return self

  def __exit__(self, *exc):
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)

  def stop_at(self, step: int) -> bool:
    if self.multi:
      return bool(self.manager.reached_preemption(step))
    return self.requested
