"""data.spectral_jitter: per-(sample, view) gains on reflectance, the same for L1C and L2A."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from terrafm_jax.data.contract import DEFAULT_CONTRACT
from terrafm_jax.train import views as views_lib


def _raw(m, x):
  mc = DEFAULT_CONTRACT[m]
  return x * np.asarray(mc.std, np.float32) + np.asarray(mc.mean, np.float32)


def test_gain_applies_to_reflectance_per_view_and_band():
  rng = np.random.default_rng(0)
  shape = (3, 2, 8, 8, 12)
  views = {m: jnp.asarray(rng.normal(size=shape), jnp.float32) for m in ("s2_l1c", "s2_l2a")}
  views["s1"] = jnp.asarray(rng.normal(size=shape[:-1] + (2,)), jnp.float32)
  views["s2_l1c"] = views["s2_l1c"].at[0, 0, 0, 0].set(0.0)        # a nodata pixel
  out = views_lib.spectral_jitter(views, jax.random.key(1), DEFAULT_CONTRACT, 0.1, 0.2)
  np.testing.assert_array_equal(out["s1"], views["s1"])
  assert float(out["s2_l1c"][0, 0, 0, 0, 0]) == 0.0
  gains = {}
  for m in ("s2_l1c", "s2_l2a"):
    ratio = _raw(m, np.asarray(out[m])) / _raw(m, np.asarray(views[m]))
    ratio[0, 0, 0, 0] = ratio[0, 0, 1, 1]                          # skip the nodata pixel
    # one gain per (sample, view, band): constant over the pixels
    np.testing.assert_allclose(ratio, np.broadcast_to(ratio[:, :, :1, :1], ratio.shape),
                               rtol=2e-4)
    gains[m] = ratio[:, :, 0, 0]
  np.testing.assert_allclose(gains["s2_l1c"], gains["s2_l2a"], rtol=2e-4)
  log_g = np.log(gains["s2_l1c"])
  assert 0.05 < log_g.std() < 0.5 and len(np.unique(np.round(log_g, 5))) == log_g.size


def test_off_by_default_and_deterministic():
  from terrafm_jax.errors import ConfigError
  from terrafm_jax.train import config_checks, default_config
  c = default_config.get_base_config("Mu/8")
  assert tuple(c.data.spectral_jitter) == (0.0, 0.0)
  views = {"s2_l2a": jnp.ones((2, 2, 4, 4, 12))}
  a = views_lib.spectral_jitter(views, jax.random.key(3), DEFAULT_CONTRACT, 0.1, 0.1)
  b = views_lib.spectral_jitter(views, jax.random.key(3), DEFAULT_CONTRACT, 0.1, 0.1)
  np.testing.assert_array_equal(a["s2_l2a"], b["s2_l2a"])
  c.data.spectral_jitter = (0.1, -0.1)
  import pytest
  with pytest.raises(ConfigError, match="spectral_jitter"):
    config_checks.validate(c)
