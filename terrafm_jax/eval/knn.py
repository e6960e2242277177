"""Weighted k-nearest-neighbour classification of frozen features (Galileo protocol, METHOD.md 7).

Cosine similarity, the top-k training neighbours of each query vote for their class with weight
exp(sim / T), T = 0.07; the class with the largest vote wins.
"""
from __future__ import annotations

import numpy as np


def _normalize(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def knn_predict(train_features: np.ndarray, train_labels: np.ndarray,
                test_features: np.ndarray, num_classes: int, k: int = 20,
                temperature: float = 0.07, chunk: int = 1024) -> np.ndarray:
  """(n_test,) predicted class indices."""
  if len(train_features) != len(train_labels):
    raise ValueError(f"{len(train_features)} training features but {len(train_labels)} labels")
  if k <= 0:
    raise ValueError(f"k must be positive, got {k}")
  k = min(k, len(train_features))
  train = _normalize(train_features)
  labels = np.asarray(train_labels, np.int64)
  preds = []
  for lo in range(0, len(test_features), chunk):
    sim = _normalize(test_features[lo:lo + chunk]) @ train.T        # (q, n_train)
    idx = np.argpartition(-sim, k - 1, axis=1)[:, :k]                 # top-k, unordered
    top_sim = np.take_along_axis(sim, idx, axis=1)
    weights = np.exp(top_sim / temperature)
    votes = np.zeros((len(sim), num_classes))
    np.add.at(votes, (np.arange(len(sim))[:, None], labels[idx]), weights)
    preds.append(np.argmax(votes, axis=1))
  return np.concatenate(preds) if preds else np.zeros((0,), np.int64)


def knn_accuracy(train_features, train_labels, test_features, test_labels, num_classes: int,
                 k: int = 20, temperature: float = 0.07) -> float:
  pred = knn_predict(train_features, train_labels, test_features, num_classes, k, temperature)
  return float(np.mean(pred == np.asarray(test_labels)))
