"""DINO loss and dual centering against a plain NumPy re-statement of METHOD.md 2-3."""
from __future__ import annotations

import numpy as np
import pytest

# The formulas, written loop by loop, independent of terrafm_jax (exec'd here and in the
# multi-device subprocess).
NUMPY_REF = r'''
import numpy as np

def np_softmax(x):
  x = np.asarray(x, np.float64)
  x = x - x.max(-1, keepdims=True)
  e = np.exp(x)
  return e / e.sum(-1, keepdims=True)

def np_log_softmax(x):
  x = np.asarray(x, np.float64)
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))

def np_dino(student, teacher, c, c_h, labels, H, tau_s, tau_t, alpha, m, m_h):
  n_g, B, K = teacher.shape
  V = student.shape[0]
  total, pairs = 0.0, 0
  for i in range(n_g):
    p_t = np_softmax((teacher[i] - alpha * c - (1 - alpha) * c_h) / tau_t)
    for v in range(V):
      if v == i:
        continue
      log_p_s = np_log_softmax(student[v] / tau_s)
      total += np.mean(-(p_t * log_p_s).sum(-1))
      pairs += 1
  loss = total / pairs
  new_c = m * c + (1 - m) * teacher.reshape(-1, K).mean(0)
  sel = [b for b in range(B) if labels[b] in H]
  if sel:
    rows = np.concatenate([teacher[i][sel] for i in range(n_g)], 0)
    new_c_h = m_h * c_h + (1 - m_h) * rows.mean(0)
  else:
    new_c_h = c_h
  return loss, new_c, new_c_h
'''
exec(NUMPY_REF)  # pylint: disable=exec-used


def _inputs(seed, n_g=2, v=8, b=16, k=32):
  rng = np.random.default_rng(seed)
  return dict(student=rng.normal(size=(v, b, k)).astype(np.float32) * 3,
              teacher=rng.normal(size=(n_g, b, k)).astype(np.float32) * 3,
              c=rng.normal(size=k).astype(np.float32), c_h=rng.normal(size=k).astype(np.float32),
              labels=rng.integers(0, 11, size=b).astype(np.int32))


@pytest.mark.parametrize("H", [(0, 2, 7), (), (10,)])
def test_loss_and_centers_match_numpy(H):
  import jax.numpy as jnp
  from terrafm_jax.train import loss as L
  x = _inputs(0)
  if H == (10,):
    x["labels"] = np.where(x["labels"] == 10, 9, x["labels"])  # no sample of H in the batch
  kw = dict(tau_s=0.1, tau_t=0.05, alpha=0.8, m=0.9, m_h=0.8)
  ref_loss, ref_c, ref_ch = np_dino(x["student"], x["teacher"], x["c"], x["c_h"], x["labels"],
                                    H, **kw)  # noqa: F821
  centers = L.Centers(jnp.asarray(x["c"]), jnp.asarray(x["c_h"]))
  out = L.dino_loss(jnp.asarray(x["student"]), jnp.asarray(x["teacher"]), centers,
                    student_temp=0.1, teacher_temp=0.05, alpha=0.8)
  new, count = L.update_centers(jnp.asarray(x["teacher"]), jnp.asarray(x["labels"]), centers,
                                high_freq_classes=H, momentum=0.9, momentum_h=0.8)
  np.testing.assert_allclose(float(out.loss), ref_loss, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(new.c), ref_c, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(new.c_h), ref_ch, rtol=1e-5, atol=1e-6)
  if H == (10,):
    np.testing.assert_array_equal(np.asarray(new.c_h), x["c_h"])  # skipped, unchanged
    assert float(count) == 0


def test_pair_losses_sum_to_loss_and_collapse_stats():
  import jax.numpy as jnp
  from terrafm_jax.train import loss as L
  x = _inputs(1, b=12)
  rng = np.random.default_rng(2)
  smask = rng.random((12, 8, 3)) < 0.5
  smask[..., 0] |= ~smask.any(-1)
  tmask = rng.random((12, 2, 3)) < 0.5
  tmask[..., 2] |= ~tmask.any(-1)
  centers = L.init_centers(32)
  out = L.dino_loss(jnp.asarray(x["student"]), jnp.asarray(x["teacher"]), centers,
                    student_temp=0.1, teacher_temp=0.04, alpha=0.8)
  sums, counts = L.pair_loss_sums(out.per_sample_ce, out.pair_mask, jnp.asarray(tmask),
                                  jnp.asarray(smask))
  assert float(jnp.sum(counts)) == 14 * 12
  np.testing.assert_allclose(float(jnp.sum(sums) / jnp.sum(counts)), float(out.loss), rtol=1e-5)
  # One category check by hand: teacher single-S1, student fused.
  cat = lambda m: np.where(m.sum(-1) == 1, m.argmax(-1), 3)
  ct, cs = cat(tmask), cat(smask)
  ce = np.asarray(out.per_sample_ce)
  vals = [ce[i, v, b] for i in range(2) for v in range(8) for b in range(12)
          if v != i and ct[b, i] == 0 and cs[b, v] == 3]
  if vals:
    np.testing.assert_allclose(float(sums[0, 3]), np.sum(vals), rtol=1e-5)
  st = L.collapse_stats(out.teacher_probs)
  p = np.asarray(out.teacher_probs, np.float64).reshape(-1, 32)
  ent = -(p * np.log(np.clip(p, 1e-30, None))).sum(-1).mean()
  pm = p.mean(0)
  np.testing.assert_allclose(float(st["teacher_entropy"]), ent, rtol=1e-5)
  np.testing.assert_allclose(float(st["teacher_kl_uniform"]), np.log(32) + (pm * np.log(pm)).sum(),
                             rtol=1e-4, atol=1e-6)


def test_loss_and_centers_on_8_devices(run_py):
  """Batch sharded over 8 devices (data x fsdp): centers are global means, not per-device ones."""
  out = run_py(NUMPY_REF + r'''
import jax, jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
from terrafm_jax.train import loss as L
assert jax.device_count() == 8
mesh = jax.make_mesh((4, 2), ("data", "fsdp"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
rng = np.random.default_rng(3)
V, NG, B, K = 8, 2, 16, 64
s = rng.normal(size=(V, B, K)).astype(np.float32) * 3
t = rng.normal(size=(NG, B, K)).astype(np.float32) * 3
c, ch = rng.normal(size=K).astype(np.float32), rng.normal(size=K).astype(np.float32)
labels = np.zeros(B, np.int32) + 5
labels[13] = 2  # a single sample of H, on the last device
H = (0, 2, 7)
shard = NamedSharding(mesh, P(None, ("data", "fsdp"), None))
s_d, t_d = jax.device_put(s, shard), jax.device_put(t, shard)
l_d = jax.device_put(labels, NamedSharding(mesh, P(("data", "fsdp"))))

@jax.jit
def f(s, t, labels, c, ch):
  centers = L.Centers(c, ch)
  out = L.dino_loss(s, t, centers, student_temp=0.1, teacher_temp=0.04, alpha=0.8)
  new, _ = L.update_centers(t, labels, centers, high_freq_classes=H, momentum=0.9, momentum_h=0.9)
  return out.loss, new.c, new.c_h

with jax.set_mesh(mesh):
  loss, nc, nch = f(s_d, t_d, l_d, jnp.asarray(c), jnp.asarray(ch))
rl, rc, rch = np_dino(s, t, c, ch, labels, H, 0.1, 0.04, 0.8, 0.9, 0.9)
np.testing.assert_allclose(float(loss), rl, rtol=1e-5)
np.testing.assert_allclose(np.asarray(nc), rc, rtol=1e-5, atol=1e-6)
np.testing.assert_allclose(np.asarray(nch), rch, rtol=1e-5, atol=1e-6)
print("OK", len(s_d.sharding.device_set))
''', num_devices=8)
  assert "OK 8" in out
