"""Segmentation heads and their training loop: pixel order, resize / pooling semantics, the
ignore_index mask, and both heads learning a synthetic task from features that encode it."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from terrafm_jax.eval import seg_heads, seg_train

GRID, D, C = 4, 16, 3


def test_patch_linear_head_pixel_order():
  p = 3
  head = seg_heads.PatchLinearHead(num_classes=C, patch_size=p)
  tokens = np.zeros((2, GRID, GRID, D), np.float32)
  params = jax.tree.map(np.zeros_like, seg_train.init_variables(head, tokens, seed=0)["params"])
  # Feature 5 of a token drives output channel k p^2 + i p + j = class 2 at in-block pixel (1, 0).
  k, i, j = 2, 1, 0
  params["linear"]["kernel"][5, k * p * p + i * p + j] = 1.0
  tokens[1, 2, 3, 5] = 7.0                       # sample 1, token row 2, column 3
  out = np.asarray(head.apply({"params": params}, tokens))
  assert out.shape == (2, GRID * p, GRID * p, C)
  expected = np.zeros_like(out)
  expected[1, 2 * p + i, 3 * p + j, k] = 7.0
  np.testing.assert_array_equal(out, expected)


def test_resize_and_adaptive_pool_match_pytorch():
  """The interpolation / pooling matrices against torch (numpy, no XLA compile per size), then
  the JAX ops against the matrices once."""
  torch = pytest.importorskip("torch")
  f = torch.nn.functional
  x = np.random.default_rng(0).standard_normal((2, 5, 7, 3)).astype(np.float32)
  xt = torch.from_numpy(x).permute(0, 3, 1, 2)

  def apply(mh, mw):
    return np.einsum("ih,jw,bhwc->bijc", mh, mw, x.astype(np.float64))

  for size in ((10, 14), (3, 4), (11, 6), (5, 7)):
    for ac in (False, True):
      ref = f.interpolate(xt, size=size, mode="bilinear", align_corners=ac).permute(0, 2, 3, 1)
      got = apply(seg_heads._interp_matrix(5, size[0], ac),
                  seg_heads._interp_matrix(7, size[1], ac))
      np.testing.assert_allclose(got, ref.numpy(), atol=1e-5, err_msg=f"{size} {ac}")
  for s in (1, 2, 3, 6):
    ref = f.adaptive_avg_pool2d(xt, s).permute(0, 2, 3, 1).numpy()
    got = apply(seg_heads._adaptive_pool_matrix(5, s), seg_heads._adaptive_pool_matrix(7, s))
    np.testing.assert_allclose(got, ref, atol=1e-5, err_msg=str(s))
  np.testing.assert_allclose(
      np.asarray(seg_heads.resize_bilinear(jnp.asarray(x), (10, 14), align_corners=True)),
      apply(seg_heads._interp_matrix(5, 10, True), seg_heads._interp_matrix(7, 14, True)),
      atol=1e-5)
  np.testing.assert_allclose(
      np.asarray(seg_heads.adaptive_avg_pool(jnp.asarray(x), 3)),
      apply(seg_heads._adaptive_pool_matrix(5, 3), seg_heads._adaptive_pool_matrix(7, 3)),
      atol=1e-5)


def test_ignored_pixels_give_no_loss_and_no_gradient():
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.standard_normal((2, 4, 4, C)).astype(np.float32))
  labels = rng.integers(0, C, (2, 4, 4))
  labels[0, :2] = 255
  labels[1, 3, 3] = 255
  valid = labels != 255
  loss_fn = jax.jit(seg_train.segmentation_loss, static_argnums=2)
  loss, grad = jax.jit(jax.value_and_grad(loss_fn), static_argnums=2)(logits, labels, 255)
  grad = np.asarray(grad)
  assert np.all(grad[~valid] == 0.0)
  assert np.all(np.abs(grad[valid]).sum(-1) > 0)
  lg = np.asarray(logits, np.float64)
  logp = lg - np.log(np.exp(lg).sum(-1, keepdims=True))
  ce = -np.take_along_axis(logp, np.where(valid, labels, 0)[..., None], -1)[..., 0]
  assert float(loss) == pytest.approx(ce[valid].mean(), rel=1e-5)
  # Whatever the logits at ignored pixels, the loss is the same.
  moved = jnp.where(jnp.asarray(valid)[..., None], logits, 100.0 * logits)
  assert float(loss_fn(moved, labels, 255)) == float(loss_fn(logits, labels, 255))
  assert float(loss_fn(logits, np.full((2, 4, 4), 255), 255)) == 0.0


def synthetic(n, seed, label_px, noise=0.3):
  """Token-constant class maps (label_px pixels per token side) and features that encode each
  token's class: a class embedding plus noise, for the patch tokens and four 'layers'."""
  rng = np.random.default_rng(seed)
  emb = np.random.default_rng(99).standard_normal((C, D)).astype(np.float32)
  tok = rng.integers(0, C, (n, GRID, GRID))
  labels = np.repeat(np.repeat(tok, label_px, axis=1), label_px, axis=2)
  maps = tuple(emb[tok] + noise * rng.standard_normal((n, GRID, GRID, D)).astype(np.float32)
               for _ in range(4))
  return maps, labels


def test_linear_head_learns_and_ignores_pixels():
  p = 4
  (tx, *_), ty = synthetic(48, 0, p)
  (vx, *_), vy = synthetic(24, 1, p)
  ty = ty.copy()
  ty[:, 0, :] = 255                                   # an ignored row in every training map
  head = seg_heads.PatchLinearHead(num_classes=C, patch_size=p)
  res = seg_train.fit_segmentation(head, tx, ty, vx, vy, num_classes=C, lrs=(1e-7, 5e-2),
                                   epochs=10, batch_size=16, ignore_index=255, seed=0)
  assert set(res.val_scores) == {1e-7, 5e-2} and res.lr == 5e-2
  assert res.val_scores[1e-7] < 0.6 and res.val_miou > 0.9, res.val_scores
  assert res.train_loss[-1] < res.train_loss[0]
  pred = seg_train.predict_segmentation(res, vx)
  assert pred.shape == vy.shape and pred.dtype == np.int64
  assert np.mean(pred == vy) > 0.95
  # Labels at twice the head's output size: logits are resized, the maps follow the label size.
  big = seg_train.predict_segmentation(res, vx, label_size=(2 * GRID * p, 2 * GRID * p))
  assert big.shape == (24, 2 * GRID * p, 2 * GRID * p)
  assert np.mean(big == np.repeat(np.repeat(vy, 2, axis=1), 2, axis=2)) > 0.9
  with pytest.raises(ValueError, match="outside"):
    seg_train.fit_segmentation(head, tx, ty, vx, vy, num_classes=C, lrs=(1e-2,), epochs=1)


def test_upernet_head_shapes_and_variables():
  head = seg_heads.UPerNetHead(num_classes=C, channels=8)   # pool scales 1,2,3,6; rescales 4..0.5
  feats = tuple(np.zeros((2, GRID, GRID, D), np.float32) for _ in range(4))
  variables = seg_train.init_variables(head, feats, seed=0)
  assert set(variables) == {"params", "batch_stats"}
  assert {f"psp_{s}" for s in (1, 2, 3, 6)} <= set(variables["params"])
  assert variables["params"]["neck"]["up4_0_0"]["kernel"].shape == (2, 2, D, D)
  out = jax.jit(head.apply)(variables, feats)
  assert out.shape == (2, 4 * GRID, 4 * GRID, C) and out.dtype == jnp.float32


def test_upernet_head_learns_with_resize_to_labels():
  label_px = 8                                         # 32 x 32 labels; the head outputs 16 x 16
  tx, ty = synthetic(32, 0, label_px)
  vx, vy = synthetic(16, 1, label_px)
  # One pool scale instead of four (the same code path, a shorter XLA:CPU compile); no dropout.
  head = seg_heads.UPerNetHead(num_classes=C, channels=8, pool_scales=(2,), dropout_rate=0.0)
  res = seg_train.fit_segmentation(head, tx, ty, vx, vy, num_classes=C, lrs=(1e-2,), epochs=12,
                                   batch_size=8, seed=0)
  assert set(res.variables) == {"params", "batch_stats"}
  assert res.val_miou > 0.8, (res.val_scores, res.train_loss)
  assert res.train_loss[-1] < res.train_loss[0]


def test_upernet_auxiliary_fcn_head_adds_its_weighted_loss():
  feats = tuple(np.asarray(np.random.default_rng(i).standard_normal((2, GRID, GRID, D)),
                           np.float32) for i in range(4))
  head = seg_heads.UPerNetHead(num_classes=C, channels=8, pool_scales=(2,), aux_channels=4,
                               dropout_rate=0.0)
  variables = seg_train.init_variables(head, feats, seed=0)
  assert variables["params"]["aux_conv"]["conv"]["kernel"].shape == (3, 3, D, 4)
  assert variables["params"]["aux_cls_seg"]["kernel"].shape == (1, 1, 4, C)
  # Evaluation: the logits alone, the same as a head without the auxiliary branch.
  plain = seg_heads.UPerNetHead(num_classes=C, channels=8, pool_scales=(2,), aux_loss_weight=0.0,
                                dropout_rate=0.0)
  assert "aux_conv" not in seg_train.init_variables(plain, feats, seed=0)["params"]
  no_aux = {"params": {k: v for k, v in variables["params"].items() if not k.startswith("aux")},
            "batch_stats": {k: v for k, v in variables["batch_stats"].items()
                            if not k.startswith("aux")}}
  np.testing.assert_array_equal(np.asarray(head.apply(variables, feats)),
                                np.asarray(plain.apply(no_aux, feats)))
  # Training: (logits, aux logits at the 1x level), loss = CE(main) + 0.4 CE(aux), both resized.
  (main, aux), _ = head.apply(variables, feats, train=True, mutable=["batch_stats"])
  assert main.shape == (2, 4 * GRID, 4 * GRID, C) and aux.shape == (2, GRID, GRID, C)
  labels = jnp.asarray(np.random.default_rng(9).integers(0, C, (2, 8 * GRID, 8 * GRID)), jnp.int32)
  valid = jnp.ones(labels.shape, bool)
  ce = lambda z: seg_train.masked_cross_entropy(
      seg_heads.resize_bilinear(z, labels.shape[1:3]), labels, valid)
  np.testing.assert_allclose(float(seg_train.training_loss(head, (main, aux), labels, valid)),
                             float(ce(main)) + 0.4 * float(ce(aux)), rtol=1e-6)
  np.testing.assert_allclose(float(seg_train.training_loss(plain, main, labels, valid)),
                             float(ce(main)), rtol=1e-6)
  # With dropout on, the main head draws the same channel masks with or without the auxiliary
  # head (its dropout is named, so the main one keeps its name and RNG stream).
  drop = seg_heads.UPerNetHead(num_classes=C, channels=8, pool_scales=(2,), aux_channels=4)
  drop_plain = seg_heads.UPerNetHead(num_classes=C, channels=8, pool_scales=(2,),
                                     aux_loss_weight=0.0)
  rngs = {"dropout": jax.random.key(3)}
  (main_d, _), _ = drop.apply(variables, feats, train=True, rngs=rngs, mutable=["batch_stats"])
  plain_d, _ = drop_plain.apply(no_aux, feats, train=True, rngs=rngs, mutable=["batch_stats"])
  np.testing.assert_array_equal(np.asarray(main_d), np.asarray(plain_d))
  with pytest.raises(ValueError, match="upernet_aux_loss_weight"):
    seg_heads.UPerNetHead(num_classes=C, channels=8, aux_loss_weight=-1.0).apply(variables, feats)
