"""The metrics of the logged steps: fetched one step late, summarised on the host, written.

A logged step's device metrics are held (`hold`) and read after the next step was dispatched
(`flush`), so the device never waits for the host. Each flush adds the speed since the last one
(steps/s, img/s per device, achieved TFLOP/s, MFU), the data wait, and the class exposure of every
global batch trained on (exact from step 0 after a resume); process 0 writes TensorBoard,
metrics.jsonl and the console's progress line.
"""
from __future__ import annotations

import time
from typing import Any

import jax

from terrafm_jax.train import console
from terrafm_jax.train import metrics as metrics_lib
from terrafm_jax.train import workdir as workdir_lib


class StepMetrics:

  def __init__(self, run):
    self.run = run
    self.config = run.config
    self.is_main = jax.process_index() == 0
    self.jsonl = run.workdir / "metrics.jsonl"
    self.exposure = metrics_lib.ClassExposure()
    for s0 in range(0, run.start_step, 1024):
      self.exposure.update(run.data.global_labels(s0, min(run.start_step, s0 + 1024)))
    self.flops = run.plan.step_flops
    self.peak = metrics_lib.peak_flops_per_device(self.config)
    self.n_dev = jax.device_count()
    self.pending: tuple[int, Any] | None = None
    self.last = {"time": time.time(), "step": run.start_step, "data_wait": 0.0}
    self.first: tuple[float, int] | None = None
    self.history: list[dict[str, float]] = []

  def batch_drawn(self, step: int, wait_seconds: float) -> None:
    """The host batch of step `step + 1` was drawn after `wait_seconds`."""
    self.last["data_wait"] += wait_seconds
    self.exposure.update(self.run.data.global_labels(step, step + 1))

  def hold(self, step: int, dev_metrics: Any) -> None:
    self.pending = (step, dev_metrics)

  def flush(self) -> tuple[int, dict[str, float]] | None:
    """Writes the held step's metrics; returns (its step, its scalars), None if none was held."""
    if self.pending is None:
      return None
    step_done, dev_metrics = self.pending
    self.pending = None
    scalars = metrics_lib.summarize(jax.device_get(dev_metrics))
    now = time.time()
    dt = max(now - self.last["time"], 1e-9)
    n_steps = max(step_done - self.last["step"], 1)
    batch = self.config.global_batch_size
    scalars["steps_per_sec"] = n_steps / dt
    scalars["img_per_sec_per_device"] = n_steps * batch / dt / self.n_dev
    scalars["achieved_tflops_per_device"] = n_steps * self.flops / dt / self.n_dev / 1e12
    if self.peak:
      scalars["mfu"] = n_steps * self.flops / dt / (self.n_dev * self.peak)
    scalars["data_wait_sec_per_step"] = self.last["data_wait"] / n_steps
    scalars.update(self.exposure.scalars())
    self.last.update(time=now, step=step_done, data_wait=0.0)
    if self.is_main:
      self.run.writer.write_scalars(step_done, scalars)
      workdir_lib.append_jsonl(self.jsonl, {"step": step_done, **scalars})
      # ETA from the mean speed since the first logged step (one interval's speed is noisy).
      if self.first is None:
        self.first = (now, step_done)
      t_first, s_first = self.first
      mean_rate = ((step_done - s_first) / max(now - t_first, 1e-9) if step_done > s_first
                   else scalars["steps_per_sec"])
      console.say(console.progress_line(step_done, self.run.total_steps, scalars, self.n_dev,
                                        mean_rate))
    self.history.append({"step": step_done, **scalars})
    return step_done, scalars
