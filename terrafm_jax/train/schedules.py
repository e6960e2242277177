"""Per-iteration schedules of the DINO recipe (METHOD.md 2 and 6), as jnp functions of the step.

They are evaluated inside the jitted step from the step counter, so no schedule array crosses from
the host and a schedule value never triggers a recompile.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax.numpy as jnp
import ml_collections

Schedule = Callable[[jnp.ndarray], jnp.ndarray]


def warmup_cosine(base: float, final: float, total_steps: int, warmup_steps: int = 0,
                  warmup_start: float = 0.0) -> Schedule:
  """DINO `utils.cosine_scheduler`: linear warm-up to `base`, then cosine from `base` to `final`.

  cosine(t) = final + 0.5 (base - final)(1 + cos(pi t' / T')), t' = t - warmup, T' = total - warmup.
  Past `total_steps` the value stays at `final`.
  """
  if total_steps <= 0:
    raise ValueError(f"total_steps must be positive, got {total_steps}")
  if warmup_steps < 0:
    raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
  # warmup_steps > total_steps is allowed (short debug runs that stop inside the warm-up).
  decay_steps = max(total_steps - warmup_steps, 1)

  def fn(step):
    t = jnp.asarray(step, jnp.float32)
    warm = warmup_start + (base - warmup_start) * t / max(warmup_steps, 1)
    frac = jnp.clip((t - warmup_steps) / decay_steps, 0.0, 1.0)
    cos = final + 0.5 * (base - final) * (1.0 + jnp.cos(jnp.pi * frac))
    return jnp.where(t < warmup_steps, warm, cos)

  return fn


def linear_warmup_constant(start: float, end: float, warmup_steps: int) -> Schedule:
  """Linear from `start` to `end` over `warmup_steps`, then constant (teacher temperature)."""

  def fn(step):
    t = jnp.asarray(step, jnp.float32)
    if warmup_steps <= 0:
      return jnp.full_like(t, end)
    return start + (end - start) * jnp.clip(t / warmup_steps, 0.0, 1.0)

  return fn


@dataclasses.dataclass(frozen=True)
class Schedules:
  lr: Schedule
  weight_decay: Schedule
  momentum: Schedule
  teacher_temp: Schedule


def scaled_peak_lr(config: ml_collections.ConfigDict) -> float:
  """DINO's linear scaling rule: lr = base_lr * global_batch / lr_batch_reference."""
  return config.optim.base_lr * config.global_batch_size / config.optim.lr_batch_reference


def make_schedules(config: ml_collections.ConfigDict) -> Schedules:
  """All schedules from the config; epochs are converted with `steps_per_epoch`."""
  spe = config.steps_per_epoch
  total = config.total_steps
  o, d = config.optim, config.dino
  return Schedules(
      lr=warmup_cosine(scaled_peak_lr(config), o.min_lr, total,
                       warmup_steps=int(round(o.warmup_epochs * spe))),
      weight_decay=warmup_cosine(o.weight_decay, o.weight_decay_end, total),
      # EMA momentum: 1 - (1 - m0)(cos(pi t / T) + 1) / 2, i.e. cosine m0 -> 1, no warm-up.
      momentum=warmup_cosine(d.momentum_teacher, d.momentum_teacher_end, total),
      teacher_temp=linear_warmup_constant(d.warmup_teacher_temp, d.teacher_temp,
                                          int(round(d.warmup_teacher_temp_epochs * spe))),
  )
