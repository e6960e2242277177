"""Device crops: exact pixels for integer boxes at scale 1, flips, pixel-centre alignment."""
import jax
import numpy as np

from terrafm_jax.data import contract as contract_lib
from terrafm_jax.train import device_crops

crop = jax.jit(device_crops.crop_views, static_argnums=(3,))


def test_integer_box_at_scale_one_is_exact_and_flip_flips():
  rng = np.random.default_rng(0)
  tiles = {"s1": rng.normal(size=(2, 20, 20, 2)).astype(np.float32),
           "s2_l2a": rng.normal(size=(2, 20, 20, 12)).astype(np.float32)}
  boxes = np.array([[[2, 3, 8, 8], [12, 0, 8, 8], [0, 0, 8, 8]],
                    [[5, 1, 8, 8], [4, 4, 8, 8], [11, 12, 8, 8]]], np.float32)
  flip = np.array([[False, True, False], [True, False, True]])
  out = crop(tiles, boxes, flip, 8)
  assert out["s1"].shape == (2, 3, 8, 8, 2) and out["s2_l2a"].shape == (2, 3, 8, 8, 12)
  for b in range(2):
    for v in range(3):
      y0, x0 = boxes[b, v, :2].astype(int)
      for m in tiles:
        want = tiles[m][b, y0:y0 + 8, x0:x0 + 8]
        if flip[b, v]:
          want = want[:, ::-1]
        np.testing.assert_allclose(out[m][b, v], want, atol=1e-5)
  sliced = device_crops.crop_views(tiles, boxes, flip, 8, view_slice=slice(1, 2))
  np.testing.assert_allclose(sliced["s1"][:, 0], out["s1"][:, 1], atol=1e-6)


def test_resize_samples_pixel_centres():
  t = 32
  yy, xx = np.mgrid[:t, :t].astype(np.float32)
  ramp = (2 * yy + 3 * xx)[None, ..., None]
  box = np.array([[[4.5, 2.25, 12, 10]]], np.float32)
  out = np.asarray(crop({"r": ramp}, box, np.zeros((1, 1), bool), 24)["r"][0, 0, ..., 0])
  i = np.arange(24)
  ry = 4.5 + (i + 0.5) * 12 / 24 - 0.5
  rx = 2.25 + (i + 0.5) * 10 / 24 - 0.5
  np.testing.assert_allclose(out[2:-2, 2:-2], (2 * ry[:, None] + 3 * rx[None, :])[2:-2, 2:-2],
                             atol=1e-3)
  # shrinking a constant stays constant (antialiasing normalises)
  const = np.full((1, t, t, 1), 5.0, np.float32)
  small = crop({"c": const}, np.array([[[0, 0, 32, 32]]], np.float32), np.zeros((1, 1), bool), 8)
  np.testing.assert_allclose(small["c"], 5.0, atol=1e-4)


def test_normalize_tiles_nodata_and_stats():
  c = contract_lib.DEFAULT_CONTRACT
  b = {"s1": np.array(c["s1"].mean, np.float16).reshape(1, 1, 1, 2) * np.ones((1, 2, 2, 2),
                                                                              np.float16),
       "s2_l1c": np.zeros((1, 2, 2, 12), np.uint16),
       "s2_l2a": np.full((1, 2, 2, 12), 2000, np.uint16)}
  b["s2_l2a"][0, 0, 0] = 0
  out = jax.jit(device_crops.normalize_tiles, static_argnums=1)(b, c)
  assert all(v.dtype == np.float32 for v in out.values())
  np.testing.assert_allclose(out["s1"], 0, atol=1e-3)          # mean-filled nodata -> 0
  np.testing.assert_array_equal(out["s2_l1c"], 0)              # DN 0 = nodata -> 0
  np.testing.assert_array_equal(out["s2_l2a"][0, 0, 0], 0)
  want = (2000 - np.array(c["s2_l2a"].mean)) / np.array(c["s2_l2a"].std)
  np.testing.assert_allclose(out["s2_l2a"][0, 1, 1], want, rtol=1e-5)
