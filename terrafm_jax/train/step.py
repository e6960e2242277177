"""The DINO train step: teacher on the global views, student on all views, dual-centered loss,
AdamW, EMA teacher, center updates. One static graph; jitted and donated by the trainer.

A step whose loss or gradient norm is not finite leaves the state untouched (parameters, optimizer,
centers) and records its index in `state.bad_step`; the host reads that flag lazily and stops, so
the last checkpoint stays good and no per-step host sync is needed. Such a step reports NaN for
`param_norm` and `update_norm` (no update was made).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from terrafm_jax.data.contract import InputContract
from terrafm_jax.train import run_plan
from terrafm_jax.train import loss as loss_lib
from terrafm_jax.train import schedules as schedules_lib
from terrafm_jax.train import views as views_lib
from terrafm_jax.train.state import TrainState


def tree_norm(tree: Any) -> jax.Array:
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def make_train_step(model: nn.Module, tx: optax.GradientTransformation,
                    scheds: schedules_lib.Schedules, plan: run_plan.RunPlan,
                    contract: InputContract) -> Callable[[TrainState, Mapping[str, jax.Array]],
                                                          tuple[TrainState, dict[str, jax.Array]]]:
  config = plan.config
  d = config.dino
  compute_dtype = jnp.dtype(config.model.dtype)
  use_drop_path = config.model.drop_path_rate > 0
  # Static per-block group sizes of each view family (data/modality_groups.py), or None.
  quotas = plan.quotas

  def grouped(groups, family):
    return {} if quotas[family] is None else {"groups": groups, "group_sizes": quotas[family]}

  def train_step(state: TrainState, batch: Mapping[str, jax.Array]):
    step = state.step
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), step)
    k_global, k_local = jax.random.split(key)
    # The jitter's key is folded from the step key, so the split above (drop path) is unchanged.
    views = views_lib.make_views(batch, contract, config.data, compute_dtype,
                                 modalities=plan.modalities_run,
                                 key=jax.random.fold_in(key, 0x5EC7))
    b = batch["label"].shape[0]

    teacher_logits = model.apply({"params": state.teacher}, views.global_images,
                                 views.teacher_mask, train=False,
                                 **grouped(views.teacher_groups, "teacher"))["logits"]
    teacher_logits = views_lib.per_view(jax.lax.stop_gradient(teacher_logits), b)
    # (n_g, B) / (V, B): False for a view the modality-group plan could not serve (rule 4).
    teacher_valid = batch["teacher_valid"].T if "teacher_valid" in batch else None
    student_valid = batch["student_valid"].T if "student_valid" in batch else None
    teacher_temp = scheds.teacher_temp(step)

    def student_logits(params, images, mask, rng, groups):
      rngs = {"drop_path": rng} if use_drop_path else {}
      out = model.apply({"params": params}, images, mask, train=True, rngs=rngs,
                        **groups)["logits"]
      return views_lib.per_view(out, b)

    def loss_fn(params):
      s = student_logits(params, views.global_images, views.student_global_mask, k_global,
                         grouped(views.student_global_groups, "student_global"))
      if views.local_images is not None:
        s_local = student_logits(params, views.local_images, views.student_local_mask, k_local,
                                 grouped(views.student_local_groups, "student_local"))
        s = jnp.concatenate([s, s_local], axis=0)
      out = loss_lib.dino_loss(s, teacher_logits, state.centers, student_temp=d.student_temp,
                               teacher_temp=teacher_temp, alpha=d.alpha,
                               teacher_valid=teacher_valid, student_valid=student_valid)
      return out.loss, out

    (loss, out), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.student)
    grad_norm = tree_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    momentum = scheds.momentum(step)
    centers, count_h = loss_lib.update_centers(
        teacher_logits, batch["label"], state.centers, high_freq_classes=d.high_freq_classes,
        momentum=d.center_momentum, momentum_h=d.center_h_momentum, teacher_valid=teacher_valid)

    def apply_update():
      updates, opt_state = tx.update(grads, state.opt_state, state.student)
      student = optax.apply_updates(state.student, updates)
      # EMA after the optimizer step, over every parameter (encoder, fusion, head), as DINO.
      teacher = jax.tree.map(lambda t, s_: momentum * t + (1.0 - momentum) * s_,
                             state.teacher, student)
      new = TrainState(step=step + 1, student=student, teacher=teacher, opt_state=opt_state,
                       centers=centers, rng=state.rng, bad_step=state.bad_step)
      return new, (tree_norm(student), tree_norm(updates))

    def skip_update():
      nan = jnp.full((), jnp.nan, jnp.float32)
      return TrainState(step=step + 1, student=state.student, teacher=state.teacher,
                        opt_state=state.opt_state, centers=state.centers, rng=state.rng,
                        bad_step=jnp.where(state.bad_step < 0, step + 1, state.bad_step)), (nan, nan)

    # The update itself runs inside the guard's conditional, so the new parameters, moments and
    # teacher are written straight into the (donated) state buffers. A conditional that only
    # picked between the old and the already-updated trees made XLA copy every tree of the state
    # each step (S/16: 450 -> 200 ms for the post-gradient part, PyTorch 210 ms; issue #9).
    new_state, (param_norm, update_norm) = jax.lax.cond(finite, apply_update, skip_update)

    pair_sums, pair_counts = loss_lib.pair_loss_sums(out.per_sample_ce, out.pair_mask,
                                                     batch["teacher_masks"], batch["student_masks"])
    metrics = {
        "loss": loss, "grad_norm": grad_norm, "param_norm": param_norm,
        "update_norm": update_norm,
        "lr": scheds.lr(step), "wd": scheds.weight_decay(step), "momentum": momentum,
        "teacher_temp": teacher_temp,
        "center_norm": jnp.linalg.norm(centers.c), "center_h_norm": jnp.linalg.norm(centers.c_h),
        "center_h_count": count_h, "finite": finite,
        "dropped_views": (jnp.zeros((), jnp.int32) if teacher_valid is None else
                          jnp.sum(~teacher_valid) + jnp.sum(~student_valid)),
        "pair_loss_sums": pair_sums, "pair_loss_counts": pair_counts,
        **loss_lib.collapse_stats(out.teacher_probs),
    }
    return new_state, metrics

  return train_step
