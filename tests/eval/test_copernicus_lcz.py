"""Copernicus-Bench LCZ-S2 reader on tiny lcz_{split}.h5 files in the shipped layout.

Layout from torchgeo 0.8 `datasets/copernicus/lcz_s2.py` and its test data generator: `sen2`
[N, 32, 32, 10] channels-last (B02..B08, B8A, B11, B12), `sen1` [N, 32, 32, 8], `label` [N, 17]
one-hot uint8; So2Sat stores reflectance (0..1), float64 in the original release.
"""
from __future__ import annotations

import os

import h5py
import numpy as np
import pytest

from terrafm_jax.eval.readers.copernicus import open_split
from terrafm_jax.eval.dataset import EvalDataError

LCZ_FILE = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
SIG = {b: 0.01 * (i + 1) for i, b in enumerate(LCZ_FILE)}   # reflectance per band
CLASSES = np.array([0, 16, 9])


def write_lcz(folder, split="train", classes=CLASSES, sen2=None, label=None, dtype="<f8"):
  os.makedirs(folder, exist_ok=True)
  n = len(classes)
  if sen2 is None:
    sen2 = np.broadcast_to(np.array([SIG[b] for b in LCZ_FILE]), (n, 32, 32, 10))
  if label is None:
    label = np.eye(17, dtype="|u1")[classes]
  with h5py.File(os.path.join(folder, f"lcz_{split}.h5"), "w") as f:
    f.create_dataset("label", data=label, compression="gzip")
    f.create_dataset("sen1", data=np.zeros((n, 32, 32, 8), "<f8"), compression="gzip")
    f.create_dataset("sen2", data=np.asarray(sen2, dtype), compression="gzip")
  return folder


def test_lcz_bands_units_and_labels(tmp_path):
  root = write_lcz(str(tmp_path / "l3_lcz_s2"))
  write_lcz(root, "test", classes=np.array([3]), dtype="<f4")
  ds = open_split(str(tmp_path), "lcz_s2", "train")   # the parent, HF folder name
  assert (ds.task, ds.kind, ds.num_classes, len(ds)) == ("copernicus/lcz_s2", "classification",
                                                         17, 3)
  g = ds.inputs["s2"]
  assert g.bands == LCZ_FILE and g.units == "reflectance"
  assert ds.class_names[16] == "Water"
  for i, c in enumerate(CLASSES):
    s = ds[i]
    assert s["s2"].dtype == np.float32 and s["s2"].shape == (32, 32, 10)
    for k, name in enumerate(g.bands):
      np.testing.assert_allclose(s["s2"][..., k], SIG[name], rtol=1e-6, err_msg=name)
    assert s["label"] == c and s["id"] == f"lcz_train_{i}"
  assert open_split(root, "lcz_s2", "test")[0]["label"] == 3


def test_lcz_bad_inputs(tmp_path):
  root = str(tmp_path / "lcz")
  with pytest.raises(EvalDataError, match="lcz_"):
    open_split(root, "lcz_s2", "train")                  # nothing there
  write_lcz(root, "train")
  with pytest.raises(EvalDataError, match="lcz_val.h5: missing split file"):
    open_split(root, "lcz_s2", "val")
  label = np.eye(17, dtype="|u1")[CLASSES]
  label[1, 2] = 1                                       # two classes in one row
  write_lcz(root, "val", label=label)
  with pytest.raises(EvalDataError, match="lcz_val.h5: label row 1 is not one-hot"):
    open_split(root, "lcz_s2", "val")
  write_lcz(root, "val", label=np.zeros((3, 10), "|u1"))
  with pytest.raises(EvalDataError, match=r"lcz_val.h5: label has shape \(3, 10\)"):
    open_split(root, "lcz_s2", "val")
  write_lcz(root, "val", sen2=np.zeros((3, 32, 32, 13)))
  with pytest.raises(EvalDataError, match=r"lcz_val.h5: sen2 has shape \(3, 32, 32, 13\)"):
    open_split(root, "lcz_s2", "val")
  write_lcz(root, "val", sen2=np.full((3, 32, 32, 10), 1200.0))   # DN, not reflectance
  with pytest.raises(EvalDataError, match="lcz_val.h5: sen2 sample 0 peaks at 1200"):
    open_split(root, "lcz_s2", "val")
  write_lcz(root, "val", classes=np.array([], int))
  with pytest.raises(EvalDataError, match="lcz_val.h5: empty split"):
    open_split(root, "lcz_s2", "val")
  with open(os.path.join(root, "lcz_test.h5"), "wb") as f:
    f.write(b"\x89HDF\r\n\x1a\n truncated")
  with pytest.raises(EvalDataError, match="lcz_test.h5: cannot read HDF5"):
    open_split(root, "lcz_s2", "test")
  with pytest.raises(EvalDataError, match=r"\('default',\)"):
    open_split(root, "lcz_s2", "train", partition="1pct")


def test_lcz_ambiguous_parent(tmp_path):
  write_lcz(str(tmp_path / "lcz_s1s2"))
  write_lcz(str(tmp_path / "lcz_s2"))
  with pytest.raises(EvalDataError, match="ambiguous"):
    open_split(str(tmp_path), "lcz_s2", "train")
