"""`<workdir>/report.png` at the end of a run: what the run did, in one picture.

Panels: the loss and the teacher entropy over steps (with log K, the collapse line), the sampler's
class exposure against the natural distribution of the prepared tiles (the land-cover-stratified
sampler should lift rare classes), the in-loop evaluation over steps when configured, and the k-NN
learning check as bars (random init vs pretrained, per modality and cross-modal). Read from the
same rows as metrics.jsonl, so a resumed run's report covers the whole run.
"""
from __future__ import annotations

import io
import json
import math
from typing import Any, Mapping, Sequence

import numpy as np
from etils import epath

from terrafm_jax.train.metrics import WORLDCOVER


def read_rows(path: epath.Path) -> list[dict[str, Any]]:
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _series(rows: Sequence[Mapping[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
  pts = [(r["step"], r[key]) for r in rows if key in r]
  if not pts:
    return np.zeros(0), np.zeros(0)
  steps, vals = zip(*sorted(dict(pts).items()))
  return np.asarray(steps), np.asarray(vals, np.float64)


def write_report(workdir: epath.Path, rows: Sequence[Mapping[str, Any]], *,
                 num_prototypes: int, natural: np.ndarray | None = None,
                 knn: Mapping[str, Any] | None = None,
                 transfer: Mapping[str, Any] | None = None,
                 pictures: Sequence[Mapping[str, Any]] | None = None) -> epath.Path:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  evals = sorted({k for r in rows for k in r if k.startswith("eval/") and
                  not k.endswith("_seconds")})
  panels = ["loss", "entropy", "exposure"] + (["eval"] if evals else []) + (
      ["knn"] if knn else []) + (["transfer"] if transfer else [])
  if pictures:  # one row per scene, starting on a row of its own
    panels += [f"blank{j}" for j in range(-len(panels) % 3)]
    panels += [f"{k}{i}" for i in range(len(pictures))
               for k in ("scene", "pca_pretrained", "pca_random_init")]
  cols = min(3, len(panels))
  nrows = math.ceil(len(panels) / cols)
  fig, axes = plt.subplots(nrows, cols, figsize=(5 * cols, 3.6 * nrows), squeeze=False)
  axes = list(axes.ravel())
  for name, ax in zip(panels + [""] * len(axes), axes):
    if not name or name.startswith("blank"):
      ax.axis("off")
  ax = dict(zip(panels, axes))

  s, v = _series(rows, "loss")
  ax["loss"].plot(s, v)
  ax["loss"].set(title="DINO loss", xlabel="step")
  s, v = _series(rows, "teacher_entropy")
  ax["entropy"].plot(s, v, label="teacher entropy")
  ax["entropy"].axhline(math.log(num_prototypes), color="grey", ls="--", label="log K (uniform)")
  ax["entropy"].set(title="teacher entropy (nats)", xlabel="step")
  ax["entropy"].legend(fontsize=7)

  last = next((r for r in reversed(rows) if any(k.startswith("exposure/") for k in r)), None)
  x = np.arange(len(WORLDCOVER))
  if last is not None:
    seen = np.asarray([last.get(f"exposure/{c}", 0.0) for c in WORLDCOVER])
    ax["exposure"].bar(x - 0.2, seen, 0.4, label="sampler exposure")
  if natural is not None:
    ax["exposure"].bar(x + 0.2, natural, 0.4, label="natural (prepared tiles)")
  ax["exposure"].set_xticks(x, WORLDCOVER, rotation=60, fontsize=7)
  ax["exposure"].set(title="class exposure (dominant WorldCover class)")
  ax["exposure"].legend(fontsize=7)

  if evals:
    for k in evals:
      s, v = _series(rows, k)
      ax["eval"].plot(s, v, marker="o", label=k.removeprefix("eval/"))
    ax["eval"].set(title="in-loop evaluation (%)", xlabel="step")
    ax["eval"].legend(fontsize=7)

  if knn:
    names = list(knn["per_modality"]) + ["cross-modal mean"]
    vals = list(knn["per_modality"].values()) + [knn["cross_modal_mean"]]
    x = np.arange(len(names))
    ax["knn"].bar(x - 0.2, [d["random_init"] for d in vals], 0.4, label="random init")
    ax["knn"].bar(x + 0.2, [d["pretrained"] for d in vals], 0.4, label="pretrained")
    ax["knn"].set_xticks(x, names, rotation=20, fontsize=7)
    ax["knn"].set(title=f"k-NN learning check (k={knn.get('k')})", ylim=(0, 1))
    ax["knn"].legend(fontsize=7)
  if transfer:
    _transfer_panel(ax["transfer"], transfer)
  for i, pic in enumerate(pictures or ()):
    _picture_row(ax, i, pic)
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=100)
  plt.close(fig)
  out = workdir / "report.png"
  out.write_bytes(buf.getvalue())  # through epath: a gs:// workdir gets its report too
  return out


def _picture_row(ax, i: int, pic: Mapping[str, Any]) -> None:
  """One real scene, and the PCA-RGB pictures of the teacher's and the random init's patch
  features (eval/feature_pca.py)."""
  ax[f"scene{i}"].imshow(pic["pretrained"]["rgb"])
  ax[f"scene{i}"].set_title(f"real scene: {'/'.join(str(pic['scene']).split('/')[-2:])}",
                            fontsize=8)
  for name in ("pretrained", "random_init"):
    a = ax[f"pca_{name}{i}"]
    a.imshow(pic[name]["pca"], interpolation="nearest")
    a.set_title(f"{name}: patch features, PCA to RGB "
                f"({100 * pic[name]['explained']:.0f} % of variance)", fontsize=8)
  for k in ("scene", "pca_pretrained", "pca_random_init"):
    ax[f"{k}{i}"].axis("off")


def _transfer_panel(ax, t: Mapping[str, Any]) -> None:
  """Real-pixel check: accuracy per feature set and k; each reading of the teacher is followed by
  what it is compared with, the paired intervals (first k) in the legend."""
  ks = [str(k) for k in t["ks"]]
  sets = list(t["accuracy"])
  width = 0.8 / len(sets)
  x = np.arange(len(ks))
  for i, name in enumerate(sets):
    vals = [t["accuracy"][name][k] for k in ks]
    label = name
    pairs = [p for p in t["intervals"] if p.endswith(f"-{name}")]
    if pairs:
      label += "; " + "; ".join(
          f"{p.split('-')[0]} - this: {iv['diff']:+.3f} [{iv['lo']:+.3f}, {iv['hi']:+.3f}]"
          for p in pairs for iv in [t["intervals"][p][ks[0]]])
    ax.bar(x + (i - (len(sets) - 1) / 2) * width, vals, width, label=label)
  ax.axhline(t["majority_class"], color="grey", ls="--", lw=1, label="majority class")
  ax.set_xticks(x, [f"k = {k}" for k in ks])
  ax.set(title=f"real EuroSAT ({t['num_images']} images): leave-one-out k-NN", ylim=(0, 1))
  ax.legend(fontsize=5, loc="upper left")
