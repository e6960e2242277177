"""Fine-tuning: exact layer-decay multipliers and decay mask on a real Mu/16 tree, and a tiny
encoder learning a separable task from chance."""
from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from terrafm_jax.eval import finetune, linear
from terrafm_jax.models.terrafm import TerraFMEncoder
from terrafm_jax.train.optim import param_path

SIZE = 32
NUM_CLASSES = 3


@pytest.fixture(scope="module")
def mu():
  """The real Mu/16 parameter tree (eval_shape of its init: compiling the init costs ~20 s on a
  loaded CPU), filled like the initialisers: kernels N(0, .02), biases 0, LayerNorm scales 1."""
  enc = TerraFMEncoder("Mu/16", img_size=SIZE)
  x = {"s2_l2a": np.zeros((1, SIZE, SIZE, 12), np.float32)}
  shapes = flax.linen.meta.unbox(jax.eval_shape(enc.init, jax.random.key(0), x)["params"])
  rng = np.random.default_rng(0)

  def fill(path, s):
    if len(s.shape) > 1:
      return (0.02 * rng.standard_normal(s.shape)).astype(np.float32)
    return (np.ones if param_path(path).endswith("scale") else np.zeros)(s.shape, np.float32)

  return enc, jax.tree_util.tree_map_with_path(fill, shapes)


def full_tree(enc_params):
  return {"encoder": enc_params,
          "head": {"kernel": jnp.zeros((64, NUM_CLASSES)), "bias": jnp.zeros((NUM_CLASSES,))}}


def expected_multiplier(path: str, decay: float) -> float:
  depth = 4
  name = path.split("/")[1] if path.startswith("encoder/") else path.split("/")[0]
  if name in ("patch_embed", "cls_token", "pos_embed"):
    lid = 0
  elif name.startswith("blocks_"):
    lid = int(name.split("_")[1]) + 1
  else:
    assert name in ("norm", "head"), path
    lid = depth + 1
  return decay ** (depth + 1 - lid)


def test_layer_decay_multipliers_exact(mu):
  _, params = mu
  tree = full_tree(params)
  mult = finetune.layer_decay_multipliers(tree, depth=4, decay=0.65)
  leaves = jax.tree_util.tree_leaves_with_path(mult)
  names = [param_path(p) for p, _ in leaves]
  assert any(n.startswith("encoder/patch_embed/conv2d_s1") for n in names)
  assert {"encoder/cls_token", "encoder/pos_embed", "encoder/norm/scale", "head/kernel"} <= set(
      names)
  for p, m in leaves:
    assert m == expected_multiplier(param_path(p), 0.65), param_path(p)
  assert finetune.layer_id("encoder/blocks_3/mlp/fc2/kernel", 4) == 4
  assert finetune.layer_id("blocks_0/norm1/scale", 4) == 1
  assert finetune.layer_id("head/bias", 4) == 5
  with pytest.raises(ValueError, match="no layer id"):
    finetune.layer_id("encoder/mystery", 4)
  with pytest.raises(ValueError, match="depth-4"):
    finetune.layer_id("encoder/blocks_4/attn/qkv/kernel", 4)


def test_transform_applies_multipliers_and_decay_mask(mu):
  _, params = mu
  tree = jax.tree.map(lambda x: jnp.full_like(x, 2.0), full_tree(params))
  grads = jax.tree.map(lambda x: jnp.full_like(x, 0.5), tree)
  tx = finetune.finetune_transform(tree, depth=4, weight_decay=0.1, layer_decay=0.65,
                                   clip_grad_norm=None)
  u, _ = jax.jit(tx.update)(grads, tx.init(tree), tree)
  # First Adam step: the same direction ~1 (g / (|g| + eps)) for every element; read it off the
  # final norm (multiplier 1, no decay). Decayed tensors add wd * p = 0.2; then the multiplier.
  adam = np.asarray(u["encoder"]["norm"]["scale"])[0]
  assert abs(adam - 1.0) < 1e-4
  for p, v in jax.tree_util.tree_leaves_with_path(u):
    name, leaf = param_path(p), np.asarray(v)
    no_decay = leaf.ndim <= 1 or name.endswith(("cls_token", "pos_embed"))
    expected = expected_multiplier(name, 0.65) * (adam + (0.0 if no_decay else 0.2))
    np.testing.assert_allclose(leaf, expected, rtol=1e-6, err_msg=name)


def bright_channel_batches(n, seed, batch=16):
  """Class = which of the first three S2 channels is bright; the rest is noise."""
  rng = np.random.default_rng(seed)
  y = rng.integers(0, NUM_CLASSES, n)
  x = rng.standard_normal((n, SIZE, SIZE, 12)).astype(np.float32) * 0.5
  x[np.arange(n), :, :, y] += 2.0
  return [({"s2_l2a": x[i:i + batch]}, y[i:i + batch]) for i in range(0, n, batch)]


def test_finetune_learns_bright_channel_task(mu):
  enc, params = mu
  train = bright_channel_batches(96, seed=1)
  val = bright_channel_batches(64, seed=2)
  sweep = finetune.finetune_sweep(enc, params, lambda e: train, lambda: val, lrs=(1e-9, 1e-3),
                                  kind="classification", num_classes=NUM_CLASSES, epochs=3,
                                  steps_per_epoch=5, layer_decay=0.75, seed=0)
  res = sweep.best
  assert set(sweep.val_scores) == {1e-9, 1e-3}
  assert res.lr == 1e-3 and res.metric == "accuracy"
  assert sweep.val_scores[1e-9] < 0.6             # an lr that cannot move: about chance (1/3)
  assert res.val_score > 0.85, (res.val_scores, res.train_loss)
  assert res.train_loss[-1] < res.train_loss[0]
  assert len(res.val_scores) == 3 and res.val_score == max(res.val_scores)
  assert res.val_scores[res.best_epoch] == res.val_score
  # The returned params are the best epoch's: they reproduce its validation score.
  logits_fn = finetune.make_logits_fn(enc)
  logits = np.concatenate([logits_fn(res.params, im) for im, _ in val])
  y = np.concatenate([lab for _, lab in val])
  assert linear.score(logits, y, "accuracy") == res.val_score
  # The caller's parameters were not donated.
  assert np.all(np.isfinite(jax.tree.leaves(params)[0]))
  with pytest.raises(ValueError, match="multilabel labels"):   # ints are not (B, C) 0/1
    finetune.finetune(enc, params, lambda e: train, lambda: val, kind="multilabel",
                      num_classes=NUM_CLASSES, lr=1e-3, epochs=1, steps_per_epoch=1)
