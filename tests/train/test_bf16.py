"""bf16 compute (the accelerator dtype policy: parameters f32, matmuls bf16, head softmax, loss
and centers f32) tracks the f32 step: the same smoke model from the same init on the same
batches, four steps, losses within 2 % and parameters that stay f32."""
from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

from terrafm_jax.data.contract import DEFAULT_CONTRACT  # noqa: E402
from terrafm_jax.train import assemble, data_source, random_batches, run_plan, sharding, state  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 4


def _run(dtype: str):
  spec = importlib.util.spec_from_file_location("smoke", os.path.join(REPO, "configs", "smoke.py"))
  smoke = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(smoke)
  c = smoke.get_config("test")
  c.model.dtype = dtype
  plan = run_plan.resolve(c, c.data.num_examples)
  c = plan.config
  mesh = sharding.make_mesh(c.mesh)
  parts = assemble.build(plan, DEFAULT_CONTRACT, mesh)
  with jax.set_mesh(mesh):
    st = state.create_sharded_state(parts.state_init, parts.shardings, parts.rng, None)
  batches = random_batches.RandomBatches(plan, 0, 1)
  keys = data_source.step_keys(c)
  losses = []
  step = None
  for _ in range(STEPS):
    local = next(batches)
    batch = sharding.global_batch({k: local[k] for k in keys}, mesh)
    if step is None:
      step = assemble.jit_step(parts, {k: v.sharding for k, v in batch.items()}, mesh)
    with jax.set_mesh(mesh):
      st, metrics = step(st, batch)
    losses.append(float(metrics["loss"]))
  return np.array(losses), st


def test_bf16_steps_track_f32():
  f32, st32 = _run("float32")
  bf16, st16 = _run("bfloat16")
  assert np.isfinite(bf16).all()
  np.testing.assert_allclose(bf16, f32, rtol=0.02)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(st16.student))
  # The parameters moved the same way: relative difference of the updated student small.
  a, b = (np.concatenate([np.ravel(x) for x in jax.tree.leaves(s.student)]) for s in (st32, st16))
  assert np.linalg.norm(a - b) / np.linalg.norm(a) < 0.02
