"""terrafm_jax.load / encode on real scenes: units, band order by name, layout, bad input."""
from __future__ import annotations

import os

import numpy as np
import pytest

import terrafm_jax
from terrafm_jax.api import InputError
from terrafm_jax.data.contract import DEFAULT_CONTRACT


@pytest.fixture(scope="module")
def model():
  return terrafm_jax.load("random:Mu/8")


def _read(eo_samples, modality, scene="38D_378R_2_3"):
  import rasterio
  path = os.path.join(eo_samples, "terramind_majortom", modality, f"{scene}.tif")
  with rasterio.open(path) as f:
    return np.moveaxis(f.read(), 0, -1)


def test_encode_a_real_scene_and_band_order_by_name(model, eo_samples):
  s2 = _read(eo_samples, "S2L2A")[:64, :64]                     # 12 bands, contract order
  out = model.encode(s2, modality="s2_l2a")
  assert out["cls"].shape == (1, 64) and out["patch_tokens"].shape == (1, 8, 8, 64)
  assert len(out["features"]) == len(model.model_config.out_indices)
  # The same pixels with the bands shuffled and named: the same features.
  perm = np.random.default_rng(0).permutation(12)
  names = [DEFAULT_CONTRACT["s2_l2a"].bands[i] for i in perm]
  shuffled = model.encode(s2[..., perm], modality="s2_l2a", bands=names)
  np.testing.assert_allclose(shuffled["cls"], out["cls"], rtol=1e-5, atol=1e-6)
  # Channels-first input (PyTorch layout) and a batch of two.
  nchw = np.stack([s2, s2]).transpose(0, 3, 1, 2)
  both = model.encode(nchw, modality="s2_l2a", layout="NCHW")
  np.testing.assert_allclose(both["cls"], np.concatenate([out["cls"]] * 2), rtol=1e-5, atol=1e-6)


def test_offset_and_units(model, eo_samples):
  # 433D_629L_3_1's L2A file carries the +1000 offset (eo_samples README): auto removes it, so the
  # features equal those of the same pixels with the offset taken off by hand.
  raw = _read(eo_samples, "S2L2A", "433D_629L_3_1")[:32, :32].astype(np.float32)
  auto = model.encode(raw, modality="s2_l2a")["cls"]
  by_hand = model.encode(np.maximum(raw - 1000, 1), modality="s2_l2a", offset=False)["cls"]
  np.testing.assert_allclose(auto, by_hand, rtol=1e-5, atol=1e-6)
  refl = model.encode(np.maximum(raw - 1000, 1) / 1e4, modality="s2_l2a",
                      units="reflectance")["cls"]
  np.testing.assert_allclose(refl, by_hand, rtol=1e-4, atol=1e-5)
  # L1C with its 13 bands (B10 dropped) and S1 in dB, fused.
  l1c = _read(eo_samples, "S2L1C")[:32, :32]
  s1 = _read(eo_samples, "S1RTC")[:32, :32]
  fused = model.encode({"s2_l1c": l1c, "s1": s1}, units={"s1": "db"})
  assert fused["cls"].shape == (1, 64) and np.isfinite(fused["cls"]).all()
  lin = model.encode({"s2_l1c": l1c, "s1": 10 ** (s1 / 10)}, units={"s1": "linear"})
  np.testing.assert_allclose(lin["cls"], fused["cls"], rtol=1e-4, atol=1e-5)


def test_bad_input_is_one_clear_error(model, eo_samples):
  s2 = _read(eo_samples, "S2L2A")[:32, :32]
  with pytest.raises(InputError, match="looks like reflectance"):
    model.encode(s2 / 1e4, modality="s2_l2a")
  with pytest.raises(InputError, match="10 bands"):
    model.encode(s2[..., :10], modality="s2_l2a")
  with pytest.raises(InputError, match="digital numbers need units='dn'"):
    model.encode(s2, modality="s2_l2a", units="reflectance")
  with pytest.raises(InputError, match="multiple of the patch size"):
    model.encode(s2[:30, :30], modality="s2_l2a")
  bad = s2.astype(np.float32)
  bad[3, 3, 3] = np.nan
  with pytest.raises(InputError, match="NaN"):
    model.encode(bad, modality="s2_l2a")
  with pytest.raises(InputError, match="give modality"):
    model.encode(s2)


def test_suite_tables_hold_ours_beside_the_published():
  from terrafm_jax.eval import suite
  from terrafm_jax.eval.results import Row
  rows = [Row("geobench/m-eurosat", "knn", "default", "accuracy", 91.25, 94.2, {}, 0),
          Row("geobench/m-eurosat", "knn", "0.01x_train", "accuracy", 50.0, 59.3, {}, 0),
          Row("copernicus/eurosat_s1", "linear", "default", "accuracy", 80.0, 87.8, {}, 0)]
  text = suite.paper_tables(rows)
  assert "| ours | 91.2 / 50.0 | - / - | - / - | - / - |" in text
  assert "| TerraFM-B (published) | 94.2 / 59.3 | 68.7 / 49.4 | 55.1 / 41.6 | 94.5 / 85.6 |" in text
  assert "| ours | - | 80.0 | - |" in text  # Copernicus: cloud_s2 not run, eurosat_s1 run
