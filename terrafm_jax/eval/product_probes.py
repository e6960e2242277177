"""The same probes on embedding products (eval/products.py), products compared on the same samples.

Only the samples every product covers are scored. On them:
  knn     leave-one-out weighted k-NN (cosine, exp(sim / T) votes) at each k of `ks`, as the
          real-pixel learning check (eval/transfer_check.py);
  linear  the linear probe of eval/linear.py under stratified `folds`-fold cross-validation: fold f
          is the test fold, fold f + 1 picks the lr, the rest trains; every sample is tested once.
Each protocol gives a 0/1 score per sample, so two products differ by a paired bootstrap over
samples (the same resampled samples score both), printed against the first product named.
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Mapping, Sequence

import numpy as np
from absl import logging

from terrafm_jax import protocol
from terrafm_jax.eval import linear as linear_lib
from terrafm_jax.eval import products as products_lib
from terrafm_jax.eval import transfer_check as tc
from terrafm_jax.eval.dataset import EvalDataError
from terrafm_jax.eval.results import Row

PROTOCOLS = ("knn", "linear")


@dataclasses.dataclass(frozen=True)
class ProbeSettings:
  ks: tuple[int, ...] = protocol.KNN_KS
  temperature: float = protocol.KNN_TEMPERATURE
  folds: int = 5
  lrs: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
  epochs: int = 50
  batch_size: int = 256
  weight_decay: float = 1e-4
  num_bootstrap: int = 2000
  seed: int = 0


def stratified_folds(y: np.ndarray, folds: int, seed: int) -> np.ndarray:
  """(n,) fold index per sample: each class shuffled, then dealt round-robin over the folds."""
  if folds < 3:
    raise ValueError(f"folds must be at least 3 (test, validation, train), got {folds}")
  rng = np.random.default_rng([seed, 7])
  out = np.empty(len(y), np.int64)
  offset = 0
  for c in np.unique(y):
    idx = rng.permutation(np.flatnonzero(y == c))
    out[idx] = (offset + np.arange(len(idx))) % folds
    offset += len(idx)   # the next class starts where this one stopped: folds stay balanced
  return out


def linear_cv_correct(x: np.ndarray, y: np.ndarray, num_classes: int,
                      s: ProbeSettings) -> tuple[np.ndarray, list[float]]:
  """(n,) bool correct under cross-validation, and the lr chosen for each fold."""
  fold = stratified_folds(y, s.folds, s.seed)
  pred = np.full(len(y), -1, np.int64)
  chosen = []
  for f in range(s.folds):
    test, val = fold == f, fold == (f + 1) % s.folds
    train = ~(test | val)
    if not test.any():
      continue
    res = linear_lib.fit_linear(x[train], y[train], x[val], y[val], kind="classification",
                                num_classes=num_classes, lrs=s.lrs, epochs=s.epochs,
                                batch_size=s.batch_size, weight_decay=s.weight_decay,
                                seed=s.seed + f)
    pred[test] = linear_lib.predict_linear(res, x[test])
    chosen.append(res.lr)
  return pred == y, chosen


def _digest(x: np.ndarray) -> str:
  return hashlib.sha256(np.ascontiguousarray(x, np.float32).tobytes()).hexdigest()[:16]


def evaluate(sources: Mapping[str, str], labels_path: str, *, join: str = "grid_cell",
             label_column: str = "label", protocols: Sequence[str] = PROTOCOLS,
             settings: ProbeSettings = ProbeSettings()) -> tuple[list[Row], dict[str, Any]]:
  """Rows (one per product x protocol setting) and a summary with the counts and comparisons."""
  for p in protocols:
    if p not in PROTOCOLS:
      raise ValueError(f"embedding products take the protocols {PROTOCOLS}, not {p!r}")
  labels = products_lib.read_labels(labels_path, join, label_column)
  joined = [products_lib.join_product(n, p, labels) for n, p in sources.items()]
  common = np.logical_and.reduce([j.covered for j in joined])
  for j in joined:
    logging.info("%s: %s", j.name, j.counts)
  n = int(common.sum())
  present = np.unique(labels.y[common])
  if n < 3 or len(present) < 2:
    covered = ", ".join(f"{j.name}: {j.counts['labels_covered']}" for j in joined)
    raise EvalDataError(
        f"{labels_path}: only {n} labelled sample(s) in {len(present)} class(es) are covered by "
        f"every product ({covered} of {len(labels.y)}); check the join ({join}) and the "
        "products' area")
  # Classes renumbered over the scored samples, so absent classes take no logit or vote.
  y = np.searchsorted(present, labels.y[common])
  num_classes = len(present)
  correct: dict[str, dict[str, np.ndarray]] = {}
  rows = []
  partition = f"{products_lib.epath.Path(labels_path).name} by {join}"
  for j in joined:
    x = j.features[common]
    prov = {"kind": "embedding_product", "source": j.path, "features_digest": _digest(x),
            **{k: v for k, v in j.metadata.items() if k in ("weights", "modality")}}
    per: dict[str, np.ndarray] = {}
    details_common = {"num_samples": n, "num_classes": num_classes, "dim": int(x.shape[1]),
                      "counts": j.counts, "classes": [labels.classes[c] for c in present]}
    if "knn" in protocols:
      for k in settings.ks:
        per[f"knn k={k}"] = tc.loo_knn_correct(x, y, num_classes, k, settings.temperature)
    if "linear" in protocols:
      per["linear"], lrs = linear_cv_correct(x, y, num_classes, settings)
    for setting, ok in per.items():
      protocol = setting.split()[0]
      details = dict(details_common, setting=setting)
      if protocol == "knn":
        details.update(k=int(setting.split("=")[1]), temperature=settings.temperature,
                       scheme="leave-one-out")
      else:
        details.update(scheme=f"stratified {settings.folds}-fold", lrs_chosen=lrs)
      rows.append(Row(task=f"product:{j.name}", protocol=setting, partition=partition,
                      metric="accuracy", value=100.0 * float(ok.mean()), published=None,
                      provenance=prov, seed=settings.seed, details=details))
    correct[j.name] = per
  comparisons = []
  first = joined[0].name
  for j in joined[1:]:
    for setting, ok in correct[first].items():
      other = correct[j.name][setting]
      ci = tc.paired_bootstrap(ok, other, settings.num_bootstrap, seed=settings.seed)
      comparisons.append({"a": first, "b": j.name, "setting": setting, **ci})
  for r in rows:
    r.details["vs"] = [c for c in comparisons if f"product:{c['b']}" == r.task
                       and c["setting"] == r.protocol]
  summary = {"labels": labels_path, "join": join, "num_labels": int(len(labels.y)),
             "num_scored": n, "classes": list(labels.classes),
             "products": {j.name: j.counts for j in joined}, "comparisons": comparisons}
  return rows, summary


def format_summary(rows: Sequence[Row], summary: Mapping[str, Any]) -> str:
  lines = [f"{summary['num_scored']} of {summary['num_labels']} labelled samples scored (covered "
           f"by every product), {len(summary['classes'])} classes, joined by {summary['join']}"]
  for name, c in summary["products"].items():
    lines.append(f"  {name}: {c['rows']} rows, {c['rows_used']} used, "
                 f"{c['rows_without_label']} without a label; {c['labels_covered']} labels "
                 f"covered, {c['labels_not_covered']} not")
  width = max(len(r.task) for r in rows)
  lines.append("")
  lines.append(f"| {'product'.ljust(width)} | protocol     | accuracy |")
  lines.append(f"|{'-' * (width + 2)}|--------------|----------|")
  for r in rows:
    lines.append(f"| {r.task.ljust(width)} | {r.protocol.ljust(12)} | {r.value:8.1f} |")
  for c in summary["comparisons"]:
    lines.append(f"{c['a']} - {c['b']} ({c['setting']}): {100 * c['diff']:+.1f} points, paired "
                 f"95 % interval [{100 * c['lo']:+.1f}, {100 * c['hi']:+.1f}]")
  return "\n".join(lines)

