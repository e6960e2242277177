"""Copernicus-Bench GeoTIFF readers on tiny fixtures in the exact shipped layouts (DATA.md 5).

Band orders are written here from the sources (torchgeo 0.8 `datasets/copernicus/*.py`,
Copernicus-FM `Copernicus-Bench/src/datasets/*`), not from the reader's constants, so a wrong
order in the reader fails. Every band carries its own constant (SIG) and must come back under its
canonical name. Images are 6 x 10 instead of 64..512 square, to stay tiny and to catch H/W swaps.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import rasterio
from affine import Affine

from terrafm_jax.data.contract import DEFAULT_CONTRACT
from terrafm_jax.eval import bands as bands_lib
from terrafm_jax.eval.readers.copernicus import open_split
from terrafm_jax.eval.dataset import EvalDataError

H, W = 6, 10
SIG = {b: 1000.0 + 10 * i for i, b in enumerate(
    ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"))}
SIG.update(VV=-11.5, VH=-19.25)
# File orders as the sources document them.
EUROSAT_S2_FILE = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11",
                   "B12", "B8A")
L1C_FILE = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11",
            "B12")
BEN_S2_FILE = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
S1_FILE = ("VV", "VH")
BEN_HEADER = ["s1_path", "s2_path", "Urban fabric", "Industrial or commercial units",
              "Arable land", "Permanent crops", "Pastures", "Complex cultivation patterns",
              "Land principally occupied by agriculture, with significant areas of natural "
              "vegetation", "Agro-forestry areas", "Broad-leaved forest", "Coniferous forest",
              "Mixed forest", "Natural grassland and sparsely vegetated areas",
              "Moors, heathland and sclerophyllous vegetation", "Transitional woodland, shrub",
              "Beaches, dunes, sands", "Inland wetlands", "Coastal wetlands", "Inland waters",
              "Marine waters"]


def write_tif(path, bands=None, dtype="uint16", data=None):
  """A GeoTIFF whose band k is the constant SIG[bands[k]], or `data` (C, H, W) as given."""
  if data is None:
    data = np.stack([np.full((H, W), SIG[b]) for b in bands])
  data = np.asarray(data).astype(dtype)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1],
                     count=data.shape[0], dtype=dtype, crs="EPSG:32633",
                     transform=Affine(10.0, 0.0, 453600.0, 0.0, -10.0, 5165120.0)) as dst:
    dst.write(data)


def write_lines(path, lines):
  with open(path, "w") as f:
    f.write("".join(f"{ln}\n" for ln in lines))


def check_bands(x, group):
  """Every channel holds the constant of the band the reader names it."""
  assert x.dtype == np.float32 and x.shape == (H, W, len(group.bands))
  for c, name in enumerate(group.bands):
    np.testing.assert_array_equal(x[..., c], np.float32(SIG[name]), err_msg=name)


# Layouts ----------------------------------------------------------------------------------------

def make_eurosat(base, mod, files=("Residential_2029", "Forest_7", "SeaLake_123")):
  root = os.path.join(base, f"eurosat_{mod}")
  order, dtype = (EUROSAT_S2_FILE, "uint16") if mod == "s2" else (S1_FILE, "float32")
  for name in files:
    write_tif(os.path.join(root, "all_imgs", name.split("_")[0], name + ".tif"), order, dtype)
  for split in ("train", "val", "test"):  # the split files list .jpg names
    write_lines(os.path.join(root, f"eurosat-{split}.txt"), [f + ".jpg" for f in files])
  return root


BEN_LABELS = np.array([[1, 0, 0, 1] + [0] * 14 + [1], [0] * 18 + [1]])
BEN_S1 = ["S1A_IW_GRDH_1SDV_20180420T063852/S1A_IW_GRDH_1SDV_20180420T063852_29UPU_77_6/"
          "S1A_IW_GRDH_1SDV_20180420T063852_29UPU_77_6_allbands.tif",
          "S1B_IW_GRDH_1SDV_20170613T165043_33UUP_61_39_allbands.tif"]
BEN_S2 = ["S2B_MSIL2A_20180421T114349_N9999_R123_T29UPU/S2B_MSIL2A_20180421T114349_N9999_R123_T29UP"
          "U_77_06/S2B_MSIL2A_20180421T114349_N9999_R123_T29UPU_77_06_allbands.tif",
          "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_61_39_allbands.tif"]


def make_bigearthnet(base, labels=BEN_LABELS):
  root = os.path.join(base, "bigearthnet_s1s2")
  for s1, s2 in zip(BEN_S1, BEN_S2):
    write_tif(os.path.join(root, "BigEarthNet-S1-5%", s1), S1_FILE, "float32")
    write_tif(os.path.join(root, "BigEarthNet-S2-5%", s2), BEN_S2_FILE, "uint16")
  rows = [",".join(f'"{h}"' if "," in h else h for h in BEN_HEADER)]
  rows += [",".join([s1, s2] + [str(v) for v in lab])
           for s1, s2, lab in zip(BEN_S1, BEN_S2, labels)]
  for split in ("train", "val", "test"):
    write_lines(os.path.join(root, f"multilabel-{split}.csv"), rows)
  return root


DFC_RAW = (np.arange(H * W).reshape(H, W) % 11).astype(np.uint16)   # every code 0..10
# Copernicus-Bench cls_mapping: 0->255, 1->0, 2->1, 3->255, 4->2, ..., 7->5, 8->255, 9->6, 10->7.
DFC_MAP = {0: 255, 1: 0, 2: 1, 3: 255, 4: 2, 5: 3, 6: 4, 7: 5, 8: 255, 9: 6, 10: 7}
DFC_NAMES = ("ROIs0000_test_dfc_0_p609.tif", "ROIs1970_fall_dfc_3_p12.tif")


def make_dfc(base, mask=DFC_RAW):
  root = os.path.join(base, "dfc2020_s1s2")
  for name in DFC_NAMES:
    write_tif(os.path.join(root, "s1", name.replace("dfc", "s1")), S1_FILE, "float32")
    write_tif(os.path.join(root, "s2", name.replace("dfc", "s2")), L1C_FILE, "uint16")
    write_tif(os.path.join(root, "dfc", name), dtype="uint16", data=mask[None])
  for split in ("train", "val", "test"):
    write_lines(os.path.join(root, f"dfc-{split}-new.csv"), DFC_NAMES)
  return root


CLOUD_MASK = (np.arange(H * W).reshape(H, W) % 4).astype(np.uint8)
CLOUD_NAMES = ("ROI_00002__20200422T141729_20200422T142243_T19GDN",
               "ROI_10451__20190912T100031_20190912T100655_T33TUM")


def make_cloud(base, mask=CLOUD_MASK):
  root = os.path.join(base, "cloud_s2")
  for name in CLOUD_NAMES:
    write_tif(os.path.join(root, "s2_toa", name + ".tif"), L1C_FILE, "uint16")
    write_tif(os.path.join(root, "cloud", name + ".tif"), dtype="uint8", data=mask[None])
  for split in ("train", "val", "test"):
    write_lines(os.path.join(root, f"{split}.csv"), CLOUD_NAMES)  # names without .tif
  return root


# Readers ----------------------------------------------------------------------------------------

def test_eurosat_s2_b8a_last_lands_under_its_name(tmp_path):
  root = make_eurosat(str(tmp_path), "s2")
  ds = open_split(root, "eurosat_s2", "train")
  assert (ds.task, ds.kind, ds.num_classes, len(ds)) == ("copernicus/eurosat_s2", "classification",
                                                         10, 3)
  g = ds.inputs["s2"]
  assert g.units == "dn" and g.bands[12] == "B8A" and g.bands[8] == "B09"
  s = ds[0]
  check_bands(s["s2"], g)
  assert s["s2"][0, 0, 12] == SIG["B8A"] and s["s2"][0, 0, 8] == SIG["B09"]
  # Sorted EuroSAT classes (the benchmark's class_to_idx).
  assert [ds[i]["label"] for i in range(3)] == [7, 1, 9]
  assert ds[1]["id"] == "Forest_7" and ds.class_names[7] == "Residential"
  # Through the stem mapping: the L1C stem's B8A channel (index 8) gets the B8A constant.
  plans = bands_lib.plan((bands_lib.StemMapping("s2_l1c", "s2", drop=("B10",)),), ds.inputs,
                         DEFAULT_CONTRACT, "t")
  stem = bands_lib.apply(plans, s, DEFAULT_CONTRACT)["s2_l1c"]
  mc = DEFAULT_CONTRACT["s2_l1c"]
  raw = stem * np.asarray(mc.std, np.float32) + np.asarray(mc.mean, np.float32)
  for c, name in enumerate(mc.bands):
    np.testing.assert_allclose(raw[..., c], SIG[name], rtol=1e-5, err_msg=name)


def test_eurosat_s1_and_parent_root(tmp_path):
  make_eurosat(str(tmp_path), "s1")
  make_eurosat(str(tmp_path), "s2")
  ds = open_split(str(tmp_path), "eurosat_s1", "test")   # the parent of eurosat_s1/
  assert ds.inputs["s1"].bands == ("VV", "VH") and ds.inputs["s1"].units == "db"
  assert ds.root == os.path.join(str(tmp_path), "eurosat_s1")
  check_bands(ds[2]["s1"], ds.inputs["s1"])
  assert ds[2]["label"] == 9 and ds[-1]["id"] == "SeaLake_123"


@pytest.mark.parametrize("mod", ["s1", "s2"])
def test_bigearthnet_multilabel(tmp_path, mod):
  make_bigearthnet(str(tmp_path))
  ds = open_split(str(tmp_path), f"bigearthnet_{mod}", "val")
  g = ds.inputs[mod]
  assert ds.kind == "multilabel" and ds.num_classes == 19 and len(ds) == 2
  assert g.units == ("db" if mod == "s1" else "dn")
  if mod == "s2":
    assert g.bands == BEN_S2_FILE and "B10" not in g.bands
  assert ds.class_names[0] == "Urban fabric" and ds.class_names[-1] == "Marine waters"
  for i in range(2):
    s = ds[i]
    check_bands(s[mod], g)
    assert s["label"].dtype == np.uint8
    np.testing.assert_array_equal(s["label"], BEN_LABELS[i])
  src = (BEN_S1 if mod == "s1" else BEN_S2)[0]
  assert ds[0]["id"] == os.path.splitext(os.path.basename(src))[0]


@pytest.mark.parametrize("mod", ["s1", "s2"])
def test_dfc2020_segmentation_remap(tmp_path, mod):
  make_dfc(str(tmp_path))
  ds = open_split(os.path.join(str(tmp_path), "dfc2020_s1s2"), f"dfc2020_{mod}", "train")
  assert ds.kind == "segmentation" and ds.num_classes == 8 and ds.ignore_index == 255
  assert ds.inputs[mod].bands == (L1C_FILE if mod == "s2" else S1_FILE)
  s = ds[1]
  check_bands(s[mod], ds.inputs[mod])
  want = np.vectorize(DFC_MAP.get)(DFC_RAW)
  assert s["label"].dtype == np.int32
  np.testing.assert_array_equal(s["label"], want)
  assert s["id"] == "ROIs1970_fall_dfc_3_p12"


def test_cloud_s2_segmentation(tmp_path):
  make_cloud(str(tmp_path))
  ds = open_split(str(tmp_path), "cloud_s2", "test")
  assert ds.num_classes == 4 and ds.ignore_index is None and ds.inputs["s2"].units == "dn"
  assert ds.inputs["s2"].bands == L1C_FILE
  s = ds[0]
  check_bands(s["s2"], ds.inputs["s2"])
  np.testing.assert_array_equal(s["label"], CLOUD_MASK)
  assert s["id"] == CLOUD_NAMES[0]


@pytest.mark.parametrize("hf", [False, True])
def test_one_root_for_all_tasks(tmp_path, hf):
  """The eval config passes one Copernicus-Bench root: zips unpacked there, or inside the HF repo
  directories (l2_eurosat_s1s2/eurosat_s2/...)."""
  top = str(tmp_path)
  sub = (lambda d: os.path.join(top, d)) if hf else (lambda d: top)
  make_eurosat(sub("l2_eurosat_s1s2"), "s1")
  make_eurosat(sub("l2_eurosat_s1s2"), "s2")
  make_bigearthnet(sub("l2_bigearthnet_s1s2"))
  make_dfc(sub("l2_dfc2020_s1s2"))
  make_cloud(sub("l1_cloud_s2"))
  for task in ("eurosat_s1", "eurosat_s2", "bigearthnet_s1", "bigearthnet_s2", "dfc2020_s1",
               "dfc2020_s2", "cloud_s2"):
    ds = open_split(top, task, "val")
    g, = ds.inputs
    check_bands(ds[0][g], ds.inputs[g])


# Bad input --------------------------------------------------------------------------------------

def test_missing_split_file_and_dataset(tmp_path):
  root = make_eurosat(str(tmp_path), "s2")
  os.remove(os.path.join(root, "eurosat-val.txt"))
  with pytest.raises(EvalDataError, match="eurosat-val.txt"):
    open_split(root, "eurosat_s2", "val")
  with pytest.raises(EvalDataError, match="eurosat_s1"):
    open_split(str(tmp_path), "eurosat_s1", "train")


def test_split_names_missing_image(tmp_path):
  root = make_bigearthnet(str(tmp_path))
  os.remove(os.path.join(root, "BigEarthNet-S2-5%", BEN_S2[1]))
  with pytest.raises(EvalDataError, match="multilabel-train.csv.*allbands.tif"):
    open_split(root, "bigearthnet_s2", "train")
  open_split(root, "bigearthnet_s1", "train")   # the S1 side is complete
  root = make_dfc(str(tmp_path))
  os.remove(os.path.join(root, "dfc", DFC_NAMES[0]))
  with pytest.raises(EvalDataError, match="dfc_0_p609"):
    open_split(root, "dfc2020_s2", "test")


def test_empty_split(tmp_path):
  root = make_cloud(str(tmp_path))
  write_lines(os.path.join(root, "val.csv"), [])
  with pytest.raises(EvalDataError, match="val.csv: empty split"):
    open_split(root, "cloud_s2", "val")


def test_labels_out_of_range(tmp_path):
  bad = BEN_LABELS.copy()
  bad[1, 3] = 2
  root = make_bigearthnet(str(tmp_path / "ben"), bad)
  with pytest.raises(EvalDataError, match="multilabel-train.csv line 3"):
    open_split(root, "bigearthnet_s1", "train")
  for value, msg in (("0.5", "line 2: multi-label vector holds values other than 0/1"),
                     ("yes", "line 2: non-numeric label")):
    bad = BEN_LABELS.astype(object)
    bad[0, 0] = value
    root = make_bigearthnet(str(tmp_path / f"ben_{value}"), bad)
    with pytest.raises(EvalDataError, match=msg):
      open_split(root, "bigearthnet_s2", "test")
  root = make_eurosat(str(tmp_path / "es"), "s2", files=("Residential_1", "Glacier_2"))
  with pytest.raises(EvalDataError, match="eurosat-train.txt.*Glacier"):
    open_split(root, "eurosat_s2", "train")
  mask = CLOUD_MASK.copy()
  mask[2, 3] = 4
  ds = open_split(make_cloud(str(tmp_path / "cl"), mask), "cloud_s2", "train")
  with pytest.raises(EvalDataError, match=r"cloud/ROI_00002.*\.tif.*out of range"):
    ds[0]
  mask = DFC_RAW.copy()
  mask[0, 0] = 12
  ds = open_split(make_dfc(str(tmp_path / "dfc"), mask), "dfc2020_s1", "train")
  with pytest.raises(EvalDataError, match=r"dfc/ROIs0000_test_dfc_0_p609.tif.*\[12\]"):
    ds[0]


def test_wrong_band_count(tmp_path):
  root = make_eurosat(str(tmp_path), "s2")
  # The first image is probed at open time; a later one fails when read.
  path = os.path.join(root, "all_imgs", "SeaLake", "SeaLake_123.tif")
  write_tif(path, L1C_FILE[:12])
  ds = open_split(root, "eurosat_s2", "train")
  with pytest.raises(EvalDataError, match="SeaLake_123.tif: 12 bands.*expects 13"):
    ds[2]
  write_tif(os.path.join(root, "all_imgs", "Residential", "Residential_2029.tif"), S1_FILE,
            "float32")
  with pytest.raises(EvalDataError, match="Residential_2029.tif: 2 bands"):
    open_split(root, "eurosat_s2", "train")


def test_corrupt_tiff_and_mask_shape(tmp_path):
  root = make_cloud(str(tmp_path))
  ds = open_split(root, "cloud_s2", "train")
  with open(os.path.join(root, "s2_toa", CLOUD_NAMES[1] + ".tif"), "r+b") as f:
    f.truncate(200)
  with pytest.raises(EvalDataError, match=f"s2_toa/{CLOUD_NAMES[1]}.tif: cannot read"):
    ds[1]
  write_tif(os.path.join(root, "cloud", CLOUD_NAMES[0] + ".tif"), dtype="uint8",
            data=np.zeros((1, W, H)))
  with pytest.raises(EvalDataError, match=f"cloud/{CLOUD_NAMES[0]}.tif: label is"):
    ds[0]
  with open(os.path.join(root, "s2_toa", CLOUD_NAMES[0] + ".tif"), "wb") as f:
    f.write(b"not a tiff at all")
  with pytest.raises(EvalDataError, match="cannot read GeoTIFF"):
    open_split(root, "cloud_s2", "train")


def test_partition_split_and_task_names(tmp_path):
  root = make_cloud(str(tmp_path))
  with pytest.raises(EvalDataError, match=r"no partition '0.01x_train'.*\('default',\)"):
    open_split(root, "cloud_s2", "train", partition="0.01x_train")
  with pytest.raises(EvalDataError, match="unknown split"):
    open_split(root, "cloud_s2", "validation")
  with pytest.raises(EvalDataError, match="unknown Copernicus-Bench task"):
    open_split(root, "flood_s1", "train")


# The task table against what the readers find ---------------------------------------------------

def test_every_copernicus_task_table_plans_against_its_reader(tmp_path):
  """Each task's band table (eval/tasks.py) matches the bands its reader reports, and the
  signature of every contract band arrives in its stem slot (B8A-last EuroSAT-S2 included)."""
  from terrafm_jax.data.contract import DEFAULT_CONTRACT
  from terrafm_jax.eval import bands as bands_lib
  from terrafm_jax.eval.tasks import get_task
  make_eurosat(str(tmp_path), "s1")
  make_eurosat(str(tmp_path), "s2")
  make_bigearthnet(str(tmp_path))
  make_dfc(str(tmp_path))
  make_cloud(str(tmp_path))
  for name in ("eurosat_s1", "eurosat_s2", "bigearthnet_s1", "bigearthnet_s2", "dfc2020_s1",
               "dfc2020_s2", "cloud_s2"):
    task = get_task(f"copernicus/{name}")
    split = task.open(str(tmp_path), "train")
    plans = bands_lib.plan(task.stems, split.inputs, DEFAULT_CONTRACT, split.root)
    out = bands_lib.apply(plans, split[0], DEFAULT_CONTRACT)
    for p in plans:
      mc = DEFAULT_CONTRACT[p.stem]
      for j, band in enumerate(mc.bands):
        want = (np.float32(SIG[band]) - mc.mean[j]) / mc.std[j]
        np.testing.assert_allclose(out[p.stem][..., j], want, rtol=1e-5, err_msg=f"{name} {band}")
