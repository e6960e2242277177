"""What the encoder sees: the patch features of a real scene reduced to their first three
principal components and shown as RGB (report.png and the notebook).

Patches with similar features get similar colours; a network that learned something shows the
scene's structure (fields, rivers, edges), a random one mostly per-token noise.

The three components share one colour scale, set by the first: a component that holds 1 % of the
variance stays close to grey instead of being stretched over the full colour range (which, on the
smoke model's tokens, filled the picture with per-token noise; docs/RESULTS.md 1.4).
"""
from __future__ import annotations

import os

import numpy as np

# Real 224 px Sentinel-2 L1C scenes of eo_samples (TerraMind), the pictures of report.png: a river
# winding between fields, with a lake (Major-TOM cell 433D_629L); and a dry, sandy river valley
# between fields and tree lines in Kenya/Tanzania (38D_378R). The band order of their files
# (B10 included) is SCENE_BANDS.
DEFAULT_SCENES = tuple(os.path.join("terramind_majortom", "S2L1C", f"{name}.tif")
                       for name in ("433D_629L_3_1", "38D_378R_2_3"))
SCENE_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11",
               "B12")


def pca_rgb(tokens: np.ndarray) -> tuple[np.ndarray, float]:
  """(h, w, d) patch tokens -> ((h, w, 3) in [0, 1], share of the variance the 3 components hold).

  The components are centred on grey (0.5) and share one scale: the 2nd-98th percentile range of
  the first component spans 0 to 1, so each colour's contrast is its component's spread.
  """
  h, w, d = tokens.shape
  flat = tokens.reshape(-1, d).astype(np.float64)
  flat -= flat.mean(0)
  _, _, vt = np.linalg.svd(flat, full_matrices=False)
  pcs = flat @ vt[:3].T
  spread = np.percentile(pcs[:, 0], 98) - np.percentile(pcs[:, 0], 2)
  rgb = np.clip(0.5 + pcs / max(spread, 1e-9), 0, 1).reshape(h, w, 3)
  explained = float(pcs.var(0).sum() / max(flat.var(0).sum(), 1e-30))
  return rgb, explained


def true_colour(scene: np.ndarray, bands=SCENE_BANDS) -> np.ndarray:
  """(H, W, 3) B04/B03/B02 of a DN scene, stretched for display."""
  rgb = np.stack([scene[..., bands.index(b)] for b in ("B04", "B03", "B02")], -1).astype(float)
  lo, hi = np.percentile(rgb, 2), np.percentile(rgb, 98)
  return np.clip((rgb - lo) / max(hi - lo, 1e-9), 0, 1)


def read_scene(path: str) -> np.ndarray:
  """(H, W, 13) DN of an L1C GeoTIFF in SCENE_BANDS order."""
  import rasterio  # pylint: disable=g-import-not-at-top
  from terrafm_jax.eval.dataset import EvalDataError  # pylint: disable=g-import-not-at-top
  with rasterio.open(path) as f:
    x = f.read()
  if x.shape[0] != len(SCENE_BANDS):
    raise EvalDataError(f"{path}: {x.shape[0]} bands, expected the 13 L1C bands {SCENE_BANDS}")
  return np.moveaxis(x, 0, -1)


def scene_tokens(weights, scene: np.ndarray) -> np.ndarray:
  """(h, w, d) patch tokens of `weights` (eval.weights.Weights) on an L1C DN scene: the +1000
  offset is detected and removed, B10 dropped, the weights' contract normalises, the whole scene
  (cut to a multiple of the patch size) goes through the encoder in one pass."""
  from terrafm_jax.data import harmonize  # pylint: disable=g-import-not-at-top
  from terrafm_jax.eval import bands as bands_lib  # pylint: disable=g-import-not-at-top
  from terrafm_jax.eval import features as features_lib  # pylint: disable=g-import-not-at-top
  from terrafm_jax.eval.dataset import SourceGroup  # pylint: disable=g-import-not-at-top
  p = weights.encoder().dims["patch_size"]
  size = min(scene.shape[:2]) // p * p
  x = np.asarray(scene[:size, :size], np.float32)
  if harmonize.detect_offset(list(np.moveaxis(x, -1, 0))):
    x = harmonize.remove_offset(x).astype(np.float32)
  plans = bands_lib.plan((bands_lib.StemMapping("s2_l1c", "s2", drop=("B10",)),),
                         {"s2": SourceGroup(SCENE_BANDS, "dn")}, weights.contract, "scene")
  inputs = bands_lib.apply(plans, {"s2": x}, weights.contract)
  forward = features_lib.make_forward(weights, ("s2_l1c",), size, ("cls", "patch"))
  out = forward(weights.params, {"s2_l1c": inputs["s2_l1c"][None]})
  return np.asarray(out["patch"][0])


def scene_picture(weights, scene: np.ndarray) -> dict[str, object]:
  """PCA picture of `weights` on an L1C DN scene (scene_tokens, then pca_rgb)."""
  rgb, explained = pca_rgb(scene_tokens(weights, scene))
  return {"pca": rgb, "explained": explained, "rgb": true_colour(scene)}
