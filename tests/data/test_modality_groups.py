"""Fixed modality-group sizes per block: exact sizes, availability, METHOD.md 4's proportions, and
the grouped patch embedding equal to the masked path (issue #9)."""
from __future__ import annotations

import numpy as np
import pytest

from terrafm_jax.data import crops as crops_lib
from terrafm_jax.data import modality_groups as mg


def _draws(rng, cfg, avail, v):
  return np.stack([np.stack([crops_lib.draw_modalities(rng, a, cfg) for _ in range(v)])
                   for a in avail])


def test_probabilities_and_sizes():
  p = mg.group_probabilities(crops_lib.CropConfig())
  np.testing.assert_allclose(p, [1 / 6, 1 / 6, 1 / 6, 1 / 2])
  pb = mg.group_probabilities(crops_lib.CropConfig(modality_reading="b", keep_p=0.5))
  np.testing.assert_allclose(pb, [1 / 7, 1 / 7, 1 / 7, 4 / 7])  # 3 singles of 7 non-empty sets
  one = mg.group_probabilities(crops_lib.CropConfig(modalities=("s2_l1c",)))
  np.testing.assert_array_equal(one, [0, 1, 0, 0])
  assert mg.group_sizes(48, p) == (8, 8, 8, 24)
  assert mg.group_sizes(4, p) == (0, 0, 0, 4)  # 4/6 < 1: every single view rides in fused
  assert mg.group_sizes(16, one) == (0, 16, 0, 0)


def test_round_counts_is_unbiased_with_fixed_sum():
  rng = np.random.default_rng(0)
  exp = np.array([0.7, 0.7, 0.6, 2.0])
  draws = np.stack([mg.round_counts(rng, exp) for _ in range(20000)])
  assert (draws.sum(1) == 4).all()
  np.testing.assert_allclose(draws.mean(0), exp, atol=0.02)


@pytest.mark.parametrize("block,v", [(4, 6), (2, 2), (8, 6)])
def test_balance_exact_sizes_consistent_masks(block, v):
  cfg = crops_lib.CropConfig()
  probs = mg.group_probabilities(cfg)
  rng = np.random.default_rng(block * 10 + v)
  for _ in range(50):
    avail = np.ones((block, 3), bool)
    masks, groups, valid = mg.balance_family(rng, _draws(rng, cfg, avail, v), avail, probs)
    assert valid.all()
    sizes = mg.group_sizes(block * v, probs)
    assert tuple(np.bincount(groups.ravel(), minlength=4)) == sizes
    kinds = mg.groups_of(masks)
    single = groups < mg.FUSED
    np.testing.assert_array_equal(kinds[single], groups[single])  # single groups: their stem only
    assert masks.any(-1).all()


def test_proportions_match_method_draws():
  """Each slot's mask type has marginal p_t (METHOD.md 4 reading a): 1/6 per single, 1/2 multi."""
  cfg = crops_lib.CropConfig()
  probs = mg.group_probabilities(cfg)
  rng = np.random.default_rng(3)
  counts = np.zeros(4)
  for _ in range(400):
    avail = np.ones((2, 3), bool)
    masks, _, _ = mg.balance_family(rng, _draws(rng, cfg, avail, 2), avail, probs)
    counts += np.bincount(mg.groups_of(masks).ravel(), minlength=4)
  np.testing.assert_allclose(counts / counts.sum(), probs, atol=0.025)


def _check_block(masks, groups, valid, avail, v, sizes):
  assert tuple(np.bincount(groups.ravel(), minlength=4)) == sizes
  tile_avail = np.repeat(avail[:, None, :], v, axis=1)
  ok = valid
  assert not (masks[ok] & ~tile_avail[ok]).any(), "a kept view uses a modality its tile lacks"
  single = (groups < mg.FUSED) & ok
  np.testing.assert_array_equal(mg.groups_of(masks)[single], groups[single])


def test_availability_respected_and_unservable_views_dropped_not_refused():
  cfg = crops_lib.CropConfig()
  probs = mg.group_probabilities(cfg)
  rng = np.random.default_rng(5)
  sizes = mg.group_sizes(48, probs)
  # Half the tiles lack S1: S1 views come only from the others; nothing is dropped.
  avail = np.array([[True, True, True], [False, True, True]] * 4)
  for _ in range(30):
    avail_draw = avail.copy()
    masks, groups, valid = mg.balance_family(rng, _draws(rng, cfg, avail_draw, 6), avail, probs)
    assert valid.all()
    _check_block(masks, groups, valid, avail, 6, sizes)
  # Two tiles of eight have S1 (12 views for a group of 8): served by conversions, none dropped.
  two = np.array([[True, True, True]] * 2 + [[False, True, True]] * 6)
  for _ in range(30):
    masks, groups, valid = mg.balance_family(rng, _draws(rng, cfg, two, 6), two, probs)
    assert valid.all()
    _check_block(masks, groups, valid, two, 6, sizes)
  # One tile: its 6 views all become single-S1 views and 2 more are left out of the loss.
  one = np.array([[True, True, True]] + [[False, True, True]] * 7)
  masks, groups, valid = mg.balance_family(rng, _draws(rng, cfg, one, 6), one, probs)
  _check_block(masks, groups, valid, one, 6, sizes)
  assert (~valid).sum() == sizes[0] - 6 and (groups[0] == 0).all()
  # No tile with S1 or L2A: those groups are filled with views left out of the loss, counted.
  only = np.array([[False, True, False]] * 8)
  masks, groups, valid = mg.balance_family(rng, _draws(rng, cfg, only, 6), only, probs)
  _check_block(masks, groups, valid, only, 6, sizes)
  assert (~valid).sum() == sizes[0] + sizes[2]
  assert set(groups[~valid].ravel()) == {0, 2}


def test_balance_batch_independent_of_process_split():
  """A block's result depends on its global position, not on which process holds it."""
  cfg = crops_lib.CropConfig(n_global=2, n_local=2)
  rng = np.random.default_rng(0)
  b = 8
  batch = {"student_masks": _draws(rng, cfg, np.ones((b, 3), bool), 4),
           "teacher_masks": _draws(rng, cfg, np.ones((b, 3), bool), 2),
           "available": np.ones((b, 3), bool)}
  whole = mg.balance_batch(batch, cfg, block=2, seed=1, first_position=16)
  half = {k: v[4:] for k, v in batch.items()}
  second = mg.balance_batch(half, cfg, block=2, seed=1, first_position=20)
  for k in ("student_masks", "teacher_masks", "student_groups", "teacher_groups"):
    np.testing.assert_array_equal(whole[k][4:], second[k])
  with pytest.raises(ValueError, match="not a multiple of the block"):
    mg.balance_batch(batch, cfg, block=3, seed=1, first_position=0)


def test_grouped_patch_embedding_equals_masked_path():
  import jax
  import jax.numpy as jnp
  from terrafm_jax.models.terrafm import TerraFMEncoder
  enc = TerraFMEncoder(variant="Mu/8", img_size=32)
  cfg = crops_lib.CropConfig(n_global=1, n_local=0)
  probs = mg.group_probabilities(cfg)
  rng = np.random.default_rng(0)
  block, nb = 12, 2
  x = {m: jnp.asarray(rng.standard_normal((block * nb, 32, 32, c)), jnp.float32)
       for m, c in (("s1", 2), ("s2_l1c", 12), ("s2_l2a", 12))}
  parts = [mg.balance_family(rng, _draws(rng, cfg, np.ones((block, 3), bool), 1),
                             np.ones((block, 3), bool), probs) for _ in range(nb)]
  masks = jnp.asarray(np.concatenate([p[0] for p in parts])[:, 0])
  groups = jnp.asarray(np.concatenate([p[1] for p in parts])[:, 0])
  sizes = mg.group_sizes(block, probs)
  params = enc.init(jax.random.PRNGKey(0), x, masks)

  def masked(p, x):
    return enc.apply(p, x, masks)["cls"]

  def grouped(p, x):
    return enc.apply(p, x, masks, groups=groups, group_sizes=sizes)["cls"]

  a, b = jax.jit(masked)(params, x), jax.jit(grouped)(params, x)
  np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5, rtol=1e-5)
  # Jitted: op-by-op autodiff of the encoder dispatches (and compiles) hundreds of tiny programs.
  ga = jax.jit(jax.grad(lambda p: jnp.sum(masked(p, x) ** 2)))(params)
  gb = jax.jit(jax.grad(lambda p: jnp.sum(grouped(p, x) ** 2)))(params)
  for u, w in zip(jax.tree.leaves(gb), jax.tree.leaves(ga)):
    np.testing.assert_allclose(np.asarray(u), np.asarray(w), atol=2e-5, rtol=1e-4)
  # A one-off in the inverse permutation would swap views: each output row is its own view's.
  swapped = groups.at[0].set(groups[1]).at[1].set(groups[0])
  if int(groups[0]) != int(groups[1]):
    c = jax.jit(lambda p, x: enc.apply(p, x, masks, groups=swapped, group_sizes=sizes)["cls"])(
        params, x)
    assert not np.allclose(np.asarray(c), np.asarray(a), atol=1e-5)
  # The grouped step runs fewer FLOPs than the masked one (XLA's own count).
  fl = lambda f: jax.jit(f).lower(params, x).compile().cost_analysis()["flops"]  # noqa: E731
  assert fl(grouped) < 0.8 * fl(masked)


def test_group_block_must_divide_per_shard_batch():
  import importlib.util
  from terrafm_jax.train import run_plan
  from terrafm_jax.errors import ConfigError
  spec = importlib.util.spec_from_file_location("smoke", "configs/smoke.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config()
  c.global_batch_size, c.data.group_block = 32, 4
  block = lambda devices: run_plan.resolve(c, 1000, device_count=devices).group_block
  assert block(8) == 4
  c.data.group_block = 5
  with pytest.raises(ConfigError, match=r"config.data.group_block=5 .*per-shard batch of 32"):
    block(1)
  c.data.group_block, c.data.granularity = 4, "batch"
  with pytest.raises(ConfigError, match="granularity"):
    block(1)
  c.data.modality_groups = False
  assert block(1) == 0


def test_dropped_views_leave_loss_and_centers_untouched():
  import jax.numpy as jnp
  from terrafm_jax.train import loss as loss_lib
  rng = np.random.default_rng(0)
  g, v, b, k = 2, 4, 3, 16
  t = jnp.asarray(rng.standard_normal((g, b, k)), jnp.float32)
  s = jnp.asarray(rng.standard_normal((v, b, k)), jnp.float32)
  c = loss_lib.Centers(jnp.asarray(rng.standard_normal(k), jnp.float32), jnp.zeros(k))
  kw = dict(student_temp=0.1, teacher_temp=0.04, alpha=0.8)
  base = loss_lib.dino_loss(s, t, c, **kw).loss
  ones = loss_lib.dino_loss(s, t, c, teacher_valid=jnp.ones((g, b), bool),
                            student_valid=jnp.ones((v, b), bool), **kw).loss
  np.testing.assert_allclose(float(ones), float(base), rtol=1e-6)
  sv = jnp.ones((v, b), bool).at[3, 1].set(False)
  a = loss_lib.dino_loss(s, t, c, student_valid=sv, **kw).loss
  s_bad = s.at[3, 1].set(1e3)  # garbage at the dropped view changes nothing
  a_bad = loss_lib.dino_loss(s_bad, t, c, student_valid=sv, **kw).loss
  assert float(a) == float(a_bad) and abs(float(a) - float(base)) > 1e-6
  tv = jnp.ones((g, b), bool).at[0, 2].set(False)
  labels = jnp.asarray([0, 2, 0])
  kwc = dict(high_freq_classes=(0,), momentum=0.9, momentum_h=0.9)
  c1, n1 = loss_lib.update_centers(t, labels, c, teacher_valid=tv, **kwc)
  c2, n2 = loss_lib.update_centers(t.at[0, 2].set(1e3), labels, c, teacher_valid=tv, **kwc)
  np.testing.assert_array_equal(np.asarray(c1.c), np.asarray(c2.c))
  np.testing.assert_array_equal(np.asarray(c1.c_h), np.asarray(c2.c_h))
  assert float(n1) == float(n2) == 3.0  # label-0 samples 0 and 2, 2 views each, minus the dropped
  c0, _ = loss_lib.update_centers(t, labels, c, teacher_valid=jnp.ones((g, b), bool), **kwc)
  c_ref, _ = loss_lib.update_centers(t, labels, c, **kwc)
  np.testing.assert_allclose(np.asarray(c0.c), np.asarray(c_ref.c), rtol=1e-6)


def test_only_needed_modalities_are_cropped():
  import jax
  import jax.numpy as jnp
  from terrafm_jax.models.terrafm import TerraFMEncoder
  from terrafm_jax.train import run_plan
  one = crops_lib.CropConfig(modalities=("s2_l1c",))
  q = mg.family_quotas(one, 4)
  assert run_plan.needed_modalities(q) == ("s2_l1c",)
  assert run_plan.needed_modalities(mg.family_quotas(crops_lib.CropConfig(), 4)) == \
      ("s1", "s2_l1c", "s2_l2a")
  assert run_plan.needed_modalities({"x": None}) == ("s1", "s2_l1c", "s2_l2a")
  # The grouped encoder runs on the L1C images alone when no group reads the others.
  enc = TerraFMEncoder(variant="Mu/8", img_size=32)
  x = jax.random.normal(jax.random.PRNGKey(0), (8, 32, 32, 12))
  mask = jnp.zeros((8, 3), bool).at[:, 1].set(True)
  params = enc.init(jax.random.PRNGKey(1), {"s2_l1c": x}, mask)
  sizes = q["teacher"]
  assert sizes == (0, 8, 0, 0)
  out = enc.apply(params, {"s2_l1c": x}, mask, groups=jnp.ones(8, jnp.int8), group_sizes=sizes)
  ref = enc.apply(params, {"s2_l1c": x})
  np.testing.assert_allclose(np.asarray(out["cls"]), np.asarray(ref["cls"]), atol=1e-5)
  with pytest.raises(ValueError, match="needs images of"):
    enc.apply(params, {"s2_l1c": x}, mask, groups=jnp.ones(8, jnp.int8), group_sizes=(0, 4, 0, 4))
