"""Build the run: workdir, mesh, opened data and its run plan, the sharded state (fresh or
restored), the metrics writer, and the AOT-compiled step. Everything the loop needs, nothing run.
"""
from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

import flax.linen as nn
import jax
import ml_collections
from absl import logging
from etils import epath

from terrafm_jax.errors import ConfigError
from terrafm_jax.train import assemble
from terrafm_jax.train import checkpoint as ckpt_lib
from terrafm_jax.train import console
from terrafm_jax.train import data_source
from terrafm_jax.train import metrics as metrics_lib
from terrafm_jax.train import run_plan
from terrafm_jax.train import sharding as sharding_lib
from terrafm_jax.train import state as state_lib
from terrafm_jax.train import tb_writer
from terrafm_jax.train import workdir as workdir_lib


@dataclasses.dataclass
class Run:
  config: ml_collections.ConfigDict   # the plan's config (steps resolved on the data)
  workdir: epath.Path
  mesh: Any
  rules: Any
  plan: run_plan.RunPlan
  data: Any                           # data_source.TrainData (or the random batches)
  data_iter: Any                      # checkpointable iterator of this process' batches
  parts: assemble.RunParts
  manager: Any                        # Orbax CheckpointManager
  state: Any                          # the sharded train state
  start_step: int
  end_step: int                       # this run stops here (config.stop_after_step)
  writer: tb_writer.EventWriter
  compiled: Any                       # the compiled step (None when nothing is left to train)
  memory: dict[str, float]
  first_local: Any                    # the first host batch (already drawn for the compile)

  @property
  def total_steps(self) -> int:
    return self.config.total_steps


def compiler_options(config: ml_collections.ConfigDict, platform: str) -> dict[str, Any] | None:
  """The train step's XLA options: config.xla_cpu_options when compiling for CPU, else none."""
  opts = dict(config.xla_cpu_options)
  return opts if opts and platform == "cpu" else None


def check_landcover(config: ml_collections.ConfigDict, labelled_fraction: float) -> str:
  """Dual centering needs land-cover labels; without any, say so (or stop)."""
  if labelled_fraction > 0 or config.dino.alpha >= 1.0 or not config.dino.high_freq_classes:
    return "active" if labelled_fraction > 0 else "off (alpha=1 or no high-frequency classes)"
  msg = ("the training data has no land-cover labels (prepared without --config.landcover): the "
         "land-cover center c_h never updates and the loss is DINO with "
         f"{config.dino.alpha} x c centering, not TerraFM's dual centering")
  if not config.dino.allow_unlabelled:
    raise ConfigError(
        f"{msg}. Prepare the data with WorldCover (--config.landcover), or set config.dino.alpha=1.0 "
        "(plain DINO centering) or config.dino.allow_unlabelled=True to train anyway.")
  logging.warning("%s (config.dino.allow_unlabelled=True)", msg)
  return "inactive (no land-cover labels)"


def build(config: ml_collections.ConfigDict, workdir: str) -> Run:
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
  dual_centering = check_landcover(config, data.labelled_fraction)
  logging.info("data: %s; input contract: %s", data.description,
               {m.name: m.stats_source for m in contract.modalities})
  config = plan.config
  total_steps = config.total_steps
  logging.info("%d examples, %d steps/epoch, %d steps", num_examples, config.steps_per_epoch,
               total_steps)
  console.say(f"data: {data.description}; {num_examples} examples, global batch "
              f"{config.global_batch_size}, {total_steps} steps")

  parts = assemble.build(plan, contract, mesh)
  manager = ckpt_lib.make_manager(workdir, config.checkpoint)
  latest = manager.latest_step()
  if latest is not None:
    state = ckpt_lib.restore(manager, latest, parts.abstract_state(), data_iter, contract)
    logging.info("resumed from step %d", latest)
    console.say(f"resumed from the checkpoint of step {latest}")
  else:
    with jax.set_mesh(mesh):
      state = state_lib.create_sharded_state(parts.state_init, parts.shardings, parts.rng, rules)
  start_step = int(jax.device_get(state.step))
  metrics_lib.log_parameter_overview(state.student, "student", config.log_parameter_table)
  if is_main:
    _write_run_metadata(workdir, config, data, dual_centering, start_step)

  writer = metrics_lib.create_writer(str(workdir))
  if is_main and start_step == 0:
    writer.write_hparams({k: v for k, v in _flat(config.to_dict()).items()})

  # config.stop_after_step: this run ends there (with a checkpoint); the schedules still span
  # total_steps.
  end_step = min(total_steps, config.stop_after_step) if config.stop_after_step > 0 else total_steps
  if start_step >= end_step and start_step < total_steps:
    console.say(f"config.stop_after_step={config.stop_after_step} is not after the resumed step "
                f"{start_step}: nothing to train")
  first_local = next(data_iter) if start_step < end_step else None
  compiled, mem = None, {}
  if first_local is not None:
    first = sharding_lib.global_batch({k: first_local[k] for k in data_source.step_keys(config)},
                                      mesh)
    jitted = assemble.jit_step(parts, {k: v.sharding for k, v in first.items()}, mesh)
    t0 = time.time()
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      compiled = jitted.lower(state, first).compile(
          compiler_options=compiler_options(config, mesh.devices.flat[0].platform))
    logging.info("train step compiled in %.1f s", time.time() - t0)
    mem = metrics_lib.log_memory_analysis(compiled)
    console.say(f"train step compiled in {time.time() - t0:.1f} s"
                + (f"; {mem.get('temp_size_gib', 0) + mem.get('argument_size_gib', 0):.2f} GiB "
                   "per device (arguments + temporaries)" if mem else ""))
  return Run(config=config, workdir=workdir, mesh=mesh, rules=rules, plan=plan, data=data,
             data_iter=data_iter, parts=parts, manager=manager, state=state,
             start_step=start_step, end_step=end_step, writer=writer, compiled=compiled,
             memory=mem, first_local=first_local)


def _write_run_metadata(workdir, config, data, dual_centering: str, start_step: int) -> None:
  meta = {"start_step": start_step, "process_count": jax.process_count(),
          "device_count": jax.device_count(), "data": data.description,
          "landcover_labelled_fraction": data.labelled_fraction,
          "dual_centering": dual_centering, "contract": data.contract.to_dict(),
          "config": json.loads(config.to_json_best_effort())}
  (workdir / "run_metadata.json").write_text(json.dumps(meta, indent=2) + "\n")


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
  return out
