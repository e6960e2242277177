"""A device trace of a few training steps (config.profile), for TensorBoard's profile plugin.

The trace starts after step `first_step` and covers the next `steps` steps; it goes to the
workdir (plugins/profile/<run>/*.xplane.pb), every process its own. The steps run asynchronously,
so the state is waited for before the trace stops, or the trace would end before their work.
"""
from __future__ import annotations

from typing import Any

import jax
from absl import logging


class StepProfile:

  def __init__(self, logdir: str, first_step: int, steps: int):
    self.logdir, self.first, self.last = str(logdir), first_step, first_step + steps
    self.active = False

  def after_step(self, step: int, state: Any) -> None:
    if step == self.first and not self.active:
      jax.profiler.start_trace(self.logdir)
      self.active = True
      logging.info("profiling steps %d-%d into %s", self.first + 1, self.last, self.logdir)
    elif self.active and step >= self.last:
      self.stop(state)

  def stop(self, state: Any) -> None:
    """Ends a trace still running (also when the run stops inside the profiled steps)."""
    if self.active:
      jax.block_until_ready(state)
      jax.profiler.stop_trace()
      self.active = False
