"""The PCA-RGB picture of patch features (report.png, the notebook)."""
from __future__ import annotations

import numpy as np
import pytest

from terrafm_jax.eval import feature_pca


def _tokens(noise: float, seed: int = 0):
  """A 16 x 16 token field: a diagonal 'river' along one direction, a left/right split along a
  second, and isotropic noise of the given size in every direction."""
  rng = np.random.default_rng(seed)
  r, c = np.mgrid[:16, :16]
  river = (np.abs(r - c) < 2).astype(float)
  halves = (c >= 8).astype(float)
  basis = np.linalg.qr(rng.normal(size=(32, 32)))[0]
  x = 3.0 * river[..., None] * basis[0] + 1.5 * halves[..., None] * basis[1]
  return x + noise * rng.normal(size=(16, 16, 32)), river


def test_components_share_one_colour_scale():
  tokens, river = _tokens(noise=0.05)
  rgb, explained = feature_pca.pca_rgb(tokens)
  assert rgb.shape == (16, 16, 3) and rgb.min() >= 0 and rgb.max() <= 1
  assert explained > 0.95
  # The river is the first component: its colour separates river from land patches.
  red = rgb[..., 0]
  gap = abs(red[river == 1].mean() - red[river == 0].mean())
  assert gap > 0.5
  # The third component is noise (<1 % of the variance): on the shared scale it stays near grey;
  # a per-component stretch would have spread it over the whole range.
  assert np.abs(rgb[..., 2] - 0.5).max() < 0.1
  assert rgb[..., 1].std() > 5 * rgb[..., 2].std()


def test_picture_depends_on_the_tokens_shape_not_their_scale_or_offset():
  # One colour scale set by the data itself: scaling or shifting every token changes nothing,
  # so pictures of networks with different feature norms compare.
  tokens, _ = _tokens(noise=0.05)
  rgb, explained = feature_pca.pca_rgb(tokens)
  rgb2, explained2 = feature_pca.pca_rgb(10.0 * tokens + 3.0)
  np.testing.assert_allclose(np.abs(rgb2 - 0.5), np.abs(rgb - 0.5), atol=1e-9)
  assert explained2 == pytest.approx(explained)
  # Pure noise: no direction stands out, and the three colours spread alike.
  noise = np.random.default_rng(1).normal(size=(16, 16, 32))
  rgb, explained = feature_pca.pca_rgb(noise)
  assert explained < 0.5
  spreads = rgb.reshape(-1, 3).std(axis=0)
  assert spreads.min() > 0.5 * spreads.max()
