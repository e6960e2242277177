"""Crop plan: RandomResizedCrop boxes, flips, modality draws (readings a / b, per batch)."""
import numpy as np
import pytest

from terrafm_jax.data import crops


def test_boxes_follow_scale_and_ratio_and_stay_inside():
  rng = np.random.default_rng(0)
  t = 534
  for scale in ((0.25, 1.0), (0.05, 0.25)):
    for _ in range(500):
      y0, x0, h, w = crops.random_resized_box(rng, t, t, scale, (3 / 4, 4 / 3))
      assert 0 <= y0 and 0 <= x0 and y0 + h <= t and x0 + w <= t and h > 0 and w > 0
      a = h * w / t / t
      assert scale[0] * 0.97 <= a <= scale[1] * 1.03 or (h, w) == (t, t)
      assert 3 / 4 * 0.95 <= w / h <= 4 / 3 * 1.05 or (h, w) == (t, t)


def test_fallback_is_centre_crop():
  rng = np.random.default_rng(0)
  assert crops.random_resized_box(rng, 10, 10, (5.0, 6.0), (3 / 4, 4 / 3)) == (0, 0, 10, 10)


def test_plan_shapes_flip_rate_and_masks():
  cfg = crops.CropConfig()
  rng = np.random.default_rng(1)
  flips, singles = [], []
  for i in range(400):
    avail = np.array([i % 3 != 0, True, i % 2 == 0])
    p = crops.plan_crops(rng, avail, 534, cfg)
    assert p["boxes"].shape == (8, 4) and p["boxes"].dtype == np.float32
    assert p["student_masks"].shape == (8, 3) and p["teacher_masks"].shape == (2, 3)
    for m in np.concatenate([p["student_masks"], p["teacher_masks"]]):
      assert m.any() and not (m & ~avail).any()
    # globals are the large views
    assert (p["boxes"][:2, 2] * p["boxes"][:2, 3]).min() >= 0.2 * 534 ** 2
    assert (p["boxes"][2:, 2] * p["boxes"][2:, 3]).max() <= 0.26 * 534 ** 2
    flips.append(p["flip"])
    if avail.sum() >= 2:
      singles.extend(p["student_masks"].sum(1) == 1)
  assert abs(np.mean(flips) - 0.5) < 0.05
  assert abs(np.mean(singles) - 0.5) < 0.05            # reading (a): p = 0.5 single modality


def test_single_modality_tile_always_uses_it():
  rng = np.random.default_rng(2)
  for reading in ("a", "b"):
    p = crops.plan_crops(rng, np.array([False, False, True]), 64,
                         crops.CropConfig(modality_reading=reading))
    assert (p["student_masks"] == [False, False, True]).all()


def test_reading_b_keeps_each_modality_half_the_time():
  rng = np.random.default_rng(3)
  cfg = crops.CropConfig(modality_reading="b")
  m = np.stack([crops.draw_modalities(rng, np.ones(3, bool), cfg) for _ in range(4000)])
  # P(keep | non-empty) = 0.5 / (1 - 0.125) = 4/7
  np.testing.assert_allclose(m.mean(0), 4 / 7, atol=0.03)
  assert m.any(1).all()


def test_reading_a_subsets_are_uniform():
  rng = np.random.default_rng(4)
  cfg = crops.CropConfig(single_p=0.0)
  m = np.stack([crops.draw_modalities(rng, np.ones(3, bool), cfg) for _ in range(4000)])
  assert (m.sum(1) >= 2).all()
  keys, counts = np.unique(m.astype(int) @ [4, 2, 1], return_counts=True)
  assert len(keys) == 4 and np.allclose(counts / 4000, 0.25, atol=0.03)


def test_batch_granularity_shares_draws():
  cfg = crops.CropConfig(granularity="batch")
  plans = [crops.plan_crops(np.random.default_rng(10 + i), np.ones(3, bool), 64, cfg,
                            np.random.default_rng(99)) for i in range(5)]
  for p in plans[1:]:
    np.testing.assert_array_equal(p["student_masks"], plans[0]["student_masks"])
    assert not np.array_equal(p["boxes"], plans[0]["boxes"])
  # a sample lacking the drawn modalities still gets a valid non-empty subset
  p = crops.plan_crops(np.random.default_rng(0), np.array([True, False, False]), 64, cfg,
                       np.random.default_rng(99))
  assert (p["student_masks"] == [True, False, False]).all()


def test_bad_config():
  with pytest.raises(ValueError):
    crops.CropConfig(modality_reading="c")


def test_restricting_modalities_gives_the_single_modality_baseline():
  cfg = crops.CropConfig(modalities=("s2_l2a",))
  rng = np.random.default_rng(3)
  for _ in range(50):
    p = crops.plan_crops(rng, np.array([True, True, True]), 64, cfg)
    for m in np.concatenate([p["student_masks"], p["teacher_masks"]]):
      assert m.tolist() == [False, False, True]
  # A tile without any allowed modality keeps drawing from what it has.
  p = crops.plan_crops(rng, np.array([True, False, False]), 64, cfg)
  assert p["student_masks"][:, 0].all() and not p["student_masks"][:, 1:].any()
  two = crops.CropConfig(modalities=("s1", "s2_l2a"), single_p=0.0)
  p = crops.plan_crops(rng, np.array([True, True, True]), 64, two)
  assert (p["student_masks"] == [True, False, True]).all()
  with pytest.raises(ValueError, match="non-empty subset"):
    crops.CropConfig(modalities=("s3",))
