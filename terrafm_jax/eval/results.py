"""Evaluation results: one row per (task, protocol, partition), as a table, JSON and PNGs.

`results.json` holds a list of rows: task, protocol, partition, metric, value (percent), the
published TerraFM-B value when there is one, the weights' provenance (kind, source, step, variant,
parameter digest), the input contract's digest, the seed, and protocol details (per-lr validation
scores, chosen lr, sample counts). Beside it: `results.png` (a bar chart of the rows, ours beside
the published number) and, per row, a confusion matrix (classification) or the predicted mask
beside the RGB composite and the reference (segmentation).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Sequence

import numpy as np


@dataclasses.dataclass
class Row:
  task: str
  protocol: str
  partition: str
  metric: str
  value: float
  published: float | None
  provenance: dict[str, Any]
  seed: int
  details: dict[str, Any] = dataclasses.field(default_factory=dict)
  # Plot material, not written to JSON.
  confusion: np.ndarray | None = None
  example: dict[str, np.ndarray] | None = None

  def to_json(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d.pop("confusion")
    d.pop("example")
    d["contract_digest"] = self.provenance.get("contract_digest")
    return d


def format_table(rows: Sequence[Row]) -> str:
  head = ("task", "protocol", "partition", "metric", "ours", "TerraFM-B (published)")
  body = [(r.task, r.protocol, r.partition, r.metric, f"{r.value:.1f}",
           "" if r.published is None else f"{r.published:.1f}") for r in rows]
  widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
  line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
  sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
  return "\n".join([line(head), sep] + [line(b) for b in body])


def _slug(row: Row) -> str:
  return f"{row.task.replace('/', '_')}_{row.protocol}_{row.partition}"


def _plt():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def plot_bars(rows: Sequence[Row], path: str) -> str:
  plt = _plt()
  labels = [f"{r.task.split('/')[-1]}\n{r.protocol} ({r.partition})" for r in rows]
  x = np.arange(len(rows))
  fig, ax = plt.subplots(figsize=(max(4.0, 1.3 * len(rows) + 1), 3.6))
  ax.bar(x - 0.2, [r.value for r in rows], 0.4, label="ours")
  pub = [np.nan if r.published is None else r.published for r in rows]
  ax.bar(x + 0.2, pub, 0.4, label="TerraFM-B (published)")
  ax.set_xticks(x, labels, fontsize=7)
  ax.set_ylabel("score (%)")
  ax.set_ylim(0, 100)
  ax.legend(fontsize=7)
  prov = rows[0].provenance if rows else {}
  ax.set_title(f"weights: {prov.get('kind')} {os.path.basename(str(prov.get('source', '')))}",
               fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def plot_confusion(row: Row, path: str) -> str:
  plt = _plt()
  cm = np.asarray(row.confusion, np.float64)
  norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
  fig, ax = plt.subplots(figsize=(4.2, 3.8))
  im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  ax.set_title(f"{row.task} {row.protocol}: {row.metric} {row.value:.1f}", fontsize=8)
  fig.colorbar(im, ax=ax, fraction=0.046)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def plot_segmentation(row: Row, path: str) -> str:
  plt = _plt()
  ex = row.example
  c = int(max(ex["truth"].max(), ex["pred"].max())) + 1
  fig, axes = plt.subplots(1, 3, figsize=(8, 3))
  for ax, img, title in zip(axes, (ex["rgb"], ex["truth"], ex["pred"]),
                            ("RGB composite", "reference", "prediction")):
    if img.ndim == 3:
      ax.imshow(img)
    else:
      ax.imshow(img, cmap="tab20", vmin=0, vmax=max(c - 1, 1), interpolation="nearest")
    ax.set_title(title, fontsize=8)
    ax.axis("off")
  fig.suptitle(f"{row.task} {row.protocol}: mIoU {row.value:.1f}", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def write(rows: Sequence[Row], out_dir: str) -> dict[str, Any]:
  """results.json + results.png + one PNG per row that has plot material; returns the paths."""
  os.makedirs(out_dir, exist_ok=True)
  paths: dict[str, Any] = {"json": os.path.join(out_dir, "results.json"), "plots": []}
  tmp = paths["json"] + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump([r.to_json() for r in rows], f, indent=2, default=_json_default)
    f.write("\n")
  os.replace(tmp, paths["json"])
  if rows:
    paths["plots"].append(plot_bars(rows, os.path.join(out_dir, "results.png")))
  for r in rows:
    if r.confusion is not None:
      paths["plots"].append(plot_confusion(r, os.path.join(out_dir, f"{_slug(r)}_confusion.png")))
    if r.example is not None:
      paths["plots"].append(plot_segmentation(r, os.path.join(out_dir, f"{_slug(r)}_mask.png")))
  return paths


def _json_default(o):
  if isinstance(o, (np.floating, np.integer)):
    return o.item()
  if isinstance(o, np.ndarray):
    return o.tolist()
  raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def rgb_composite(sample: dict[str, np.ndarray], inputs) -> np.ndarray:
  """(H, W, 3) float in [0, 1] for display: B04/B03/B02 (S2, 2-98 % stretch) or VV/VH/VV-VH (S1)."""
  rgb = ("B04", "B03", "B02")
  s2 = [g for g, src in inputs.items() if all(b in src.bands for b in rgb)]
  if s2:
    bands = inputs[s2[0]].bands
    x = np.stack([sample[s2[0]][..., bands.index(b)] for b in rgb], -1)
  else:
    group = next(iter(inputs))
    x = np.asarray(sample[group], np.float64)
    x = np.stack([x[..., 0], x[..., min(1, x.shape[-1] - 1)],
                  x[..., 0] - x[..., min(1, x.shape[-1] - 1)]], -1)
  x = np.asarray(x, np.float64)
  lo, hi = np.percentile(x, 2), np.percentile(x, 98)
  return np.clip((x - lo) / max(hi - lo, 1e-9), 0, 1)
