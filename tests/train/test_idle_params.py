"""Parameters the step never runs (with modality groups: the stems and embeddings of modalities no
group uses, the fusion when no group is fused) get zero gradients. PyTorch leaves their grad None,
so its AdamW neither moves nor decays them; here they are kept out of the weight decay, so after
real train steps they are still their initial values bit for bit, while everything the views
read trains."""
from __future__ import annotations

import json
import os

import jax
import numpy as np

from terrafm_jax.train import optim

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CODE = r"""
with jax.set_mesh(mesh):
  state = state_lib.create_sharded_state(init, sh, rng, rules)
fn = jax.jit(step_lib.make_train_step(model, tx, scheds, plan, data.contract))
host = lambda s: jax.tree.map(np.asarray, s)
s0 = host(state.student)
with jax.set_mesh(mesh), flax.linen.logical_axis_rules(rules):
  for _ in range(3):  # step 0 has learning rate 0 (warm-up)
    local = next(data_iter)
    state, metrics = fn(state, sharding.global_batch({k: local[k] for k in keys}, mesh))
s3 = host(state.student)
mu = host(optax.tree_utils.tree_get(state.opt_state, "mu"))
flat = lambda t: {optim.param_path(p): v for p, v in jax.tree_util.tree_flatten_with_path(t)[0]}
f0, f3, fmu = flat(s0), flat(s3), flat(mu)
print(json.dumps({
    "finite": bool(metrics["finite"]),
    "unchanged": sorted(n for n in f0 if np.array_equal(f0[n], f3[n])),
    "zero_mu": sorted(n for n in fmu if not np.any(fmu[n]))}))
"""

IDLE = {"encoder/patch_embed/conv2d_s1/kernel", "encoder/patch_embed/conv2d_s1/bias",
        "encoder/patch_embed/conv2d_s2_l2a/kernel", "encoder/patch_embed/conv2d_s2_l2a/bias",
        "encoder/patch_embed/s1_embed", "encoder/patch_embed/s2_l2a_embed",
        "encoder/patch_embed/fusion/key/kernel", "encoder/patch_embed/fusion/queries",
        "encoder/patch_embed/fusion/score/kernel"}


def test_single_modality_run_leaves_unread_params_exactly_untouched(run_py, step_setup):
  setup = step_setup(1, 'config.data.modalities = ("s2_l1c",)\nimport optax')
  r = json.loads(run_py(setup + CODE, num_devices=1).strip().splitlines()[-1])
  assert r["finite"]
  # head/last_layer is frozen in the first epoch (optim.py); everything else read by a view moves.
  assert set(r["unchanged"]) == IDLE | {"head/last_layer"}, r["unchanged"]
  assert IDLE <= set(r["zero_mu"])


def test_masked_path_runs_every_stem_so_nothing_is_exempt(run_py, step_setup):
  # modality_groups=False: every stem and the fusion run on every view (masked), so their
  # parameters are decayed as any other (PyTorch's masked equivalent has zero, not None, grads).
  setup = step_setup(1, 'config.data.modalities = ("s2_l1c",)\n'
                        'config.data.modality_groups = False\nimport optax')
  r = json.loads(run_py(setup + CODE, num_devices=1).strip().splitlines()[-1])
  assert r["finite"] and r["unchanged"] == ["head/last_layer"], r["unchanged"]


def _smoke(**data):
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location("smoke", "configs/smoke.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  config = mod.get_config("test")
  config.unlock()
  config.mesh.data, config.mesh.fsdp = 1, 1
  config.data.update(data)
  return config


def test_never_run_follows_the_static_groups(monkeypatch):
  from terrafm_jax.train import run_plan  # pylint: disable=g-import-not-at-top
  monkeypatch.chdir(REPO)
  idle = lambda c: run_plan.resolve(c, 64, device_count=1).idle
  assert idle(_smoke()) == ((), False)
  assert idle(_smoke(modalities=("s2_l1c",))) == (("s1", "s2_l2a"), True)
  assert run_plan.resolve(_smoke(modalities=("s2_l1c",)), 64, 1).modalities_run == ("s2_l1c",)
  # two modalities: fused views carry all three images, so every stem runs
  assert idle(_smoke(modalities=("s1", "s2_l2a"))) == ((), False)
  assert idle(_smoke(modalities=("s2_l1c",), modality_groups=False)) == ((), False)


def test_idle_mask_names_the_stems_and_the_fusion():
  params = {"encoder": {"patch_embed": {
      **{f"conv2d_{m}": {"kernel": np.zeros((2, 2)), "bias": np.zeros(2)}
         for m in ("s1", "s2_l1c", "s2_l2a")},
      **{f"{m}_embed": np.zeros((1, 2)) for m in ("s1", "s2_l1c", "s2_l2a")},
      "fusion": {"queries": np.zeros((5, 2))}}}}
  names = lambda unused, fusion: sorted(
      optim.param_path(p) for p, idle in
      jax.tree_util.tree_flatten_with_path(optim.idle_param_mask(params, unused, fusion))[0]
      if idle)
  assert names((), False) == []
  assert names(("s2_l1c",), False) == ["encoder/patch_embed/conv2d_s2_l1c/bias",
                                       "encoder/patch_embed/conv2d_s2_l1c/kernel",
                                       "encoder/patch_embed/s2_l1c_embed"]
  assert names((), True) == ["encoder/patch_embed/fusion/queries"]
