"""AdamW as DINO trains it (METHOD.md 1.7, 6), built from the config with regex masks.

Chain: per-tensor gradient clipping -> Adam moments -> decoupled weight decay (cosine schedule,
masked) -> learning rate (warm-up + cosine) -> zero updates of the frozen last layer during the
first epoch(s).

Differences from PyTorch worth knowing: DINO drops the last layer's gradient (`p.grad = None`)
during epoch 0, so AdamW neither moves nor decays it; here its update is zeroed, which is the
same for the parameter, and its moments stay exactly 0. Optax keeps one Adam step counter for all
tensors, so the first unfrozen updates of the last layer get a fully warmed bias correction.
"""
from __future__ import annotations

import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from terrafm_jax.train import schedules as schedules_lib


def param_path(path: tuple[Any, ...]) -> str:
  """'encoder/blocks_0/attn/qkv/kernel' from a jax tree path."""
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return "/".join(parts)


def path_mask(params: Any, fn) -> Any:
  """A bool tree: fn(path_string, leaf) for every leaf."""
  return jax.tree_util.tree_map_with_path(lambda p, x: bool(fn(param_path(p), x)), params)


def weight_decay_mask(params: Any, exclude_regex: str, include_regex: str) -> Any:
  """DINO `get_params_groups`: no decay on biases and 1-D tensors (norm scales).

  `include_regex` forces decay on names DINO decays because they are not 1-D in PyTorch (cls_token,
  pos_embed, the (1, A) modality embeddings), whatever their Flax shape. `exclude_regex` exempts
  more names.
  """
  inc = re.compile(include_regex) if include_regex else None
  exc = re.compile(exclude_regex) if exclude_regex else None

  def decay(name, x):
    if inc is not None and inc.search(name):
      return True
    if exc is not None and exc.search(name):
      return False
    return x.ndim > 1

  return path_mask(params, decay)


def clip_per_tensor(max_norm: float) -> optax.GradientTransformation:
  """DINO `clip_gradients`: g_p *= min(1, clip / (||g_p|| + 1e-6)) for each tensor p separately."""

  def update_fn(updates, state, params=None):
    del params

    def clip(g):
      norm = jnp.sqrt(jnp.sum(jnp.square(g.astype(jnp.float32))))
      coef = jnp.minimum(max_norm / (norm + 1e-6), 1.0)
      return (g * coef).astype(g.dtype)

    return jax.tree.map(clip, updates), state

  return optax.GradientTransformation(lambda _: optax.EmptyState(), update_fn)


class FreezeState(NamedTuple):
  count: jax.Array


def freeze_for_steps(mask: Any, num_steps: int) -> optax.GradientTransformation:
  """Zero the updates of masked tensors while the step count is < num_steps."""

  def init_fn(params):
    del params
    return FreezeState(jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    del params
    frozen = state.count < num_steps
    updates = jax.tree.map(lambda u, m: jnp.where(frozen, jnp.zeros_like(u), u) if m else u,
                           updates, mask)
    return updates, FreezeState(optax.safe_increment(state.count))

  return optax.GradientTransformation(init_fn, update_fn)


def make_optimizer(config: ml_collections.ConfigDict, params: Any,
                   scheds: schedules_lib.Schedules) -> optax.GradientTransformation:
  """The full optimizer. `params` may be abstract (shapes only); it is used for the masks."""
  o = config.optim
  wd_mask = weight_decay_mask(params, o.wd_exclude_regex, o.wd_include_regex)
  parts = []
  if o.clip_grad and o.clip_grad > 0:
    parts.append(clip_per_tensor(o.clip_grad))
  parts += [
      optax.scale_by_adam(b1=o.b1, b2=o.b2, eps=o.eps),
      optax.add_decayed_weights(scheds.weight_decay, mask=wd_mask),
      optax.scale_by_learning_rate(scheds.lr),
  ]
  freeze_steps = int(round(o.freeze_last_layer_epochs * config.steps_per_epoch))
  if freeze_steps > 0:
    rx = re.compile(o.freeze_regex)
    parts.append(freeze_for_steps(path_mask(params, lambda n, _: rx.search(n)), freeze_steps))
  return optax.chain(*parts)
