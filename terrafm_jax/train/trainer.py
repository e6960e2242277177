"""The training loop: build the run (train/run_setup.py), then step, log, run hooks, checkpoint.

Host work per step: pull the next numpy batch, assemble the global arrays, dispatch the compiled
step. Metrics of a logged step are fetched one step later (after the next step is dispatched,
train/step_metrics.py), so the device never waits for the host; the only blocking reads are at
checkpoint saves.
"""
from __future__ import annotations

import time
from typing import Any, Sequence

import jax
import ml_collections
from absl import logging

from terrafm_jax.train import checkpoint as ckpt_lib
from terrafm_jax.train import console
from terrafm_jax.train import data_source
from terrafm_jax.train import config_checks
from terrafm_jax.train import hooks as hooks_lib
from terrafm_jax.train import profiling
from terrafm_jax.train import report as report_lib
from terrafm_jax.train import run_setup
from terrafm_jax.train import sharding as sharding_lib
from terrafm_jax.train import step_metrics
from terrafm_jax.train.preemption import Preemption


class NonFiniteError(RuntimeError):
  pass


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       hooks: Sequence[hooks_lib.HookFactory] = ()) -> dict[str, Any]:
  """Train (or resume) in `workdir`; returns the final scalars and what the hooks (the in-loop
  and end-of-run evaluations the entry point hands in, train/hooks.py) add."""
  config_checks.validate(config)
  hooks_lib.check_all(hooks, config)
  run = run_setup.build(config, workdir)
  config, state, manager, mesh = run.config, run.state, run.manager, run.mesh
  total_steps, end_step = run.total_steps, run.end_step

  profile = (profiling.StepProfile(str(run.workdir), config.profile.first_step,
                                   config.profile.steps) if config.profile.enabled else None)
  ctx = hooks_lib.RunContext(config=config, workdir=run.workdir, contract=run.data.contract,
                             model=run.parts.model, param_init=run.parts.param_init, mesh=mesh,
                             rules=run.rules, writer=run.writer, total_steps=total_steps)
  active = [h for h in (f(ctx) for f in hooks) if h is not None]
  before = [h for h in active if hooks_lib.overrides(h, "before_step")]
  saved_hooks = [h for h in active if hooks_lib.overrides(h, "after_save")]
  metrics = step_metrics.StepMetrics(run)
  keys = data_source.step_keys(config)

  def flush_metrics() -> None:
    flushed = metrics.flush()
    if flushed is not None and not flushed[1].get("finite", 1.0):
      check_finite(flushed[0])

  def check_finite(at_step: int) -> None:
    bad = int(jax.device_get(state.bad_step))
    if bad >= 0:
      manager.wait_until_finished()  # let the last good checkpoint finish committing
      raise NonFiniteError(
          f"non-finite loss or gradient at step {bad} (detected by step {at_step}); the update "
          f"of that step was skipped and training stopped. The last good checkpoint is step "
          f"{manager.latest_step()} in {manager.directory}.")

  step, first_local = run.start_step, run.first_local
  with Preemption(manager) as preempt:
    while step < end_step:
      t0 = time.time()
      local = first_local if first_local is not None else next(run.data_iter)
      first_local = None
      metrics.batch_drawn(step, time.time() - t0)
      for h in before:  # every process (a hook may gather the global batch)
        local = h.before_step(step + 1, local)
      batch = sharding_lib.global_batch({k: local[k] for k in keys}, mesh)
      state, dev_metrics = run.compiled(state, batch)
      flush_metrics()  # previous logged step: its values are ready or nearly so
      step += 1
      if profile:
        profile.after_step(step, state)
      for h in active:  # every process: a hook's evaluation may be a collective
        out = h.after_step(step, state.teacher["encoder"])  # before the next step donates it
        if out:
          ctx.log(step, *out)
      planned_stop = end_step < total_steps and step == end_step
      if step % config.log_every_steps == 0 or step == total_steps or planned_stop:
        metrics.hold(step, dev_metrics)
      stop = preempt.stop_at(step)
      if stop or planned_stop or step == total_steps or step % config.checkpoint.every_steps == 0:
        check_finite(step)  # never checkpoint a state that went through a bad step
        saved = ckpt_lib.save(manager, step, state, run.data_iter, config, run.data.contract,
                              force=stop or planned_stop)
        if saved and saved_hooks:
          flush_metrics()  # the saved step's metrics are written before any hook sees the save
          for h in saved_hooks:
            h.after_save(step, manager)
      if stop:
        manager.wait_until_finished()
        logging.warning("preempted: checkpoint of step %d written, exiting", step)
        break
      if planned_stop:
        console.say(f"stopped after step {step} of {total_steps} (config.stop_after_step); "
                    "the next start resumes here")
        break
  if profile:
    profile.stop(state)
  flush_metrics()
  manager.wait_until_finished()
  check_finite(step)
  run.writer.flush()
  result = {"final_step": step, "history": metrics.history, "memory": run.memory}
  if step >= total_steps:
    for h in active:
      result.update(h.at_end(step, state.teacher))
  if jax.process_index() == 0 and step > run.start_step and config.write_report:
    _write_report(run, result)
  manager.close()
  run.writer.close()
  return result


def _write_report(run: run_setup.Run, result: dict[str, Any]) -> None:
  try:
    path = report_lib.write_report(run.workdir, report_lib.read_rows(run.workdir / "metrics.jsonl"),
                                   num_prototypes=run.config.model.head.out_dim,
                                   natural=run.data.natural_distribution, knn=result.get("knn"),
                                   transfer=result.get("transfer"),
                                   pictures=result.get("pictures"))
    console.say(f"report: {path}")
  except Exception as e:  # pylint: disable=broad-except  (a plot never fails a finished run)
    logging.warning("report.png not written: %s", e)
