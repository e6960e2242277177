"""The training loop: mesh -> data -> sharded state (fresh or restored) -> AOT-compiled step -> loop.

Host work per step: pull the next numpy batch, assemble the global arrays, dispatch the compiled
step. Metrics of a logged step are fetched one step later (after the next step is dispatched), so
the device never waits for the host; the only blocking reads are at checkpoint saves.
"""
from __future__ import annotations

import json
import signal
import time
from typing import Any, Sequence

import flax.linen as nn
import jax
import ml_collections
from absl import logging

from terrafm_jax.train import assemble
from terrafm_jax.train import checkpoint as ckpt_lib
from terrafm_jax.train import console
from terrafm_jax.train import data_source
from terrafm_jax.train import default_config
from terrafm_jax.train import hooks as hooks_lib
from terrafm_jax.train import metrics as metrics_lib
from terrafm_jax.train import profiling
from terrafm_jax.train import report as report_lib
from terrafm_jax.train import sharding as sharding_lib
from terrafm_jax.train import state as state_lib
from terrafm_jax.train import workdir as workdir_lib


class NonFiniteError(RuntimeError):
  pass


class _Preemption:
  """SIGTERM (preemption, SLURM --signal) -> save at a step boundary, then exit.

  One process: a Python handler sets a flag. Several processes: the stop must be decided at the
  same step everywhere (a process alone in Orbax's collective save would hang), so no Python
  handler is installed: JAX's preemption sync service (started by jax.distributed.initialize)
  catches SIGTERM on any host, and `manager.reached_preemption(step)` turns true on every process
  at the same step.
  """

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


def compiler_options(config: ml_collections.ConfigDict, platform: str) -> dict[str, Any] | None:
  """The train step's XLA options: config.xla_cpu_options when compiling for CPU, else none."""
  opts = dict(config.xla_cpu_options)
  return opts if opts and platform == "cpu" else None


def _check_landcover(config: ml_collections.ConfigDict, labelled_fraction: float) -> str:
  """Dual centering needs land-cover labels; without any, say so (or stop)."""
  if labelled_fraction > 0 or config.dino.alpha >= 1.0 or not config.dino.high_freq_classes:
    return "active" if labelled_fraction > 0 else "off (alpha=1 or no high-frequency classes)"
  msg = ("the training data has no land-cover labels (prepared without --landcover): the "
         "land-cover center c_h never updates and the loss is DINO with "
         f"{config.dino.alpha} x c centering, not TerraFM's dual centering")
  if not config.dino.allow_unlabelled:
    raise default_config.ConfigError(
        f"{msg}. Prepare the data with WorldCover (--landcover), or set config.dino.alpha=1.0 "
        "(plain DINO centering) or config.dino.allow_unlabelled=True to train anyway.")
  logging.warning("%s (config.dino.allow_unlabelled=True)", msg)
  return "inactive (no land-cover labels)"


def _write_run_metadata(workdir, config, data, dual_centering: str, start_step: int) -> None:
  meta = {"start_step": start_step, "process_count": jax.process_count(),
          "device_count": jax.device_count(), "data": data.description,
          "landcover_labelled_fraction": data.labelled_fraction,
          "dual_centering": dual_centering, "contract": data.contract.to_dict(),
          "config": json.loads(config.to_json_best_effort())}
  (workdir / "run_metadata.json").write_text(json.dumps(meta, indent=2) + "\n")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       hooks: Sequence[hooks_lib.HookFactory] = ()) -> dict[str, Any]:
  """Train (or resume) in `workdir`; returns the final scalars and what the hooks (the in-loop
  and end-of-run evaluations the entry point hands in, train/hooks.py) add."""
  default_config.validate(config)
  hooks_lib.check_all(hooks, config)
  workdir = workdir_lib.make_workdir(workdir)
  is_main = jax.process_index() == 0
  if not is_main:
    logging.set_verbosity(logging.WARNING)
  workdir_lib.warn_if_local_multiprocess(workdir, jax.process_count())

  mesh = sharding_lib.make_mesh(config.mesh)
  rules = sharding_lib.logical_rules(config)
  logging.info("mesh %s on %d devices (%d processes), platform %s", dict(mesh.shape),
               jax.device_count(), jax.process_count(), jax.devices()[0].platform)
  console.say(f"{config.model.variant} on {jax.device_count()} {jax.devices()[0].platform} "
              f"device(s), {jax.process_count()} process(es), mesh {dict(mesh.shape)}; "
              f"workdir {workdir}")

  # The run plan (train/run_plan.py): steps, group block and quotas, modalities and parameters
  # the step runs, crops, FLOPs; derived and validated once, on the opened data's size.
  plan, data, data_iter = data_source.open_run(config, str(workdir))
  num_examples, contract = data.num_examples, data.contract
  dual_centering = _check_landcover(config, data.labelled_fraction)
  logging.info("data: %s; input contract: %s", data.description,
               {m.name: m.stats_source for m in contract.modalities})
  config = plan.config
  total_steps = config.total_steps
  logging.info("%d examples, %d steps/epoch, %d steps", num_examples, config.steps_per_epoch,
               total_steps)
  console.say(f"data: {data.description}; {num_examples} examples, global batch "
              f"{config.global_batch_size}, {total_steps} steps")

  parts = assemble.build(plan, contract, mesh)
  param_init, state_init, shardings, rng = (parts.param_init, parts.state_init, parts.shardings,
                                            parts.rng)

  manager = ckpt_lib.make_manager(workdir, config.checkpoint)
  latest = manager.latest_step()
  if latest is not None:
    target = parts.abstract_state()
    state = ckpt_lib.restore(manager, latest, target, data_iter, contract)
    logging.info("resumed from step %d", latest)
    console.say(f"resumed from the checkpoint of step {latest}")
  else:
    with jax.set_mesh(mesh):
      state = state_lib.create_sharded_state(state_init, shardings, rng, rules)
  start_step = int(jax.device_get(state.step))
  metrics_lib.log_parameter_overview(state.student, "student", config.log_parameter_table)
  if is_main:
    _write_run_metadata(workdir, config, data, dual_centering, start_step)

  writer = metrics_lib.create_writer(str(workdir))
  if is_main and start_step == 0:
    writer.write_hparams({k: v for k, v in _flat(config.to_dict()).items()})
  jsonl = workdir / "metrics.jsonl"

  # config.stop_after_step: this run ends there (with a checkpoint); the schedules still span
  # total_steps.
  end_step = min(total_steps, config.stop_after_step) if config.stop_after_step > 0 else total_steps
  if start_step >= end_step and start_step < total_steps:
    console.say(f"config.stop_after_step={config.stop_after_step} is not after the resumed step "
                f"{start_step}: nothing to train")
  first_local = next(data_iter) if start_step < end_step else None
  compiled, mem = None, {}
  if first_local is not None:
    first = sharding_lib.global_batch({k: first_local[k] for k in data_source.step_keys(config)}, mesh)
    batch_sh = {k: v.sharding for k, v in first.items()}
    jitted = assemble.jit_step(parts, batch_sh, mesh)
    t0 = time.time()
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      compiled = jitted.lower(state, first).compile(
          compiler_options=compiler_options(config, mesh.devices.flat[0].platform))
    logging.info("train step compiled in %.1f s", time.time() - t0)
    mem = metrics_lib.log_memory_analysis(compiled)
    console.say(f"train step compiled in {time.time() - t0:.1f} s"
                + (f"; {mem.get('temp_size_gib', 0) + mem.get('argument_size_gib', 0):.2f} GiB "
                   "per device (arguments + temporaries)" if mem else ""))

  profile = (profiling.StepProfile(str(workdir), config.profile.first_step, config.profile.steps)
             if config.profile.enabled else None)
  ctx = hooks_lib.RunContext(config=config, workdir=workdir, contract=contract, model=parts.model,
                             param_init=param_init, mesh=mesh, rules=rules, writer=writer,
                             total_steps=total_steps)
  active = [h for h in (f(ctx) for f in hooks) if h is not None]
  before = [h for h in active if hooks_lib.overrides(h, "before_step")]
  saved_hooks = [h for h in active if hooks_lib.overrides(h, "after_save")]
  # Exposure of the whole global batch (every process' slice), exact from step 0 after a resume.
  exposure = metrics_lib.ClassExposure()
  for s0 in range(0, start_step, 1024):
    exposure.update(data.global_labels(s0, min(start_step, s0 + 1024)))
  flops = plan.step_flops
  peak = metrics_lib.peak_flops_per_device(config)
  n_dev = jax.device_count()
  pending: tuple[int, Any] | None = None
  last = {"time": time.time(), "step": start_step, "data_wait": 0.0}
  history: list[dict[str, float]] = []

  def flush_pending():
    nonlocal pending
    if pending is None:
      return
    step_done, dev_metrics = pending
    pending = None
    raw = jax.device_get(dev_metrics)
    scalars = metrics_lib.summarize(raw)
    now = time.time()
    dt = max(now - last["time"], 1e-9)
    n_steps = max(step_done - last["step"], 1)
    scalars["steps_per_sec"] = n_steps / dt
    scalars["img_per_sec_per_device"] = n_steps * config.global_batch_size / dt / n_dev
    scalars["achieved_tflops_per_device"] = n_steps * flops / dt / n_dev / 1e12
    if peak:
      scalars["mfu"] = n_steps * flops / dt / (n_dev * peak)
    scalars["data_wait_sec_per_step"] = last["data_wait"] / n_steps
    scalars.update(exposure.scalars())
    last.update(time=now, step=step_done, data_wait=0.0)
    if is_main:
      writer.write_scalars(step_done, scalars)
      workdir_lib.append_jsonl(jsonl, {"step": step_done, **scalars})
      # ETA from the mean speed since the first logged step (one interval's speed is noisy).
      first = last.setdefault("first", (now, step_done))
      mean_rate = (step_done - first[1]) / max(now - first[0], 1e-9) if step_done > first[1] \
          else scalars["steps_per_sec"]
      console.say(console.progress_line(step_done, total_steps, scalars, n_dev, mean_rate))
    history.append({"step": step_done, **scalars})
    if not scalars.get("finite", 1.0):
      check_finite(step_done)

  def check_finite(at_step):
    bad = int(jax.device_get(state.bad_step))
    if bad >= 0:
      manager.wait_until_finished()  # let the last good checkpoint finish committing
      raise NonFiniteError(
          f"non-finite loss or gradient at step {bad} (detected by step {at_step}); the update "
          f"of that step was skipped and training stopped. The last good checkpoint is step "
          f"{manager.latest_step()} in {manager.directory}.")

  step = start_step
  with _Preemption(manager) as preempt:
    while step < end_step:
      t0 = time.time()
      local = first_local if first_local is not None else next(data_iter)
      first_local = None
      last["data_wait"] += time.time() - t0
      exposure.update(data.global_labels(step, step + 1))
      for h in before:  # every process (a hook may gather the global batch)
        local = h.before_step(step + 1, local)
      batch = sharding_lib.global_batch({k: local[k] for k in data_source.step_keys(config)}, mesh)
      state, dev_metrics = compiled(state, batch)
      flush_pending()  # previous logged step: its values are ready or nearly so
      step += 1
      if profile:
        profile.after_step(step, state)
      for h in active:  # every process: a hook's evaluation may be a collective
        out = h.after_step(step, state.teacher["encoder"])  # before the next step donates it
        if out:
          ctx.log(step, *out)
      planned_stop = end_step < total_steps and step == end_step
      if step % config.log_every_steps == 0 or step == total_steps or planned_stop:
        pending = (step, dev_metrics)
      stop = preempt.stop_at(step)
      if stop or planned_stop or step == total_steps or step % config.checkpoint.every_steps == 0:
        check_finite(step)  # never checkpoint a state that went through a bad step
        saved = ckpt_lib.save(manager, step, state, data_iter, config, contract,
                              force=stop or planned_stop)
        if saved and saved_hooks:
          flush_pending()  # the saved step's metrics are written before any hook sees the save
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
  flush_pending()
  manager.wait_until_finished()
  check_finite(step)
  writer.flush()
  result = {"final_step": step, "history": history, "memory": mem}
  if step >= total_steps:
    for h in active:
      result.update(h.at_end(step, state.teacher))
  if is_main and step > start_step and config.write_report:
    try:
      path = report_lib.write_report(workdir, report_lib.read_rows(jsonl),
                                     num_prototypes=config.model.head.out_dim,
                                     natural=data.natural_distribution, knn=result.get("knn"),
                                     transfer=result.get("transfer"),
                                     pictures=result.get("pictures"))
      console.say(f"report: {path}")
    except Exception as e:  # pylint: disable=broad-except  (a plot never fails a finished run)
      logging.warning("report.png not written: %s", e)
  manager.close()
  writer.close()
  return result


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
  return out
