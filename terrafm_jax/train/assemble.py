"""The model, optimizer, sharded state layout and train step of a run, built abstractly.

Shared by the trainer (which then materialises or restores the state and compiles the step for
its own devices) and the dry run (train/dry_run.py, which compiles the same step for a TPU
topology without materialising anything), so that what the dry run measures is what the job runs.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import optax

from terrafm_jax.data.contract import InputContract
from terrafm_jax.models import terrafm
from terrafm_jax.train import optim as optim_lib
from terrafm_jax.train import run_plan
from terrafm_jax.train import schedules as schedules_lib
from terrafm_jax.train import sharding as sharding_lib
from terrafm_jax.train import state as state_lib
from terrafm_jax.train import step as step_lib


@dataclasses.dataclass(frozen=True)
class RunParts:
  model: Any
  param_init: Callable[[jax.Array], Any]      # rng -> boxed student params
  tx: optax.GradientTransformation
  state_init: Callable[[jax.Array], state_lib.TrainState]
  shardings: state_lib.TrainState              # NamedSharding per state leaf
  rng: jax.Array
  train_step: Callable

  def abstract_state(self) -> state_lib.TrainState:
    return state_lib.abstract_state(self.state_init, self.shardings, self.rng)


def build(plan: run_plan.RunPlan, contract: InputContract, mesh: jax.sharding.Mesh) -> RunParts:
  """The run's parts from its plan; nothing is allocated on any device."""
  config = plan.config
  rules = sharding_lib.logical_rules(config)
  n_batch_shards = mesh.shape["data"] * mesh.shape["fsdp"]
  model = terrafm.build_dino(config.model)
  scheds = schedules_lib.make_schedules(config)
  param_init = state_lib.make_param_init_fn(model, config, n_batch_shards, contract.num_channels)
  rng = jax.random.PRNGKey(config.seed)
  abstract_params = sharding_lib.unbox(jax.eval_shape(param_init, rng))
  tx = optim_lib.make_optimizer(config, abstract_params, scheds, idle=plan.idle)
  state_init = state_lib.make_state_init_fn(param_init, tx, config.model.head.out_dim)
  shardings = state_lib.state_shardings(param_init, tx, rng, mesh, rules)
  train_step = step_lib.make_train_step(model, tx, scheds, plan, contract)
  return RunParts(model, param_init, tx, state_init, shardings, rng, train_step)


def jit_step(parts: RunParts, batch_shardings: dict[str, Any], mesh: jax.sharding.Mesh):
  """The one donated, jitted train step (state, batch) -> (state, metrics)."""
  return jax.jit(parts.train_step, in_shardings=(parts.shardings, batch_shardings),
                 out_shardings=(parts.shardings, sharding_lib.replicated(mesh)),
                 donate_argnums=(0,))
