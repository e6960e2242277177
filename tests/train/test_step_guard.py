"""The non-finite guard of the train step (train/step.py): the update runs inside the guard's
conditional, so a poisoned step must leave every tree of the state bit for bit as it was (the
student, the EMA teacher, the Adam moments, the centers), record its 1-based index in bad_step and
report NaN norms; the next finite step then updates everything again."""
from __future__ import annotations

import json

CODE = r"""
with jax.set_mesh(mesh):
  state = state_lib.create_sharded_state(init, sh, rng, rules)
local = next(data_iter)
good = sharding.global_batch({k: local[k] for k in keys}, mesh)
poisoned = dict(local)
for m in ("s1", "s2_l1c", "s2_l2a"):  # every modality, whatever the views draw
  poisoned[m] = np.full(local[m].shape, np.nan, np.float16)
bad = sharding.global_batch({k: poisoned[k] for k in keys}, mesh)
fn = jax.jit(step_lib.make_train_step(model, tx, scheds, plan, data.contract))
host = lambda s: jax.tree.map(np.asarray, s)

def same(a, b):
  return all(np.array_equal(x, y, equal_nan=True) for x, y in
             zip(jax.tree.leaves(a), jax.tree.leaves(b)))

out = {}
with jax.set_mesh(mesh), flax.linen.logical_axis_rules(rules):
  s0 = host(state)
  s1, m1 = fn(state, good)
  s1h = host(s1)
  s2, m2 = fn(s1, bad)
  s2h = host(s2)
  s3, m3 = fn(s2, good)
  s3h = host(s3)
for name in ("student", "teacher", "opt_state", "centers"):
  out[name] = [same(getattr(s0, name), getattr(s1h, name)),
               same(getattr(s1h, name), getattr(s2h, name)),
               same(getattr(s2h, name), getattr(s3h, name))]
out["step"] = [int(s1h.step), int(s2h.step), int(s3h.step)]
out["bad_step"] = [int(s1h.bad_step), int(s2h.bad_step), int(s3h.bad_step)]
out["finite"] = [bool(m["finite"]) for m in (m1, m2, m3)]
out["norms"] = [[float(m["param_norm"]), float(m["update_norm"])] for m in (m1, m2, m3)]
print(json.dumps(out))
"""


def test_non_finite_step_leaves_state_untouched(run_py, step_setup):
  r = json.loads(run_py(step_setup(1) + CODE, num_devices=1).strip().splitlines()[-1])
  for name in ("student", "teacher", "opt_state", "centers"):
    # poisoned step: unchanged bit for bit; the finite step after it: changed.
    assert r[name][1:] == [True, False], (name, r)
  # The first step changes all but the student (its learning rate is 0 at step 0, warm-up).
  assert r["teacher"][0] is False and r["opt_state"][0] is False and r["centers"][0] is False
  assert r["step"] == [1, 2, 3]
  assert r["bad_step"] == [-1, 2, 2]  # the first bad step is kept
  assert r["finite"] == [True, False, True]
  (p1, u1), (p2, u2), (p3, u3) = r["norms"]
  assert p1 > 0 and u1 == 0 and p3 > 0 and u3 > 0  # u1: learning rate 0 at step 0
  assert p2 != p2 and u2 != u2  # NaN: no update was made
