"""AdamW as DINO trains it (METHOD.md 1.7, 6), built from the config with regex masks.

Chain: zero the gradients of the frozen last layer (first epoch(s)) -> per-tensor gradient
clipping -> Adam moments (per-tensor bias correction, below) -> decoupled weight decay (cosine
schedule, masked) -> learning rate (warm-up + cosine) -> zero the updates of the frozen last layer.

DINO drops the last layer's gradient (`p.grad = None`) during epoch 0, so PyTorch's AdamW skips
that parameter entirely: it does not move, is not decayed, its moments stay 0, and its
per-parameter step count only starts at its first real gradient. Here the same holds: its
gradient is zeroed before clipping and Adam, `scale_by_adam_delayed` leaves its moments at exactly
0 while frozen and counts its bias correction from the first unfrozen step (optax's
`scale_by_adam` keeps one step counter for all tensors, which would under-correct the fresh
moments and scale the first unfrozen updates by up to ~6x after a long freeze), and its final
update (which would otherwise hold the decay term lr * wd * p) is zeroed. Changing this chain
changes the optimizer-state tree, so checkpoints written before it do not restore into it.
"""
from __future__ import annotations

import re
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import optax

from terrafm_jax.models.patch_embed import EMBED_NAMES, STEM_NAMES
from terrafm_jax.train import schedules as schedules_lib


def param_path(path: tuple[Any, ...]) -> str:
  """'encoder/blocks_0/attn/qkv/kernel' from a jax tree path."""
  return jax.tree_util.keystr(path, simple=True, separator="/")


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
  """Zero the incoming values (gradients or updates) of masked tensors while step < num_steps.

  make_optimizer uses it twice: first in the chain (the gradient never reaches clipping or Adam)
  and last (no weight decay either).
  """

  def init_fn(params):
    del params
    return FreezeState(jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    del params
    frozen = state.count < num_steps
    # A conditional, not a per-element select: the frozen tensor is the 65k-prototype last layer
    # (16.8 M values), and a select reads and writes all of it every step (issue #9).
    updates = jax.tree.map(
        lambda u, m: jax.lax.cond(frozen, jnp.zeros_like, lambda x: x, u) if m else u,
        updates, mask)
    return updates, FreezeState(optax.safe_increment(state.count))

  return optax.GradientTransformation(init_fn, update_fn)


class DelayedAdamState(NamedTuple):
  count: jax.Array  # global step count (scalar)
  mu: Any
  nu: Any


def scale_by_adam_delayed(start_steps: Any, b1: float = 0.9, b2: float = 0.999,
                          eps: float = 1e-8) -> optax.GradientTransformation:
  """`optax.scale_by_adam` where tensor p only takes part from global step `start_steps[p]` on.

  Before its start step a tensor's update is 0 and its moments are left untouched (0); from then
  on its bias correction counts the steps since its start, as PyTorch's per-parameter Adam state
  does for a parameter whose gradient was None until then. `start_steps` is a tree of Python ints
  with the structure of the parameters (0: a plain Adam tensor).
  """

  def init_fn(params):
    zeros = lambda p: jnp.zeros_like(p)  # noqa: E731
    return DelayedAdamState(jnp.zeros([], jnp.int32), jax.tree.map(zeros, params),
                            jax.tree.map(zeros, params))

  def update_fn(updates, state, params=None):
    del params
    count = state.count

    def adam(g, m, v, start):
      m_new = b1 * m + (1.0 - b1) * g
      v_new = b2 * v + (1.0 - b2) * jnp.square(g)
      t = jnp.maximum(count - start + 1, 1).astype(jnp.float32)
      u = (m_new / (1.0 - b1 ** t)) / (jnp.sqrt(v_new / (1.0 - b2 ** t)) + eps)
      return u.astype(g.dtype), m_new.astype(m.dtype), v_new.astype(v.dtype)

    def leaf(g, m, v, start):
      if start == 0:
        return adam(g, m, v, start)
      # Before its start step the tensor keeps its moments and gets no update. A conditional
      # skips the Adam arithmetic of the (large) frozen tensor; selects would compute it (#9).
      return jax.lax.cond(count >= start, lambda: adam(g, m, v, start),
                          lambda: (jnp.zeros_like(g), m, v))

    out = jax.tree.map(leaf, updates, state.mu, state.nu, start_steps)
    u, mu, nu = jax.tree.transpose(jax.tree.structure(updates), jax.tree.structure((0, 0, 0)), out)
    return u, DelayedAdamState(optax.safe_increment(count), mu, nu)

  return optax.GradientTransformation(init_fn, update_fn)


def idle_param_mask(params: Any, unused_modalities: Sequence[str], fusion_idle: bool) -> Any:
  """True for the stem (`conv2d_<m>`) and modality embedding (`<m>_embed`) of each of
  `unused_modalities`, and for the cross-attention fusion when `fusion_idle`."""
  pats = ([rf"(^|/){STEM_NAMES[m]}/" for m in unused_modalities] +
          [rf"(^|/){EMBED_NAMES[m]}$" for m in unused_modalities])
  if fusion_idle:
    pats.append(r"(^|/)patch_embed/fusion/")
  rx = re.compile("|".join(pats)) if pats else None
  return path_mask(params, lambda n, _: rx is not None and rx.search(n))


def make_optimizer(config: ml_collections.ConfigDict, params: Any,
                   scheds: schedules_lib.Schedules,
                   idle: tuple[tuple[str, ...], bool] = ((), False)
                   ) -> optax.GradientTransformation:
  """The full optimizer. `params` may be abstract (shapes only); it is used for the masks.
  `idle`: (stems, fusion) the step never runs (RunPlan.idle)."""
  o = config.optim
  wd_mask = weight_decay_mask(params, o.wd_exclude_regex, o.wd_include_regex)
  if idle[0] or idle[1]:
    # Parameters the step never runs (modality groups: stems and the fusion no group uses) get
    # zero gradients; PyTorch leaves their grad None, so AdamW neither moves nor decays them.
    # Without decay here they stay exactly at their values too (zero gradients keep their Adam
    # moments at 0), ready for a later multi-modal run.
    idle_mask = idle_param_mask(params, *idle)
    wd_mask = jax.tree.map(lambda d, i: d and not i, wd_mask, idle_mask)
  freeze_steps = int(round(o.freeze_last_layer_epochs * config.steps_per_epoch))
  if freeze_steps > 0:
    rx = re.compile(o.freeze_regex)
    freeze_mask = path_mask(params, lambda n, _: rx.search(n))
  else:
    freeze_mask = jax.tree.map(lambda _: False, params)
  start_steps = jax.tree.map(lambda m: freeze_steps if m else 0, freeze_mask)
  parts = []
  if freeze_steps > 0:
    parts.append(freeze_for_steps(freeze_mask, freeze_steps))  # the gradient is dropped
  if o.clip_grad and o.clip_grad > 0:
    parts.append(clip_per_tensor(o.clip_grad))
  parts += [
      scale_by_adam_delayed(start_steps, b1=o.b1, b2=o.b2, eps=o.eps),
      optax.add_decayed_weights(scheds.weight_decay, mask=wd_mask),
      optax.scale_by_learning_rate(scheds.lr),
  ]
  if freeze_steps > 0:
    parts.append(freeze_for_steps(freeze_mask, freeze_steps))  # and no decay moves it
  return optax.chain(*parts)
