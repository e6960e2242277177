"""Weighted k-nearest-neighbour classification of frozen features (Galileo protocol, METHOD.md 7).

Cosine similarity, the top-k training neighbours of each query vote for their class with weight
exp(sim / T), T = 0.07; the class with the largest vote wins. Multi-label: one binary kNN per
class over the same neighbours, scored with micro-F1.
"""
from __future__ import annotations

import numpy as np

from terrafm_jax import protocol
from terrafm_jax.eval import metrics


def _normalize(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _check(train_features, train_labels, k: int) -> int:
  """k capped at the training set size, after the input checks shared by both predictors."""
  if len(train_features) != len(train_labels):
    raise ValueError(f"{len(train_features)} training features but {len(train_labels)} labels")
  if k <= 0:
    raise ValueError(f"k must be positive, got {k}")
  return min(k, len(train_features))


def _top_k(train: np.ndarray, queries: np.ndarray, k: int,
           temperature: float) -> tuple[np.ndarray, np.ndarray]:
  """Indices (q, k) of the k most cosine-similar training rows (unordered) and their weights
  exp(sim / T); `train` is already normalised."""
  sim = _normalize(queries) @ train.T                                 # (q, n_train)
  idx = np.argpartition(-sim, k - 1, axis=1)[:, :k]
  return idx, np.exp(np.take_along_axis(sim, idx, axis=1) / temperature)


def knn_predict(train_features: np.ndarray, train_labels: np.ndarray,
                test_features: np.ndarray, num_classes: int, k: int = protocol.KNN_K,
                temperature: float = protocol.KNN_TEMPERATURE, chunk: int = 1024) -> np.ndarray:
  """(n_test,) predicted class indices."""
  k = _check(train_features, train_labels, k)
  train = _normalize(train_features)
  labels = np.asarray(train_labels, np.int64)
  preds = []
  for lo in range(0, len(test_features), chunk):
    idx, weights = _top_k(train, test_features[lo:lo + chunk], k, temperature)
    votes = np.zeros((len(idx), num_classes))
    np.add.at(votes, (np.arange(len(idx))[:, None], labels[idx]), weights)
    preds.append(np.argmax(votes, axis=1))
  return np.concatenate(preds) if preds else np.zeros((0,), np.int64)


def knn_accuracy(train_features, train_labels, test_features, test_labels, num_classes: int,
                 k: int = protocol.KNN_K, temperature: float = protocol.KNN_TEMPERATURE) -> float:
  pred = knn_predict(train_features, train_labels, test_features, num_classes, k, temperature)
  return float(np.mean(pred == np.asarray(test_labels)))


def knn_predict_multilabel(train_features: np.ndarray, train_labels: np.ndarray,
                           test_features: np.ndarray, k: int = protocol.KNN_K,
                           temperature: float = protocol.KNN_TEMPERATURE,
                           chunk: int = 1024) -> np.ndarray:
  """(n_test, C) int64 0/1: one binary weighted kNN per class (Galileo's multilabel kNN).

  Class c is predicted when the weights of the neighbours labelled 1 for c sum to more than those
  of the neighbours labelled 0 (a tie is 0, as Galileo's argmax over [neg, pos] gives). The
  neighbours do not depend on the class, so they are searched once for all classes.
  """
  labels = np.asarray(train_labels)
  if labels.ndim != 2:
    raise ValueError(f"multilabel train_labels must be (n_train, C) 0/1, got shape {labels.shape}")
  k = _check(train_features, labels, k)
  train = _normalize(train_features)
  pos_labels = (labels > 0).astype(np.float64)
  preds = []
  for lo in range(0, len(test_features), chunk):
    idx, weights = _top_k(train, test_features[lo:lo + chunk], k, temperature)
    pos = np.einsum("qk,qkc->qc", weights, pos_labels[idx])
    neg = np.einsum("qk,qkc->qc", weights, 1.0 - pos_labels[idx])
    preds.append((pos > neg).astype(np.int64))
  return (np.concatenate(preds) if preds
          else np.zeros((0, labels.shape[1]), np.int64))


def knn_multilabel_f1(train_features, train_labels, test_features, test_labels,
                      k: int = protocol.KNN_K,
                      temperature: float = protocol.KNN_TEMPERATURE) -> float:
  """Micro-F1 of `knn_predict_multilabel` (GEO-Bench m-BigEarthNet kNN score)."""
  pred = knn_predict_multilabel(train_features, train_labels, test_features, k, temperature)
  return metrics.micro_f1(pred, test_labels)
