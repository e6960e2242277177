"""EuroSAT MS reader: band order by planted signature (B8A last, B10 dropped), real files, bad input."""
from __future__ import annotations

import os

import numpy as np
import pytest

from terrafm_jax.data.contract import DEFAULT_CONTRACT
from terrafm_jax.eval import bands as bands_lib
from terrafm_jax.eval import tasks
from terrafm_jax.eval.readers import eurosat
from terrafm_jax.eval.dataset import EvalDataError

from tests.eval.conftest import EO_SAMPLES

SUBSET = os.path.join(EO_SAMPLES, "eurosat_ms_subset")


def write_tif(path: str, x: np.ndarray) -> None:
  """(C, H, W) uint16 as a georeferenced GeoTIFF, as EuroSAT stores them."""
  import rasterio
  from rasterio.transform import from_origin
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with rasterio.open(path, "w", driver="GTiff", width=x.shape[2], height=x.shape[1],
                     count=x.shape[0], dtype="uint16", crs="EPSG:32631",
                     transform=from_origin(500000, 5600000, 10, 10)) as f:
    f.write(x.astype(np.uint16))


def planted(value_of_band, h=8):
  """13-band image whose band i (EuroSAT's file order) is the constant value_of_band(name)."""
  return np.stack([np.full((h, h), value_of_band(b)) for b in eurosat.BANDS])


def signature(band: str) -> int:
  """B01: 100, ..., B12: 1200, B8A: 5800 (B10: 1000)."""
  return 5800 if band == "B8A" else 100 * int(band[1:])


def make_folder(root, per_class=(("Forest", 3), ("River", 2)), split_dirs=True, rng_seed=0):
  rng = np.random.default_rng(rng_seed)
  for split in (("train", "test") if split_dirs else ("",)):
    for cls, n in per_class:
      for i in range(1, n + 1):
        x = planted(signature) + rng.integers(0, 5, (13, 8, 8))
        write_tif(os.path.join(str(root), split, cls, f"{cls}_{i}.tif"), x)
  return str(root)


def test_band_order_by_planted_signature(tmp_path):
  root = make_folder(tmp_path)
  split = eurosat.open_split(root, "ms", "all")
  assert len(split) == 10 and split.inputs["s2"].bands[-1] == "B8A"
  plans = bands_lib.plan(tasks.get_task("eurosat/ms").stems, split.inputs, DEFAULT_CONTRACT, root)
  (plan,) = plans
  assert plan.stem == "s2_l1c" and plan.dropped == ("B10",) and plan.filled == ()
  sample = split[0]
  x = bands_lib.apply(plans, sample, DEFAULT_CONTRACT)["s2_l1c"]
  mc = DEFAULT_CONTRACT["s2_l1c"]
  dn = x * np.asarray(mc.std, np.float32) + np.asarray(mc.mean, np.float32)
  got = np.round(dn.mean(axis=(0, 1)) / 100).astype(int)
  # Every contract band carries its own planted signature (noise < 5 DN); B10 (1000) is gone.
  assert got.tolist() == [signature(b) // 100 for b in mc.bands]
  assert mc.bands.index("B8A") == 8 and got[8] == 58 and 10 not in got


def test_splits_labels_and_order(tmp_path):
  root = make_folder(tmp_path)
  tr, va, te = (eurosat.open_split(root, "ms", s) for s in ("train", "val", "test"))
  assert (len(tr), len(va), len(te)) == (4, 1, 5)
  assert [tr[i]["id"] for i in range(4)][:3] == [
      os.path.join("train", "Forest", f"Forest_{i}.tif") for i in (1, 2, 3)]
  assert {te[i]["label"] for i in range(5)} == {eurosat.CLASSES.index("Forest"),
                                                eurosat.CLASSES.index("River")}
  flat = make_folder(tmp_path / "flat", split_dirs=False)
  assert len(eurosat.open_split(flat, "ms", "all")) == 5
  with pytest.raises(EvalDataError, match="only split 'all'"):
    eurosat.open_split(flat, "ms", "train")


def test_natural_order_of_image_numbers(tmp_path):
  for i in (1, 2, 10):
    write_tif(str(tmp_path / "Forest" / f"Forest_{i}.tif"), planted(signature))
  items = eurosat.index(str(tmp_path), "all")
  assert [os.path.basename(p) for p, _ in items] == ["Forest_1.tif", "Forest_2.tif",
                                                     "Forest_10.tif"]


@pytest.mark.parametrize("defect, match", [
    ("bands", "12 bands, expected EuroSAT MS's 13"),
    ("class", "not a EuroSAT class folder"),
    ("name", "expected a file named Forest_<n>.tif"),
    ("garbage", "not a readable GeoTIFF"),
    ("size", "one size per folder"),
])
def test_bad_input_names_the_file(tmp_path, defect, match):
  root = make_folder(tmp_path)
  bad = os.path.join(root, "train", "Forest", "Forest_9.tif")
  if defect == "bands":
    write_tif(bad, planted(signature)[:12])
  elif defect == "class":
    bad = os.path.join(root, "train", "Forests", "Forests_1.tif")
    write_tif(bad, planted(signature))
  elif defect == "name":
    bad = os.path.join(root, "train", "Forest", "forest-9.tif")
    write_tif(bad, planted(signature))
  elif defect == "size":
    write_tif(bad, planted(signature, h=16))
  else:
    with open(bad, "wb") as f:
      f.write(b"not a tiff")
  eurosat.index.cache_clear()
  with pytest.raises(EvalDataError, match=match) as err:
    eurosat.read_all(root, "all")
  assert os.path.dirname(bad) in str(err.value)


def test_real_subset():
  if not os.path.isdir(SUBSET):
    pytest.skip(f"{SUBSET} not found")
  images, labels, paths = eurosat.read_all(SUBSET)
  assert images.shape == (270, 64, 64, 13) and len(paths) == 270
  assert np.bincount(labels).tolist() == [30, 30, 30, 25, 25, 20, 25, 30, 25, 30]
  med = np.median(images, axis=(0, 1, 2))
  # B10 (cirrus, 10th in the file) is dark; B8A (last) is bright NIR, close to B08 (8th) and far
  # above the red B04 on forests: the file order is EuroSAT's, with B8A last.
  assert med[eurosat.BANDS.index("B10")] < 100
  forest = images[labels == eurosat.CLASSES.index("Forest")].mean(axis=(0, 1, 2))
  assert forest[12] > 2 * forest[3] and abs(forest[12] - forest[7]) < 0.3 * forest[7]
  # L1C before baseline 04.00: no +1000 offset (dark SWIR water pixels far below 1000).
  sea = images[labels == eurosat.CLASSES.index("SeaLake")]
  assert np.percentile(sea[..., eurosat.BANDS.index("B12")], 5) < 300


def test_knn_and_linear_protocols_run_on_a_eurosat_folder(tmp_path):
  from terrafm_jax.eval import runner
  from terrafm_jax.eval.config import get_eval_config
  from terrafm_jax.eval.weights import load_weights
  root = make_folder(tmp_path, per_class=(("Forest", 5), ("River", 5)))
  cfg = get_eval_config("tiny")
  cfg.cache_dir = "none"
  w = load_weights("random:Mu/8")
  task = tasks.get_task("eurosat/ms")
  for protocol in ("knn", "linear"):
    row = runner.run(task, protocol, w, root, cfg, progress=False)
    assert row.details["num_samples"] == {"train": 8, "val": 2, "test": 10}
    assert 0.0 <= row.value <= 100.0 and row.metric == "accuracy"
