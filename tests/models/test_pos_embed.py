"""The position-embedding resize against PyTorch's bicubic interpolate (DINO's +0.1 rule)."""
import jax.numpy as jnp
import numpy as np
import pytest

from terrafm_jax.models.pos_embed import resize_pos_embed

torch = pytest.importorskip("torch")


def torch_resize(pos, gh, gw):
  src = int(np.sqrt(pos.shape[1] - 1))
  t = torch.from_numpy(pos)
  grid = t[:, 1:].reshape(1, src, src, -1).permute(0, 3, 1, 2)
  grid = torch.nn.functional.interpolate(grid, scale_factor=((gh + 0.1) / src, (gw + 0.1) / src),
                                         mode="bicubic")
  assert grid.shape[-2:] == (gh, gw)
  grid = grid.permute(0, 2, 3, 1).reshape(1, gh * gw, -1)
  return torch.cat([t[:, :1], grid], dim=1).numpy()


@pytest.mark.parametrize("src,gh,gw", [(14, 6, 6), (14, 4, 4), (14, 13, 13), (14, 20, 20),
                                       (14, 6, 10), (4, 2, 2), (14, 1, 1)])
def test_matches_torch_bicubic(src, gh, gw):
  pos = np.random.default_rng(src * 100 + gh).standard_normal((1, 1 + src * src, 24)).astype(
      np.float32)
  ours = np.asarray(resize_pos_embed(jnp.asarray(pos), (gh, gw)))
  # PyTorch's own float32 result differs from its float64 one by up to ~3e-6 when upsampling.
  np.testing.assert_allclose(ours, torch_resize(pos, gh, gw), atol=5e-6, rtol=0)


def test_same_grid_is_identity():
  pos = np.random.default_rng(0).standard_normal((1, 197, 8)).astype(np.float32)
  np.testing.assert_array_equal(np.asarray(resize_pos_embed(jnp.asarray(pos), (14, 14))), pos)


def test_non_square_source_is_rejected():
  with pytest.raises(ValueError, match="not a square grid"):
    resize_pos_embed(jnp.zeros((1, 1 + 12, 4)), (3, 3))
