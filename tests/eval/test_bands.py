"""Band tables: every source band lands in its stem slot, by name, whatever the source order."""
from __future__ import annotations

import numpy as np
import pytest

from terrafm_jax.data.contract import DEFAULT_CONTRACT
from terrafm_jax.eval import bands
from terrafm_jax.eval.bands import StemMapping
from terrafm_jax.eval.dataset import EvalDataError, SourceGroup
from terrafm_jax.eval.tasks import TASKS

# Source orders of real benchmarks (DATA.md 1.1).
EUROSAT_S2_TIF = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11",
                  "B12", "B8A")
LCZ_10 = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")


def _signature(names):
  """A distinct DN per band: 100 * (1 + position in the contract order) + 7 (B10: 9999)."""
  order = DEFAULT_CONTRACT["s2_l1c"].bands
  return np.array([9999.0 if b == "B10" else 100.0 * (1 + order.index(b)) + 7 for b in names],
                  np.float32)


@pytest.mark.parametrize("source,table", [
    (EUROSAT_S2_TIF, (StemMapping("s2_l1c", "s2", drop=("B10",)),)),
    (LCZ_10, (StemMapping("s2_l1c", "s2", fill=("B01", "B09")),)),
    (tuple(reversed(DEFAULT_CONTRACT["s2_l2a"].bands)), (StemMapping("s2_l2a", "s2"),)),
])
def test_every_band_lands_in_its_stem_slot(source, table):
  inputs = {"s2": SourceGroup(source, "dn")}
  plans = bands.plan(table, inputs, DEFAULT_CONTRACT, "fixture")
  x = np.broadcast_to(_signature(source), (4, 5, len(source))).copy()
  out = bands.apply(plans, {"s2": x}, DEFAULT_CONTRACT)
  stem = table[0].stem
  mc = DEFAULT_CONTRACT[stem]
  assert out[stem].shape == (4, 5, 12)
  for j, band in enumerate(mc.bands):
    if band in table[0].fill:
      np.testing.assert_array_equal(out[stem][..., j], 0.0)  # zero after normalisation = mean
    else:
      want = (100.0 * (1 + j) + 7 - mc.mean[j]) / mc.std[j]
      np.testing.assert_allclose(out[stem][..., j], want, rtol=1e-6)


def test_units_reflectance_and_linear_are_converted():
  inputs = {"s2": SourceGroup(LCZ_10, "reflectance"), "s1": SourceGroup(("VH", "VV"), "linear")}
  table = (StemMapping("s2_l1c", "s2", fill=("B01", "B09")), StemMapping("s1", "s1"))
  plans = bands.plan(table, inputs, DEFAULT_CONTRACT, "fixture")
  s2 = np.full((2, 2, 10), 0.1, np.float32)
  s1 = np.stack([np.full((2, 2), 0.01), np.full((2, 2), 0.1)], -1).astype(np.float32)  # VH, VV
  out = bands.apply(plans, {"s2": s2, "s1": s1}, DEFAULT_CONTRACT)
  mc = DEFAULT_CONTRACT["s2_l1c"]
  np.testing.assert_allclose(out["s2_l1c"][0, 0, 1], (1000.0 - mc.mean[1]) / mc.std[1], rtol=1e-5)
  s1c = DEFAULT_CONTRACT["s1"]
  np.testing.assert_allclose(out["s1"][0, 0], [(-10.0 - s1c.mean[0]) / s1c.std[0],
                                               (-20.0 - s1c.mean[1]) / s1c.std[1]], rtol=1e-5)


@pytest.mark.parametrize("source,table,match", [
    # A 12-band L2A file declared as 13-band L1C: B10 is not there to drop.
    (DEFAULT_CONTRACT["s2_l2a"].bands, (StemMapping("s2_l1c", "s2", drop=("B10",)),), "drops"),
    # A 13-band file fed without dropping B10.
    (EUROSAT_S2_TIF, (StemMapping("s2_l1c", "s2"),), "B10"),
    # The table zero-fills bands the data has.
    (EUROSAT_S2_TIF, (StemMapping("s2_l1c", "s2", fill=("B01",), drop=("B10",)),), "zero-fills"),
    # Unknown group.
    (LCZ_10, (StemMapping("s1", "s1"),), "source group"),
])
def test_tables_that_disagree_with_the_data_are_refused(source, table, match):
  with pytest.raises(EvalDataError, match=match):
    bands.plan(table, {"s2": SourceGroup(source, "dn")}, DEFAULT_CONTRACT, "fixture.h5")


def test_wrong_units_wrong_channels_and_nan_are_refused():
  with pytest.raises(EvalDataError, match="cannot feed the s1 stem"):
    bands.plan((StemMapping("s1", "s2"),), {"s2": SourceGroup(("VV", "VH"), "dn")},
               DEFAULT_CONTRACT, "f")
  plans = bands.plan((StemMapping("s2_l2a", "s2"),),
                     {"s2": SourceGroup(DEFAULT_CONTRACT["s2_l2a"].bands, "dn")},
                     DEFAULT_CONTRACT, "f")
  with pytest.raises(EvalDataError, match="expected"):
    bands.apply(plans, {"s2": np.zeros((3, 3, 10), np.float32)}, DEFAULT_CONTRACT, "s.h5")
  bad = np.ones((3, 3, 12), np.float32)
  bad[1, 1, 4] = np.nan
  with pytest.raises(EvalDataError, match="NaN"):
    bands.apply(plans, {"s2": bad}, DEFAULT_CONTRACT, "s.h5")


def test_s2_nodata_zeros_normalise_as_the_training_step_does():
  # DN 0 (S2 nodata) -> 0 after normalisation, exactly as the step's normalize_tiles; S1 keeps
  # its plain normalisation (0 dB is a value, not nodata).
  import jax.numpy as jnp
  from terrafm_jax.train.device_crops import normalize_tiles
  rng = np.random.default_rng(0)
  order = DEFAULT_CONTRACT["s2_l2a"].bands
  x = rng.integers(1, 5000, (6, 6, 12)).astype(np.float32)
  x[:2, :3] = 0.0
  x[4, 4, 5] = 0.0
  s1 = rng.normal(-12, 3, (6, 6, 2)).astype(np.float32)
  s1[0, 0] = 0.0
  plans = bands.plan((StemMapping("s2_l2a", "s2"), StemMapping("s1", "s1")),
                     {"s2": SourceGroup(order, "dn"), "s1": SourceGroup(("VV", "VH"), "db")},
                     DEFAULT_CONTRACT, "test")
  out = bands.apply(plans, {"s2": x, "s1": s1}, DEFAULT_CONTRACT)
  ref = normalize_tiles({"s2_l2a": jnp.asarray(x)[None], "s1": jnp.asarray(s1)[None]},
                        DEFAULT_CONTRACT, ("s2_l2a", "s1"))
  assert (out["s2_l2a"][x == 0] == 0).all() and (out["s2_l2a"][x != 0] != 0).all()
  np.testing.assert_allclose(out["s2_l2a"], np.asarray(ref["s2_l2a"][0]), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(out["s1"], np.asarray(ref["s1"][0]), rtol=1e-6, atol=1e-6)
  assert out["s1"][0, 0, 0] != 0


def test_every_task_table_is_well_formed():
  for task in TASKS.values():
    assert task.stems, task.name
    for m in task.stems:
      assert m.stem in ("s1", "s2_l1c", "s2_l2a"), task.name
      assert set(m.fill) <= set(DEFAULT_CONTRACT[m.stem].bands), task.name
    assert task.metric in ("accuracy", "micro_f1", "map", "miou"), task.name
