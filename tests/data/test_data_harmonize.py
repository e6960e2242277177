"""Harmonisation: S2 offset (baseline / detected), 20/60 m -> 10 m alignment, S1 dB."""
import numpy as np
import pytest

from terrafm_jax.data import harmonize


@pytest.mark.parametrize("pid,want", [
    ("S2B_MSIL2A_20220719T095559_N0400_R122_T33TVF_20220719T125505", 400),
    ("S2A_MSIL1C_20170613T101031_N0205_R022_T33UUP_20170613T101608", 205),
    ("S2A_MSIL2A_20200101T000000_N9999_R001_T01ABC_20200101T000000", 9999),
    ("", None), (None, None), ("no baseline here", None)])
def test_parse_baseline(pid, want):
  assert harmonize.parse_baseline(pid) == want


def test_remove_offset_edges():
  dn = np.array([0, 1, 999, 1000, 1001, 1002, 11000, 65535], np.uint16)
  out = harmonize.remove_offset(dn)
  # 0 stays nodata; values at or below 1000 clamp to 1 (never become nodata).
  np.testing.assert_array_equal(out, [0, 1, 1, 1, 1, 2, 10000, 64535])
  assert out.dtype == np.uint16


def test_offset_decision_by_baseline_and_detection():
  dark = [np.full((8, 8), 50, np.uint16), np.full((8, 8), 3000, np.uint16)]
  bright = [b + 1000 for b in dark]
  pid = "S2A_MSIL2A_20220101T000000_N{}_R001_T01ABC_20220101T000000"
  assert harmonize.offset_decision(pid.format("0400"), dark) == (True, "baseline")
  assert harmonize.offset_decision(pid.format("0399"), bright) == (False, "baseline")
  assert harmonize.offset_decision(pid.format("9999"), bright) == (True, "detected")
  assert harmonize.offset_decision(pid.format("9999"), dark) == (False, "detected")
  assert harmonize.offset_decision(None, bright) == (True, "detected")


def test_detection_uses_minimum_over_bands_not_b02():
  # Snow without offset: B02 far above 1000, SWIR ~150 (DATA.md 2.6).
  b02 = np.full((10, 10), 7000, np.uint16)
  b11 = np.full((10, 10), 150, np.uint16)
  assert not harmonize.detect_offset([b02, b11])
  assert harmonize.detect_offset([b02 + 1000, b11 + 1000])
  # nodata zeros are ignored
  b11z = b11.copy() + 1000
  b11z[:5] = 0
  assert harmonize.detect_offset([b02 + 1000, b11z])


@pytest.mark.parametrize("factor", [2, 6])
def test_resample_ramp_is_pixel_centre_aligned(factor):
  n_fine = 24
  n = n_fine // factor
  # Coarse pixel k has its centre at fine coordinate (k + 0.5) * factor; a ramp in world
  # coordinates must come out as the same ramp at the fine pixel centres.
  xc = (np.arange(n) + 0.5) * factor
  coarse = np.tile(100 + 7 * xc, (n, 1)) + 3 * (np.arange(n)[:, None] + 0.5) * factor
  src = harmonize.Raster(coarse, (10.0 * factor, 0, 500000.0, 0, -10.0 * factor, 4e6), "EPSG:32633")
  out = harmonize.resample_to_grid(src, (n_fine, n_fine), (10.0, 0, 500000.0, 0, -10.0, 4e6))
  xf = np.arange(n_fine) + 0.5
  want = 100 + 7 * xf[None, :] + 3 * xf[:, None]
  inner = slice(factor, n_fine - factor)   # edges clamp (no extrapolation)
  np.testing.assert_allclose(out[inner, inner], want[inner, inner], atol=1e-3)


def test_resample_keeps_block_values_and_skips_nodata():
  coarse = np.array([[100, 0], [300, 400]], np.uint16)
  src = harmonize.Raster(coarse, (20.0, 0, 0.0, 0, -20.0, 40.0), "EPSG:32633", nodata=0)
  out = harmonize.resample_to_grid(src, (4, 4), (10.0, 0, 0.0, 0, -10.0, 40.0))
  assert out[0, 0] == 100 and out[3, 3] == 400
  assert (out[:2, 2:] == 0).all()             # nearest source pixel is nodata -> nodata
  assert out[1, 1] > 0 and out[1, 1] != 0     # the 0 neighbour is not averaged in
  assert abs(out[1, 1] - (0.75 * 0.75 * 100 + 0.25 * 0.75 * 300 + 0.25 * 0.25 * 400)
             / (0.75 * 0.75 + 0.25 * 0.75 + 0.25 * 0.25)) < 1e-3


def test_s1_db_and_nodata():
  x = np.array([1.0, 0.1, 0.01, -0.5, 0.0, -32768.0, np.nan], np.float32)
  db = harmonize.s1_linear_to_db(x)
  np.testing.assert_allclose(db[:5], [0.0, -10.0, -20.0, -100.0, -100.0], atol=1e-4)
  assert np.isnan(db[5]) and np.isnan(db[6])


def test_to_dn_uint16_never_rounds_valid_to_nodata():
  x = np.array([0.0, 0.2, 0.6, 1.4, 70000.0, np.nan], np.float32)
  np.testing.assert_array_equal(harmonize.to_dn_uint16(x), [0, 1, 1, 1, 65535, 0])
