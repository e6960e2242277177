"""kNN (single- and multi-label) and the protocol metrics against hand-computed values."""
from __future__ import annotations

import numpy as np
import pytest

from terrafm_jax.eval import knn, metrics


def test_accuracy_indices_and_scores():
  assert metrics.accuracy(np.array([0, 1, 2, 2]), np.array([0, 1, 1, 2])) == 0.75
  scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
  assert metrics.accuracy(scores, np.array([0, 0, 0])) == pytest.approx(2 / 3)
  with pytest.raises(ValueError, match="does not match"):
    metrics.accuracy(np.zeros(3), np.zeros(4))


def test_micro_f1_hand_computed():
  pred = np.array([[1, 0, 1], [0, 1, 0]])
  target = np.array([[1, 1, 0], [0, 1, 0]])
  # TP = 2, FP = 1 (row 0 class 2), FN = 1 (row 0 class 1): 2*2 / (4 + 1 + 1)
  assert metrics.micro_f1(pred, target) == pytest.approx(4 / 6)
  assert metrics.micro_f1(np.zeros((2, 3)), np.zeros((2, 3))) == 0.0
  assert metrics.micro_f1(target, target) == 1.0
  with pytest.raises(ValueError, match="0/1"):
    metrics.micro_f1(np.full((2, 3), 0.5), target)


def test_average_precision_hand_computed_and_ties():
  # Thresholds .9 (P 1, R .5), .8 (P .5, R .5), .7 (P 2/3, R 1), .6 (P .5, R 1).
  ap = metrics.average_precision(np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, 0]))
  assert ap == pytest.approx(0.5 * 1.0 + 0.5 * 2 / 3)
  # One tied threshold: P = 1/2 at R = 1.
  assert metrics.average_precision(np.array([0.5, 0.5]), np.array([1, 0])) == 0.5
  # Tie between a positive and a negative above another positive: (.5 at R .5) + (2/3 at R 1).
  ap = metrics.average_precision(np.array([0.9, 0.9, 0.1]), np.array([1, 0, 1]))
  assert ap == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)
  assert np.isnan(metrics.average_precision(np.array([0.1, 0.2]), np.array([0, 0])))


def test_mean_average_precision_skips_classes_without_positives():
  scores = np.array([[0.9, 0.1, 0.3], [0.8, 0.7, 0.2], [0.7, 0.2, 0.9], [0.6, 0.9, 0.1]])
  target = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 1, 0]])
  # class 0: 5/6 (as above); class 1: ranks .9(+) .7(+) -> 1.0; class 2: no positive, left out.
  assert metrics.mean_average_precision(scores, target) == pytest.approx((5 / 6 + 1.0) / 2)
  with pytest.raises(ValueError, match="no class has a positive"):
    metrics.mean_average_precision(scores, np.zeros_like(target))


def test_confusion_and_miou_with_ignore_index():
  pred = np.array([[0, 0, 1], [1, 2, 3]])
  target = np.array([[0, 1, 1], [1, 255, 255]])
  conf = metrics.confusion_matrix(pred, target, 4, ignore_index=255)
  expected = np.zeros((4, 4), np.int64)
  expected[0, 0] = 1
  expected[1, 0] = 1
  expected[1, 1] = 2
  np.testing.assert_array_equal(conf, expected)
  iou = metrics.iou_from_confusion(conf)
  np.testing.assert_allclose(iou[:2], [1 / 2, 2 / 3])
  assert np.isnan(iou[2]) and np.isnan(iou[3])  # only predicted at ignored pixels: absent
  assert metrics.mean_iou(pred, target, 4, ignore_index=255) == pytest.approx((1 / 2 + 2 / 3) / 2)
  # A class predicted but never true counts, with IoU 0.
  assert metrics.mean_iou(np.array([0, 2]), np.array([0, 0]), 3) == pytest.approx((0.5 + 0) / 2)
  with pytest.raises(ValueError, match="outside"):
    metrics.confusion_matrix(pred, target, 4)  # 255 is not ignored here


def test_knn_predict_unchanged_behaviour():
  train = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
  labels = np.array([0, 0, 1])
  test = np.array([[1.0, 0.05], [0.1, 1.0]])
  np.testing.assert_array_equal(knn.knn_predict(train, labels, test, 2, k=1), [0, 1])
  assert knn.knn_accuracy(train, labels, test, [0, 0], 2, k=1) == 0.5


def test_knn_multilabel_hand_computed():
  train = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
  labels = np.array([[1, 0], [1, 1], [0, 1]])
  # k=2 neighbours of [1, 0]: sims 1 (labels 1,0) and .8 (labels 1,1).
  # class 0: both positive -> 1; class 1: pos e^(.8/.07) < neg e^(1/.07) -> 0.
  pred = knn.knn_predict_multilabel(train, labels, np.array([[1.0, 0.0]]), k=2)
  np.testing.assert_array_equal(pred, [[1, 0]])
  assert pred.dtype == np.int64
  # An exact tie (equal weights on both sides) is negative.
  pred = knn.knn_predict_multilabel(np.array([[1.0, 0.0], [1.0, 0.0]]), np.array([[1], [0]]),
                                    np.array([[1.0, 0.0]]), k=2)
  np.testing.assert_array_equal(pred, [[0]])


def test_knn_multilabel_equals_per_class_binary_knn():
  rng = np.random.default_rng(0)
  train = rng.standard_normal((60, 8))
  labels = (rng.random((60, 5)) < 0.4).astype(np.int64)
  test = rng.standard_normal((25, 8))
  pred = knn.knn_predict_multilabel(train, labels, test, k=7, chunk=10)
  assert pred.shape == (25, 5)
  for c in range(5):
    np.testing.assert_array_equal(pred[:, c], knn.knn_predict(train, labels[:, c], test, 2, k=7))
  target = (rng.random((25, 5)) < 0.4).astype(np.int64)
  assert knn.knn_multilabel_f1(train, labels, test, target, k=7) == metrics.micro_f1(pred, target)


def test_knn_multilabel_rejects_bad_labels():
  with pytest.raises(ValueError, match=r"\(n_train, C\)"):
    knn.knn_predict_multilabel(np.ones((3, 2)), np.array([0, 1, 0]), np.ones((1, 2)))
  with pytest.raises(ValueError, match="k must be positive"):
    knn.knn_predict_multilabel(np.ones((3, 2)), np.ones((3, 2)), np.ones((1, 2)), k=0)
