"""The crop resampling kernel (terrafm_jax/ops/resample.cc) inside train/device_crops.crop_views,
against jax.image.scale_and_translate (the XLA form it replaces on CPU): the same values to float
rounding for fractional boxes, shrinking (antialiased) and enlarging, flips and tile borders; tile
pixels exactly for an integer box of the output size; each (sample, view) computed alone; a NaN
outside every box never reaches a crop."""
from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

from terrafm_jax.train import device_crops  # noqa: E402
from terrafm_jax.ops import resample_kernel  # noqa: E402


def _xla_crops(stacked, boxes, flip, out_size):
  per_view = jax.vmap(device_crops._crop_one, in_axes=(None, 0, 0, None))
  return jax.vmap(per_view, in_axes=(0, 0, 0, None))(stacked, boxes, flip, out_size)


def _boxes(rng, batch, views, tile, lo, hi):
  out = np.zeros((batch, views, 4), np.float32)
  for b in range(batch):
    for v in range(views):
      h, w = rng.uniform(lo, hi) * tile, rng.uniform(lo, hi) * tile
      out[b, v] = [rng.uniform(0, tile - h), rng.uniform(0, tile - w), h, w]
  return out


def _crop(tiles, boxes, flip, size):
  return jax.jit(device_crops.crop_views, static_argnums=(3,))(tiles, boxes, flip, size)


@pytest.mark.parametrize("tile,out_size,lo,hi", [(64, 48, 0.3, 1.0), (64, 24, 0.1, 0.5),
                                                 (37, 56, 0.2, 0.9)])
def test_crops_match_jax_image(tile, out_size, lo, hi):
  rng = np.random.default_rng(tile + out_size)
  tiles = {"s1": rng.standard_normal((3, tile, tile, 2), np.float32),
           "s2_l2a": rng.standard_normal((3, tile, tile, 5), np.float32)}
  boxes = _boxes(rng, 3, 4, tile, lo, hi)
  boxes[0, 0] = [0, tile - 0.5 * tile, 0.5 * tile, 0.5 * tile]  # touches two borders
  flip = rng.random((3, 4)) < 0.5
  got = _crop(tiles, boxes, flip, out_size)
  # Jitted, as the train step ran it: op by op, XLA forms the weights a few 1e-5 differently.
  want = jax.jit(_xla_crops, static_argnums=3)(
      np.concatenate([tiles["s1"], tiles["s2_l2a"]], -1), boxes, flip, out_size)
  np.testing.assert_allclose(np.concatenate([got["s1"], got["s2_l2a"]], -1), want,
                             rtol=1e-5, atol=1e-5)


def test_integer_box_of_the_output_size_is_the_tile_pixels():
  rng = np.random.default_rng(1)
  tiles = {"s2_l1c": rng.standard_normal((2, 40, 40, 3), np.float32)}
  boxes = np.array([[[5, 7, 24, 24]], [[16, 0, 24, 24]]], np.float32)
  flip = np.array([[False], [True]])
  got = np.asarray(_crop(tiles, boxes, flip, 24)["s2_l1c"])
  np.testing.assert_array_equal(got[0, 0], tiles["s2_l1c"][0, 5:29, 7:31])
  np.testing.assert_array_equal(got[1, 0], tiles["s2_l1c"][1, 16:40, 0:24][:, ::-1])


def test_each_view_is_computed_alone_and_nan_stays_outside_the_box():
  rng = np.random.default_rng(2)
  tile = rng.standard_normal((3, 50, 50, 4), np.float32)
  boxes = _boxes(rng, 3, 2, 50, 0.2, 0.4)
  boxes[:, :, :2] = np.minimum(boxes[:, :, :2], 25.0)  # every box inside [0, 45)
  flip = rng.random((3, 2)) < 0.5
  # The kernel alone, on the same weights: a sample's views give the same bits in a smaller batch.
  # (XLA's elementwise weight formula itself may round differently at another batch size.)
  rows = jax.vmap(jax.vmap(lambda b: device_crops._weights(50, 16, b[0], b[2])))(boxes)
  cols = jax.vmap(jax.vmap(lambda b: device_crops._weights(50, 16, b[1], b[3])))(boxes)
  # The FFI target is registered on first use; this test calls it directly, so register it here
  # (it must not depend on an earlier test of the same worker having cropped).
  assert resample_kernel.kernel_available()
  resample = jax.jit(resample_kernel.resample)
  np.testing.assert_array_equal(resample(tile, rows, cols)[1:],
                                resample(tile[1:], rows[1:], cols[1:]))
  full = np.asarray(_crop({"s1": tile}, boxes, flip, 16)["s1"])
  poisoned = tile.copy()
  poisoned[:, 49, 49, :] = np.nan  # outside every box: the dense form would spread it
  np.testing.assert_array_equal(np.asarray(_crop({"s1": poisoned}, boxes, flip, 16)["s1"]), full)
  poisoned[0, int(boxes[0, 0, 0]) + 2, int(boxes[0, 0, 1]) + 2, 1] = np.nan  # inside a box
  hit = np.asarray(_crop({"s1": poisoned}, boxes, flip, 16)["s1"])
  assert np.isnan(hit[0, 0, ..., 1]).any() and np.isfinite(hit[1:]).all()


def test_kernel_runs_on_cpu_unless_turned_off():
  tiles = {"s1": jnp.zeros((2, 32, 32, 2))}
  boxes, flip = jnp.zeros((2, 3, 4)) + jnp.array([0, 0, 16, 16.0]), jnp.zeros((2, 3), bool)
  def hlo(use_kernel):
    fn = lambda t, b, f: device_crops.crop_views(t, b, f, 8, use_kernel=use_kernel)  # noqa: E731
    return jax.jit(fn).lower(tiles, boxes, flip).compile().as_text()
  assert resample_kernel.kernel_available()
  assert f'custom_call_target="{resample_kernel.TARGET}"' in hlo(True)
  assert "custom-call(" not in hlo(False)  # data.crop_kernel=False: jax.image's dense form
