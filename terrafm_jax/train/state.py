"""The training state and its sharded, abstract-first construction (DESIGN.md decision 3).

`create_sharded_state` never materialises an unsharded copy: `jax.eval_shape` gives the boxed
abstract tree, its logical names give the shardings, and `jax.jit(init, out_shardings=...)` builds
every array directly in its final layout.
"""
from __future__ import annotations

from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from terrafm_jax.data.contract import MODALITIES
from terrafm_jax.train import loss as loss_lib
from terrafm_jax.train import sharding as sharding_lib


@flax.struct.dataclass
class TrainState:
  step: jax.Array          # int32, number of completed optimizer steps
  student: Any             # params {"encoder", "head"}
  teacher: Any             # EMA of the student, same tree
  opt_state: Any
  centers: loss_lib.Centers
  rng: jax.Array           # uint32[2] raw key; per-step keys are fold_in(rng, step)
  bad_step: jax.Array      # int32, first (1-based) step with a non-finite loss/gradient, or -1


def dummy_inputs(batch: int, img_size: int, channels: dict[str, int]):
  """All three stems and a fusion mask, so init creates every parameter (stems + fusion)."""
  images = {m: jnp.zeros((batch, img_size, img_size, channels[m]), jnp.float32)
            for m in MODALITIES}
  mask = jnp.ones((batch, len(MODALITIES)), bool)
  return images, mask


def make_param_init_fn(model: nn.Module, config: ml_collections.ConfigDict, init_batch: int,
                       channels: dict[str, int]) -> Callable[[jax.Array], Any]:
  """init(rng) -> boxed (logically partitioned) student params."""

  def init(rng):
    k_params, k_drop = jax.random.split(rng)
    images, mask = dummy_inputs(init_batch, config.model.img_size, channels)
    return model.init({"params": k_params, "drop_path": k_drop}, images, mask,
                      train=False)["params"]

  return init


def make_state_init_fn(param_init, tx: optax.GradientTransformation,
                       num_prototypes: int) -> Callable[[jax.Array], TrainState]:
  """init(rng) -> TrainState with plain (unboxed) arrays."""

  def init(rng):
    k_params, k_state = jax.random.split(rng)
    params = sharding_lib.unbox(param_init(k_params))
    return TrainState(
        step=jnp.zeros([], jnp.int32), student=params,
        teacher=jax.tree.map(jnp.copy, params),  # DINO: the teacher starts as the student
        opt_state=tx.init(params), centers=loss_lib.init_centers(num_prototypes),
        rng=jax.random.key_data(k_state), bad_step=jnp.full([], -1, jnp.int32))

  return init


def state_shardings(param_init, tx: optax.GradientTransformation, rng: jax.Array, mesh,
                    rules) -> TrainState:
  """Shardings of every state leaf: params from their logical names, Adam moments like their
  parameter, everything else (counters, centers, rng) replicated."""
  boxed = jax.eval_shape(param_init, rng)
  param_sh = sharding_lib.tree_shardings(boxed, mesh, rules)
  params = sharding_lib.unbox(boxed)
  sharding_lib.check_divisible(params, param_sh)
  rep = sharding_lib.replicated(mesh)
  abstract_opt = jax.eval_shape(tx.init, params)
  opt_sh = optax.tree_map_params(tx, lambda _, s: s, abstract_opt, param_sh,
                                 transform_non_params=lambda _: rep)
  return TrainState(step=rep, student=param_sh, teacher=param_sh, opt_state=opt_sh,
                    centers=loss_lib.Centers(rep, rep), rng=rep, bad_step=rep)


def create_sharded_state(state_init, shardings: TrainState, rng: jax.Array,
                         rules) -> TrainState:
  """The state, born sharded (no unsharded copy ever exists).

  Init runs without logical-axis rules (flax would otherwise constrain every boxed parameter as
  it is created); `out_shardings` fixes the layout.
  """
  del rules
  return jax.jit(state_init, out_shardings=shardings)(rng)


def abstract_state(state_init, shardings: TrainState, rng: jax.Array) -> TrainState:
  """ShapeDtypeStructs carrying the target shardings: the restore target for Orbax."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      jax.eval_shape(state_init, rng), shardings)
