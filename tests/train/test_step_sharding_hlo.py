"""The compiled train step on 8 simulated devices (pure data parallel) moves no activations between
devices: views are laid out sample-major ((B, V) -> B*V, B outermost), so the batch-sharded axis
is never reshuffled between the crops, the encoder and the loss. The only collectives left are
reductions (gradients, losses, centers); an all-to-all or all-gather would mean an activation
reshuffle."""
from __future__ import annotations

import json

CODE = r"""
import json, re
import jax, flax
from terrafm_jax.train import data_source, default_config, schedules, sharding, optim, trainer
from terrafm_jax.train import state as state_lib, step as step_lib
from terrafm_jax.models import terrafm
import importlib.util
spec = importlib.util.spec_from_file_location("smoke", "configs/smoke.py")
mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
config = mod.get_config("test")
config.unlock()
config.mesh.data, config.mesh.fsdp = 8, 1
config.global_batch_size = 48
config.data.group_block = 6  # per-shard batch: groups of (2, 2, 2, 6) teacher views per device
mesh = sharding.make_mesh(config.mesh)
rules = sharding.logical_rules(config)
data = data_source.make_train_data(config, "/tmp/unused")
config = trainer.resolve_config(config, data.num_examples)
model = terrafm.build_dino(config.model)
scheds = schedules.make_schedules(config)
param_init = state_lib.make_param_init_fn(model, config, 8, data.contract.num_channels)
rng = jax.random.PRNGKey(0)
tx = optim.make_optimizer(config, sharding.unbox(jax.eval_shape(param_init, rng)), scheds)
init = state_lib.make_state_init_fn(param_init, tx, config.model.head.out_dim)
sh = state_lib.state_shardings(param_init, tx, rng, mesh, rules)
state = state_lib.abstract_state(init, sh, rng)
local = next(data.iterator)
batch = sharding.global_batch({k: local[k] for k in data_source.step_keys(config)}, mesh)
fn = jax.jit(step_lib.make_train_step(model, tx, scheds, config, data.contract),
             in_shardings=(sh, {k: v.sharding for k, v in batch.items()}), donate_argnums=(0,))
with jax.set_mesh(mesh), flax.linen.logical_axis_rules(rules):
  hlo = fn.lower(state, batch).compile().as_text()
ops = {}
for name in ("all-to-all", "all-gather", "collective-permute", "all-reduce", "reduce-scatter"):
  ops[name] = len(re.findall(r" " + name + r"(-start)?\(", hlo))
print(json.dumps(ops))
"""


def test_data_parallel_step_has_no_activation_reshuffle(run_py):
  ops = json.loads(run_py(CODE, num_devices=8).strip().splitlines()[-1])
  assert ops["all-reduce"] > 0, ops  # gradients and batch statistics are reduced
  assert ops["all-to-all"] == 0 and ops["all-gather"] == 0 and ops["collective-permute"] == 0, ops
