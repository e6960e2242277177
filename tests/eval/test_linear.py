"""Linear probe: learns separable tasks, picks the best lr on validation, deterministic."""
from __future__ import annotations

import numpy as np
import pytest

from terrafm_jax.eval import linear, metrics


def blobs(n, num_classes=3, d=16, seed=0, scale=1.0, offset=0.0):
  rng = np.random.default_rng(seed)
  centres = np.random.default_rng(123).standard_normal((num_classes, d)) * 2.0
  y = rng.integers(0, num_classes, n)
  x = centres[y] + rng.standard_normal((n, d))
  return (x * scale + offset).astype(np.float32), y


def multilabel(n, num_classes=4, d=16, seed=0):
  rng = np.random.default_rng(seed)
  a = np.random.default_rng(7).standard_normal((d, num_classes))
  x = rng.standard_normal((n, d)).astype(np.float32)
  return x, (x @ a > 0.3).astype(np.int64)


def test_classification_probe_learns_and_picks_best_lr():
  tx, ty = blobs(200)
  vx, vy = blobs(120, seed=1)
  lrs = (1e-6, 1e-3, 3e-2)
  res = linear.fit_linear(tx, ty, vx, vy, kind="classification", num_classes=3, lrs=lrs,
                          epochs=15, batch_size=64, seed=0)
  assert set(res.val_scores) == set(lrs)
  assert res.val_score == max(res.val_scores.values()) and res.lr == max(
      res.val_scores, key=res.val_scores.get)
  assert res.val_score > 0.9
  assert res.val_scores[1e-6] < res.val_score          # an lr too small to move the probe
  assert res.metric == "accuracy" and res.train_loss.shape == (15,)
  assert res.train_loss[-1] < res.train_loss[0]
  # The reported model is the selected one: its predictions reproduce the validation score.
  pred = linear.predict_linear(res, vx)
  assert pred.dtype == np.int64 and pred.shape == (120,)
  assert metrics.accuracy(pred, vy) == res.val_score
  assert linear.linear_logits(res, vx).shape == (120, 3)


def test_deterministic_and_independent_of_the_other_lrs():
  tx, ty = blobs(90)           # 90 = 2 full batches of 40 + one padded batch
  vx, vy = blobs(40, seed=1)
  kw = dict(kind="classification", num_classes=3, epochs=4, batch_size=40, seed=3)
  a = linear.fit_linear(tx, ty, vx, vy, lrs=(1e-3, 1e-2), **kw)
  b = linear.fit_linear(tx, ty, vx, vy, lrs=(1e-3, 1e-2), **kw)
  np.testing.assert_array_equal(a.params["kernel"], b.params["kernel"])
  single = linear.fit_linear(tx, ty, vx, vy, lrs=(a.lr,), **kw)
  np.testing.assert_allclose(single.params["kernel"], a.params["kernel"], rtol=1e-5, atol=1e-6)
  c = linear.fit_linear(tx, ty, vx, vy, lrs=(a.lr,), **{**kw, "seed": 4})
  assert not np.array_equal(c.params["kernel"], single.params["kernel"])


def test_features_are_standardised_with_train_statistics():
  tx, ty = blobs(150, scale=1000.0, offset=5e4)
  vx, vy = blobs(80, seed=1, scale=1000.0, offset=5e4)
  res = linear.fit_linear(tx, ty, vx, vy, kind="classification", num_classes=3, lrs=(1e-2,),
                          epochs=10, batch_size=50)
  np.testing.assert_allclose(res.mean, tx.mean(0), rtol=1e-5)
  np.testing.assert_allclose(res.std, tx.std(0), rtol=1e-4)
  assert res.val_score > 0.9


def test_multilabel_probe_map_and_f1():
  tx, ty = multilabel(300)
  vx, vy = multilabel(150, seed=1)
  res = linear.fit_linear(tx, ty, vx, vy, kind="multilabel", num_classes=4, lrs=(1e-3, 1e-2),
                          epochs=20, batch_size=64)
  assert res.metric == "map" and res.val_score > 0.9
  assert res.val_score == pytest.approx(
      metrics.mean_average_precision(linear.linear_logits(res, vx), vy))
  pred = linear.predict_linear(res, vx)
  assert pred.shape == (150, 4) and set(np.unique(pred)) <= {0, 1}
  assert metrics.micro_f1(pred, vy) > 0.8
  f1 = linear.fit_linear(tx, ty, vx, vy, kind="multilabel", num_classes=4, lrs=(1e-2,),
                         epochs=20, batch_size=64, metric="micro_f1")
  assert f1.val_score == pytest.approx(metrics.micro_f1(linear.predict_linear(f1, vx), vy))


def test_bad_arguments():
  tx, ty = blobs(20)
  with pytest.raises(ValueError, match="kind"):
    linear.fit_linear(tx, ty, tx, ty, kind="regression", num_classes=3)
  with pytest.raises(ValueError, match="does not apply"):
    linear.fit_linear(tx, ty, tx, ty, kind="classification", num_classes=3, metric="map")
  with pytest.raises(ValueError, match="outside"):
    linear.fit_linear(tx, ty, tx, ty, kind="classification", num_classes=2)
  with pytest.raises(ValueError, match="0/1"):
    linear.fit_linear(tx, ty, tx, ty, kind="multilabel", num_classes=3)
