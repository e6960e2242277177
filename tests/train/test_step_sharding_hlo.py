"""The compiled train step on 8 simulated devices (pure data parallel) moves no activations between
devices: views are laid out sample-major ((B, V) -> B*V, B outermost), so the batch-sharded axis
is never reshuffled between the crops, the encoder and the loss. The only collectives left are
reductions (gradients, losses, centers); an all-to-all or all-gather would mean an activation
reshuffle."""
from __future__ import annotations

import json

OVERRIDES = "config.global_batch_size = 48\nconfig.data.group_block = 6"  # 6 per device

CODE = r"""
import re
state = state_lib.abstract_state(init, sh, rng)
local = next(data_iter)
batch = sharding.global_batch({k: local[k] for k in keys}, mesh)
fn = jax.jit(step_lib.make_train_step(model, tx, scheds, plan, data.contract),
             in_shardings=(sh, {k: v.sharding for k, v in batch.items()}), donate_argnums=(0,))
with jax.set_mesh(mesh), flax.linen.logical_axis_rules(rules):
  hlo = fn.lower(state, batch).compile().as_text()
ops = {}
for name in ("all-to-all", "all-gather", "collective-permute", "all-reduce", "reduce-scatter"):
  ops[name] = len(re.findall(r" " + name + r"(-start)?\(", hlo))
print(json.dumps(ops))
"""


def test_data_parallel_step_has_no_activation_reshuffle(run_py, step_setup):
  code = step_setup(8, OVERRIDES) + CODE
  ops = json.loads(run_py(code, num_devices=8).strip().splitlines()[-1])
  assert ops["all-reduce"] > 0, ops  # gradients and batch statistics are reduced
  assert ops["all-to-all"] == 0 and ops["all-gather"] == 0 and ops["collective-permute"] == 0, ops
