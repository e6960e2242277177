"""Stratified sampler: weights (beta, ocean), determinism from (seed, position), exposure."""
import numpy as np
import pytest

from terrafm_jax.data import sampling


def _pure_tiles(counts):
  """One-hot histograms: counts[c] tiles of class c."""
  labels = np.repeat(np.arange(len(counts)), counts)
  hist = np.zeros((len(labels), 11))
  hist[np.arange(len(labels)), labels] = 1
  return hist, labels


def test_beta_zero_is_natural_and_one_is_class_balanced():
  hist, labels = _pure_tiles([800, 150, 40, 10])
  water = np.zeros(len(labels), bool)
  w0 = sampling.tile_weights(hist, water, sampling.SamplingConfig(beta=0.0))
  np.testing.assert_allclose(w0, 1.0)
  s1 = sampling.StratifiedSampler(
      sampling.tile_weights(hist, water, sampling.SamplingConfig(beta=1.0)), 0, hist, labels)
  np.testing.assert_allclose(s1.expected_exposure()[:4], 0.25)
  s_half = sampling.StratifiedSampler(
      sampling.tile_weights(hist, water, sampling.SamplingConfig(beta=0.5)), 0, hist, labels)
  e = s_half.expected_exposure()[:4]
  assert e[0] > e[1] > e[2] > e[3] and e[0] < 0.8 and e[3] > 0.01


def test_ocean_fraction_and_strata():
  hist, labels = _pure_tiles([50, 50])
  water = labels == 1
  w = sampling.tile_weights(hist, water, sampling.SamplingConfig(beta=0.0, ocean_fraction=0.02))
  p = w / w.sum()
  np.testing.assert_allclose(p[water].sum() / p[~water].sum(), 0.02)
  strata = np.array(["a"] * 90 + ["b"] * 10)
  w = sampling.tile_weights(hist, np.zeros(100, bool),
                            sampling.SamplingConfig(beta=0.0, strata_beta=1.0), strata)
  p = w / w.sum()
  np.testing.assert_allclose([p[:90].sum(), p[90:].sum()], [0.5, 0.5])
  with pytest.raises(ValueError, match="all zero"):
    sampling.tile_weights(hist, np.ones(100, bool),
                          sampling.SamplingConfig(beta=0.0, ocean_fraction=0.0))


def test_draws_are_deterministic_resumable_and_follow_the_weights():
  hist, labels = _pure_tiles([300, 100, 30])
  w = sampling.tile_weights(hist, np.zeros(430, bool), sampling.SamplingConfig(beta=1.0))
  s = sampling.StratifiedSampler(w, seed=7, hist=hist, labels=labels)
  all_idx = s.indices(np.arange(60000))
  # any position, any chunking, any new instance: the same tile
  np.testing.assert_array_equal(all_idx[12345:12400], s.indices(np.arange(12345, 12400)))
  assert s(31337) == all_idx[31337]
  s2 = sampling.StratifiedSampler(w, seed=7, hist=hist, labels=labels)
  np.testing.assert_array_equal(s2.indices(np.arange(1000)), all_idx[:1000])
  assert (sampling.StratifiedSampler(w, seed=8).indices(np.arange(1000)) != all_idx[:1000]).any()
  freq = np.bincount(labels[all_idx], minlength=3) / len(all_idx)
  np.testing.assert_allclose(freq, 1 / 3, atol=0.01)
  e = s.exposure(0, 60000, chunk=7000)
  np.testing.assert_array_equal(e["tiles"][:3], np.bincount(labels[all_idx], minlength=3))
  np.testing.assert_allclose(e["pixels"][:3], e["tiles"][:3])


def test_uniform_is_uniform_and_seed_dependent():
  u = sampling.uniform(3, np.arange(200000))
  assert 0 <= u.min() and u.max() < 1
  counts = np.histogram(u, bins=10, range=(0, 1))[0]
  np.testing.assert_allclose(counts / 20000, 1, atol=0.03)
  assert not np.allclose(u[:100], sampling.uniform(4, np.arange(100)))
