"""DINO cross-entropy with TerraFM's dual centering (METHOD.md sections 2 and 3).

Pure functions of global arrays. Inside `jax.jit` every mean below is over the *global* batch,
whatever the sharding: XLA inserts the all-reduce, so the centers are updated "across all
devices" without an explicit `pmean`.

Shapes: teacher logits (n_global, B, K), student logits (V, B, K) with the global views first
(student view v == teacher view v for v < n_global), labels (B,).
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp


class Centers(NamedTuple):
  """The two running teacher centers of dual centering, both (K,) float32."""
  c: jax.Array    # DINO batch center over all samples.
  c_h: jax.Array  # Center over samples whose land-cover label is in the high-frequency set H.


def init_centers(num_prototypes: int) -> Centers:
  return Centers(jnp.zeros((num_prototypes,), jnp.float32),
                 jnp.zeros((num_prototypes,), jnp.float32))


def in_high_freq_set(labels: jax.Array, high_freq_classes: Sequence[int]) -> jax.Array:
  """(B,) bool: label in H. An empty H gives all False (c_h is then never updated)."""
  h = jnp.zeros(labels.shape, bool)
  for cls in high_freq_classes:
    h = h | (labels == cls)
  return h


def centered_teacher_logits(teacher_logits: jax.Array, centers: Centers,
                            alpha: float) -> jax.Array:
  """g_hat = g - alpha * c - (1 - alpha) * c_h, applied to every sample (METHOD.md 3)."""
  return teacher_logits - alpha * centers.c - (1.0 - alpha) * centers.c_h


def update_centers(teacher_logits: jax.Array, labels: jax.Array, centers: Centers, *,
                   high_freq_classes: Sequence[int], momentum: float,
                   momentum_h: float, teacher_valid: jax.Array | None = None
                   ) -> tuple[Centers, jax.Array]:
  """EMA update of both centers from the raw teacher logits of the global views.

  Returns the new centers and the number of (view, sample) pairs that fed c_h. When no sample of
  H is in the global batch, c_h is kept unchanged (METHOD.md 3, recommended default).
  """
  t = jax.lax.stop_gradient(teacher_logits).astype(jnp.float32)
  h = in_high_freq_set(labels, high_freq_classes).astype(jnp.float32)  # (B,)
  if teacher_valid is None:
    batch_c = jnp.mean(t, axis=(0, 1))
    count_h = jnp.sum(h) * t.shape[0]
    sum_h = jnp.einsum("vbk,b->k", t, h)
  else:  # (n_g, B): views left out by the modality-group plan do not feed the centers
    w = teacher_valid.astype(jnp.float32)
    batch_c = jnp.einsum("vbk,vb->k", t, w) / jnp.maximum(jnp.sum(w), 1.0)
    wh = w * h[None, :]
    count_h = jnp.sum(wh)
    sum_h = jnp.einsum("vbk,vb->k", t, wh)
  batch_c_h = sum_h / jnp.maximum(count_h, 1.0)
  new_c = momentum * centers.c + (1.0 - momentum) * batch_c
  new_c_h = jnp.where(count_h > 0,
                      momentum_h * centers.c_h + (1.0 - momentum_h) * batch_c_h,
                      centers.c_h)
  return Centers(new_c, new_c_h), count_h


class DinoLossOut(NamedTuple):
  loss: jax.Array             # scalar, mean over pairs and global batch
  per_sample_ce: jax.Array    # (n_global, V, B) cross-entropy of each (teacher, student) view pair
  pair_mask: jax.Array        # (n_global, V) bool, True where the view indices differ
  teacher_probs: jax.Array    # (n_global, B, K) centered, sharpened teacher distribution


def dino_loss(student_logits: jax.Array, teacher_logits: jax.Array, centers: Centers, *,
              student_temp: float, teacher_temp: jax.Array | float,
              alpha: float, teacher_valid: jax.Array | None = None,
              student_valid: jax.Array | None = None) -> DinoLossOut:
  """L = 1/n_pairs sum_{i<n_g} sum_{v != i} mean_b CE(P_t(x_i), P_s(x_v)) (METHOD.md 2).

  Softmax, centering and loss run in float32 whatever the compute dtype (METHOD.md 1.7).
  """
  n_global = teacher_logits.shape[0]
  n_views = student_logits.shape[0]
  t = jax.lax.stop_gradient(teacher_logits).astype(jnp.float32)
  t = centered_teacher_logits(t, centers, alpha)
  p_t = jax.nn.softmax(t / teacher_temp, axis=-1)
  log_p_s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / student_temp, axis=-1)
  # (n_g, V, B): -sum_k p_t[i,b,k] log p_s[v,b,k]; one einsum avoids materialising the pairs.
  ce = -jnp.einsum("ibk,vbk->ivb", p_t, log_p_s)
  pair_mask = jnp.arange(n_global)[:, None] != jnp.arange(n_views)[None, :]
  n_pairs = n_global * n_views - min(n_global, n_views)
  if teacher_valid is None and student_valid is None:
    loss = jnp.sum(jnp.where(pair_mask[:, :, None], ce, 0.0)) / (n_pairs * ce.shape[-1])
    return DinoLossOut(loss, ce, pair_mask, p_t)
  # Views left out by the modality-group plan ((n_g, B) / (V, B) bool) weigh 0 in the mean.
  wt = jnp.ones(t.shape[:2]) if teacher_valid is None else teacher_valid.astype(jnp.float32)
  ws = (jnp.ones(log_p_s.shape[:2]) if student_valid is None
        else student_valid.astype(jnp.float32))
  w = pair_mask[:, :, None] * wt[:, None, :] * ws[None, :, :]
  loss = jnp.sum(w * ce) / jnp.maximum(jnp.sum(w), 1.0)
  return DinoLossOut(loss, ce, pair_mask, p_t)


def modality_category(masks: jax.Array) -> jax.Array:
  """(..., 3) bool modality masks -> int category: 0..2 = that single modality, 3 = fused."""
  n = jnp.sum(masks.astype(jnp.int32), axis=-1)
  return jnp.where(n == 1, jnp.argmax(masks, axis=-1), 3).astype(jnp.int32)


def pair_loss_sums(per_sample_ce: jax.Array, pair_mask: jax.Array, teacher_masks: jax.Array,
                   student_masks: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Loss summed per (teacher category, student category): (4, 4) sums and (4, 4) counts.

  Categories as `modality_category`. The host divides (skipping empty cells), so nothing here
  needs a sync. teacher_masks (B, n_g, 3), student_masks (B, V, 3).
  """
  cat_t = modality_category(teacher_masks).T  # (n_g, B)
  cat_s = modality_category(student_masks).T  # (V, B)
  oh_t = jax.nn.one_hot(cat_t, 4, dtype=jnp.float32)  # (n_g, B, 4)
  oh_s = jax.nn.one_hot(cat_s, 4, dtype=jnp.float32)  # (V, B, 4)
  w = pair_mask.astype(jnp.float32)
  sums = jnp.einsum("ivb,iv,ibp,vbq->pq", per_sample_ce, w, oh_t, oh_s)
  counts = jnp.einsum("iv,ibp,vbq->pq", w, oh_t, oh_s)
  return sums, counts


def collapse_stats(teacher_probs: jax.Array) -> dict[str, jax.Array]:
  """Collapse monitors of the teacher output (DINO section 5.3).

  teacher_entropy: mean per-sample entropy (-> 0 when the teacher is one-hot / sharpened to death);
  teacher_kl_uniform: KL(mean_b P_t || uniform) = log K - H(mean_b P_t) (-> log K when every sample
  lands on the same prototype, ~0 when outputs spread uniformly).
  """
  p = teacher_probs  # (..., B, K); reduced over the leading axes, never reshaped (a reshape that
  k = p.shape[-1]     # merges the sharded batch axis with the view axis gathers it)
  ent = -jnp.sum(p * jnp.log(jnp.clip(p, 1e-30)), axis=-1)
  p_mean = jnp.mean(p, axis=tuple(range(p.ndim - 1)))
  ent_mean = -jnp.sum(p_mean * jnp.log(jnp.clip(p_mean, 1e-30)))
  return {"teacher_entropy": jnp.mean(ent), "teacher_kl_uniform": jnp.log(k) - ent_mean}
