"""How much of a real scene's land-cover layout the patch features carry, as a number.

  python bench/scene_structure.py --weights=workdirs/smoke
  python bench/scene_structure.py --weights=workdirs/smoke --pictures=/tmp/pca   # + PNGs

The five TerraMind scenes of eo_samples come with a land-cover map (TerraMesh LULC), which
pretraining never sees (it reads the scenes unlabelled). Each patch gets the map's majority class;
the patch tokens of the whole 224 px L1C scene are clustered (k-means, k = 6, three seeds) and
the clusters compared with those classes by normalised mutual information (NMI, 0 = unrelated,
1 = the same partition). Three feature sets: the weights' teacher, the same architecture at its
random init (seed 0), and the raw patch spectra (the mean of each band over the patch). Scenes
whose map has one class at patch scale have no NMI ("-"). With --pictures, each scene's
PCA-RGB pictures (eval/feature_pca.py) are written beside the true colour.
"""
from __future__ import annotations

import argparse
import collections
import logging
import os
import platform
import sys

import numpy as np
from scipy.cluster import vq

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from terrafm_jax import platforms  # noqa: E402
from terrafm_jax.eval import feature_pca  # noqa: E402
from terrafm_jax.eval.readers import eosamples  # noqa: E402
from terrafm_jax.eval.weights import Weights, load_weights, random_params  # noqa: E402

SCENES = ("282D_485L_3_3", "38D_378R_2_3", "433D_629L_3_1", "609U_541L_3_0", "637U_59R_1_3")


def nmi(a, b) -> float:
  """Normalised mutual information of two labelings (geometric-mean normalisation)."""
  n = len(a)
  ca, cb, cab = collections.Counter(a), collections.Counter(b), collections.Counter(zip(a, b))
  ent = lambda c: -sum(v / n * np.log(v / n) for v in c.values())
  mi = sum(v / n * np.log(v * n / (ca[x] * cb[y])) for (x, y), v in cab.items())
  ha, hb = ent(ca), ent(cb)
  return float(mi / np.sqrt(ha * hb)) if ha > 0 and hb > 0 else float("nan")


def cluster_nmi(features: np.ndarray, classes: np.ndarray, k: int, seeds: int = 3) -> float:
  x = features.reshape(-1, features.shape[-1]).astype(np.float64)
  x = x - x.mean(0)
  scores = []
  for s in range(seeds):
    _, labels = vq.kmeans2(x, k, seed=s, minit="++")
    scores.append(nmi(labels.tolist(), classes.tolist()))
  return float(np.mean(scores))


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--weights", required=True, help="a workdir, a weights file or random:<variant>")
  ap.add_argument("--eo_samples", default="", help="eo_samples folder (default: beside the repo)")
  ap.add_argument("--k", type=int, default=6)
  ap.add_argument("--pictures", default="", help="folder for the PCA-RGB pictures (optional)")
  args = ap.parse_args()
  platforms.quiet_libtpu_without_tpu()
  logging.getLogger("absl").setLevel(logging.ERROR)  # Orbax's read-only checkpoint notes
  import rasterio  # pylint: disable=g-import-not-at-top
  root = os.path.join(args.eo_samples or eosamples.default_root(), "terramind_majortom")
  w = load_weights(args.weights)
  rnd = Weights(random_params(w.model_config, 0), w.model_config, w.contract, {"kind": "random"})
  p = w.encoder().dims["patch_size"]
  print(f"# {platform.node()} {platform.machine()}; weights {args.weights} ({w.variant}); "
        f"k-means k = {args.k}, NMI against the majority LULC class per {p} px patch")
  print("| scene (classes at patch scale) | pretrained tokens | random init tokens | "
        "raw patch spectra |")
  print("|---|---|---|---|")
  for name in SCENES:
    scene = feature_pca.read_scene(os.path.join(root, "S2L1C", f"{name}.tif"))
    with rasterio.open(os.path.join(root, "LULC", f"{name}.tif")) as f:
      lulc = f.read(1)
    g = min(scene.shape[:2]) // p
    cut = lambda a: a[:g * p, :g * p].reshape(g, p, g, p, *a.shape[2:]).swapaxes(1, 2)
    classes = np.array([np.bincount(c.ravel()).argmax() for c in cut(lulc).reshape(g * g, -1)])
    spectra = cut(scene.astype(np.float64)).mean(axis=(2, 3))
    feats = {"pretrained": feature_pca.scene_tokens(w, scene),
             "random": feature_pca.scene_tokens(rnd, scene), "raw": spectra}
    n_cls = len(set(classes.tolist()))
    cells = [("-" if n_cls < 2 else f"{cluster_nmi(f, classes, args.k):.3f}")
             for f in feats.values()]
    print(f"| {name} ({n_cls}) | " + " | ".join(cells) + " |")
    if args.pictures:
      import matplotlib  # pylint: disable=g-import-not-at-top
      matplotlib.use("Agg")
      import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
      os.makedirs(args.pictures, exist_ok=True)
      fig, ax = plt.subplots(1, 3, figsize=(9, 3.2))
      ax[0].imshow(feature_pca.true_colour(scene))
      ax[0].set_title(name, fontsize=8)
      for a, key in zip(ax[1:], ("pretrained", "random")):
        rgb, explained = feature_pca.pca_rgb(feats[key])
        a.imshow(rgb, interpolation="nearest")
        a.set_title(f"{key}: PCA to RGB ({100 * explained:.0f} %)", fontsize=8)
      for a in ax:
        a.axis("off")
      fig.tight_layout()
      fig.savefig(os.path.join(args.pictures, f"{name}.png"), dpi=80)
      plt.close(fig)


if __name__ == "__main__":
  main()
