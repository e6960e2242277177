"""The frozen last layer: DINO drops its gradient (p.grad = None) during the first epoch(s).

PyTorch's AdamW then skips the parameter entirely: no move, no decay, no moment update, and its
per-parameter step count starts at its first real gradient.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from terrafm_jax.train import optim, schedules as S

FREEZE_STEPS = 3


def _config(clip_grad=1.0):
  return ml_collections.ConfigDict(dict(
      global_batch_size=256, steps_per_epoch=FREEZE_STEPS, total_steps=12,
      optim=dict(base_lr=0.1, lr_batch_reference=256, min_lr=1e-3, warmup_epochs=1.0,
                 weight_decay=0.04, weight_decay_end=0.4, b1=0.9, b2=0.999, eps=1e-8,
                 clip_grad=clip_grad, freeze_last_layer_epochs=1.0,
                 freeze_regex=r"^head/last_layer$",
                 wd_exclude_regex=r"(^|/)bias$", wd_include_regex=r"(cls_token|pos_embed|_embed)$"),
      dino=dict(momentum_teacher=0.996, momentum_teacher_end=1.0, warmup_teacher_temp=0.04,
                teacher_temp=0.06, warmup_teacher_temp_epochs=0.0)))


def _params():
  rng = np.random.default_rng(0)
  return {"encoder": {"fc": {"kernel": jnp.asarray(rng.standard_normal((4, 3)), jnp.float32),
                             "bias": jnp.asarray(rng.standard_normal(3), jnp.float32)}},
          "head": {"last_layer": jnp.asarray(rng.standard_normal((3, 5)), jnp.float32)}}


def _grads(params, step):
  rng = np.random.default_rng(100 + step)
  return jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), jnp.float32), params)


def _moments(state, name):
  return optax.tree_utils.tree_get(state, name)


def test_frozen_last_layer_keeps_params_and_zero_moments_then_moves():
  c = _config()
  params = _params()
  tx = optim.make_optimizer(c, params, S.make_schedules(c))
  state = tx.init(params)
  p0 = jax.tree.map(np.asarray, params)
  update = jax.jit(tx.update)
  for step in range(FREEZE_STEPS):
    upd, state = update(_grads(params, step), state, params)
    params = optax.apply_updates(params, upd)
    # Unchanged to the bit (no Adam step, no weight decay) and the moments never saw a gradient.
    np.testing.assert_array_equal(np.asarray(params["head"]["last_layer"]),
                                  p0["head"]["last_layer"])
    for name in ("mu", "nu"):
      np.testing.assert_array_equal(np.asarray(_moments(state, name)["head"]["last_layer"]), 0.0)
  # The other tensors trained (kernel: Adam + decay; bias: Adam only).
  assert np.abs(np.asarray(params["encoder"]["fc"]["kernel"]) - p0["encoder"]["fc"]["kernel"]
                ).min() > 0
  assert np.abs(np.asarray(params["encoder"]["fc"]["bias"]) - p0["encoder"]["fc"]["bias"]).min() > 0
  assert np.abs(np.asarray(_moments(state, "nu")["encoder"]["fc"]["kernel"])).min() > 0
  # The freeze ends after FREEZE_STEPS steps.
  upd, state = update(_grads(params, FREEZE_STEPS), state, params)
  params = optax.apply_updates(params, upd)
  assert np.abs(np.asarray(params["head"]["last_layer"]) - p0["head"]["last_layer"]).min() > 0
  assert np.abs(np.asarray(_moments(state, "mu")["head"]["last_layer"])).min() > 0


def _dino_torch_trajectory(c, params, steps):
  """DINO's loop with torch.optim.AdamW: per-tensor clip, `p.grad = None` on the frozen last layer
  during epoch 0, lr for every group and wd for the regularised group set per iteration."""
  torch = pytest.importorskip("torch")
  scheds = S.make_schedules(c)
  names = ["encoder/fc/kernel", "encoder/fc/bias", "head/last_layer"]
  flat = {"encoder/fc/kernel": params["encoder"]["fc"]["kernel"],
          "encoder/fc/bias": params["encoder"]["fc"]["bias"],
          "head/last_layer": params["head"]["last_layer"]}
  tp = {n: torch.nn.Parameter(torch.tensor(np.asarray(flat[n]))) for n in names}
  regularized = [tp["encoder/fc/kernel"], tp["head/last_layer"]]
  opt = torch.optim.AdamW([{"params": regularized}, {"params": [tp["encoder/fc/bias"]],
                                                     "weight_decay": 0.0}],
                          betas=(c.optim.b1, c.optim.b2), eps=c.optim.eps)
  out = []
  for step in range(steps):
    for i, group in enumerate(opt.param_groups):
      group["lr"] = float(scheds.lr(step))
      if i == 0:
        group["weight_decay"] = float(scheds.weight_decay(step))
    g = _grads(params, step)
    gflat = {"encoder/fc/kernel": g["encoder"]["fc"]["kernel"], "encoder/fc/bias":
             g["encoder"]["fc"]["bias"], "head/last_layer": g["head"]["last_layer"]}
    for n in names:
      grad = torch.tensor(np.asarray(gflat[n]))
      norm = grad.norm(2)
      coef = c.optim.clip_grad / (norm + 1e-6)
      if coef < 1:
        grad = grad * coef
      tp[n].grad = grad
    if step < FREEZE_STEPS:
      tp["head/last_layer"].grad = None
    opt.step()
    out.append({n: tp[n].detach().numpy().copy() for n in names})
  return out


def test_matches_torch_adamw_with_dropped_last_layer_gradient():
  c = _config()
  params = _params()
  steps = 2 * FREEZE_STEPS + 2
  ref = _dino_torch_trajectory(c, params, steps)
  tx = optim.make_optimizer(c, params, S.make_schedules(c))
  state = tx.init(params)
  update = jax.jit(tx.update)
  for step in range(steps):
    upd, state = update(_grads(params, step), state, params)
    params = optax.apply_updates(params, upd)
    ours = {"encoder/fc/kernel": params["encoder"]["fc"]["kernel"],
            "encoder/fc/bias": params["encoder"]["fc"]["bias"],
            "head/last_layer": params["head"]["last_layer"]}
    for n, want in ref[step].items():
      np.testing.assert_allclose(np.asarray(ours[n]), want, rtol=2e-5, atol=2e-6,
                                 err_msg=f"{n} after step {step}")


def test_delayed_adam_bias_correction_starts_at_the_first_real_gradient():
  # Constant gradient: PyTorch's first step of a parameter is g / (|g| + eps) = sign(g), whatever
  # the global step count when that parameter receives its first gradient.
  tx = optim.scale_by_adam_delayed({"a": 0, "b": 5}, b1=0.9, b2=0.999, eps=1e-8)
  params = {"a": jnp.zeros(2), "b": jnp.zeros(2)}
  state = tx.init(params)
  g = {"a": jnp.asarray([2.0, -3.0]), "b": jnp.asarray([2.0, -3.0])}
  for step in range(7):
    upd, state = tx.update(g, state, params)
    if step < 5:
      np.testing.assert_array_equal(np.asarray(upd["b"]), 0.0)
      np.testing.assert_array_equal(np.asarray(state.mu["b"]), 0.0)
    else:
      np.testing.assert_allclose(np.asarray(upd["b"]), [1.0, -1.0], rtol=1e-4)
    np.testing.assert_allclose(np.asarray(upd["a"]), [1.0, -1.0], rtol=1e-4)
