"""Train-step throughput: img/s per device, achieved TFLOP/s and MFU of the real jitted step.

  python bench/train_step.py --config=configs/terrafm_b.py --config.global_batch_size=64 \
      --config.data.source=random --steps=20
Uses `data.source=random` batches (no input pipeline), so it measures the device step alone.
"""
from __future__ import annotations

import json
import time

import jax
from absl import app, flags
from ml_collections import config_flags

from terrafm_jax.data.contract import DEFAULT_CONTRACT
from terrafm_jax.models import terrafm
from terrafm_jax.train import data_source, metrics, optim, schedules, sharding, state as state_lib
from terrafm_jax.train import step as step_lib
from terrafm_jax.train import run_setup

_CONFIG = config_flags.DEFINE_config_file("config", "configs/smoke.py:test", "config file")
_STEPS = flags.DEFINE_integer("steps", 10, "timed steps (after 2 warm-up steps)")
_JSON = flags.DEFINE_string("json_out", "", "also write the figures to this JSON file")


def main(_):
  config = _CONFIG.value
  config.unlock()
  config.data.source = "random"
  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.logical_rules(config)
  plan, _, it = data_source.open_run(config, "/tmp/terrafm_bench")
  config = plan.config
  model = terrafm.build_dino(config.model)
  scheds = schedules.make_schedules(config)
  n_shards = mesh.shape["data"] * mesh.shape["fsdp"]
  param_init = state_lib.make_param_init_fn(model, config, n_shards, DEFAULT_CONTRACT.num_channels)
  rng = jax.random.PRNGKey(0)
  tx = optim.make_optimizer(config, sharding.unbox(jax.eval_shape(param_init, rng)), scheds,
                            idle=plan.idle)
  init = state_lib.make_state_init_fn(param_init, tx, config.model.head.out_dim)
  sh = state_lib.state_shardings(param_init, tx, rng, mesh, rules)
  with jax.set_mesh(mesh):
    st = state_lib.create_sharded_state(init, sh, rng, rules)
  batches = [sharding.global_batch({k: b[k] for k in data_source.step_keys(config)}, mesh)
             for b in (next(it), next(it))]
  fn = jax.jit(step_lib.make_train_step(model, tx, scheds, plan, DEFAULT_CONTRACT),
               in_shardings=(sh, {k: v.sharding for k, v in batches[0].items()}),
               donate_argnums=(0,))
  with jax.set_mesh(mesh), __import__("flax").linen.logical_axis_rules(rules):
    t0 = time.time()
    compiled = fn.lower(st, batches[0]).compile(compiler_options=run_setup.compiler_options(config, "cpu"))
    compile_s = time.time() - t0
    memory = metrics.log_memory_analysis(compiled)
    print(f"compile {compile_s:.1f} s; memory {memory}")
  for i in range(2):
    st, m = compiled(st, batches[i % 2])
  jax.block_until_ready(m)
  t0 = time.time()
  for i in range(_STEPS.value):
    st, m = compiled(st, batches[i % 2])
  jax.block_until_ready(m)
  dt = (time.time() - t0) / _STEPS.value
  nd = jax.device_count()
  flops = plan.step_flops
  peak = metrics.peak_flops_per_device(config)
  print(f"{jax.devices()[0].device_kind} x{nd}: {dt * 1e3:.1f} ms/step, "
        f"{config.global_batch_size / dt / nd:.1f} img/s/device, "
        f"{flops / dt / nd / 1e12:.3f} TFLOP/s/device" +
        (f", MFU {flops / dt / nd / peak:.1%}" if peak else ""))
  if _JSON.value:
    with open(_JSON.value, "w", encoding="utf-8") as f:
      json.dump({"device_kind": jax.devices()[0].device_kind, "devices": nd,
                 "global_batch": config.global_batch_size, "step_s": dt,
                 "img_per_s_per_device": config.global_batch_size / dt / nd,
                 "model_flops_per_step": flops,
                 "tflops_per_device": flops / dt / nd / 1e12,
                 "mfu": flops / dt / nd / peak if peak else None,
                 "compile_s": compile_s, "memory_gib": memory}, f, indent=1)


if __name__ == "__main__":
  app.run(main)
