"""GEO-Bench v1 reader on tiny folders written by the real geobench 1.0 package (its Sample, Band,
write_sample_hdf5, TaskSpecifications, Partition), so the layout is the package's, not our guess."""
from __future__ import annotations

import datetime
import io
import json
import os
import pickle
import shutil

import h5py
import numpy as np
import pytest

from terrafm_jax.eval.readers import geobench as reader
from terrafm_jax.eval import safe_pickle
from terrafm_jax.eval.dataset import EvalDataError

CANON_13 = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11",
            "B12")


@pytest.fixture(scope="module")
def gb(tmp_path_factory):
  # geobench.config creates $GEO_BENCH_DIR (default ~/dataset/geobench) on import: keep it in tmp.
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("GEO_BENCH_DIR", str(tmp_path_factory.mktemp("gb_home")))
    return pytest.importorskip("geobench")


def signature(k: int, shape, dtype=np.int16) -> np.ndarray:
  """Band k's pixels: a per-band constant plus a per-pixel ramp, distinct for every band."""
  ramp = np.arange(shape[0] * shape[1]).reshape(shape) % 97
  return ((k + 1) * 1000 + ramp).astype(dtype)


def write_dataset(gb, ddir, bands_info, label_type, samples, partitions, extra=None,
                  **spec_fields):
  """A dataset folder as geobench writes it: samples, task_specs.pkl, partitions, band_stats."""
  os.makedirs(ddir, exist_ok=True)
  for sample in samples:
    gb.write_sample_hdf5(sample, ddir)
  specs = gb.TaskSpecifications(dataset_name=os.path.basename(ddir), bands_info=bands_info,
                                label_type=label_type, **spec_fields)
  specs.__dict__.update(extra or {})
  specs.save(ddir, overwrite=True)
  for name, splits in partitions.items():
    gb.Partition({k: list(v) for k, v in splits.items()}).save(ddir, name,
                                                               as_default=(name == "original"))
  stats = {b.band_info.name: gb.compute_stats(b.data.ravel()).to_dict() for b in samples[0].bands}
  with open(os.path.join(ddir, "band_stats.json"), "w") as f:
    json.dump(stats, f)
  return str(ddir)


def s2_sample(gb, name, label, infos, shape=(64, 64), dtype=np.int16, order=None, **band_kw):
  bands = [gb.Band(signature(k, shape, dtype), info, 10, **band_kw) for k, info in enumerate(infos)]
  if order is not None:
    bands = [bands[i] for i in order]
  return gb.Sample(bands, label=label, sample_name=name)


@pytest.fixture(scope="module")
def gbdir(gb, tmp_path_factory):
  """GEO_BENCH_DIR with m-eurosat, m-bigearthnet, m-so2sat, m-brick-kiln and m-cashew-plant."""
  root = tmp_path_factory.mktemp("geobench")
  cls, seg = root / "classification_v1.0", root / "segmentation_v1.0"
  s2 = gb.sentinel2_13_bands

  # m-eurosat: 13 L1C bands, 64 x 64, 10 classes; e3 is written with its bands in reverse order.
  names = [f"id_{i:04d}" for i in range(5)]
  samples = [s2_sample(gb, n, i * 2, s2, order=range(12, -1, -1) if i == 3 else None)
             for i, n in enumerate(names)]
  write_dataset(gb, cls / "m-eurosat", s2, gb.Classification(10, [f"c{i}" for i in range(10)]),
                samples,
                {"original": {"train": names[:3], "valid": names[3:4], "test": names[4:]},
                 "0.01x_train": {"train": names[1:2], "valid": names[3:4], "test": names[4:]}},
                extra={"eval_loss": gb.task.Accuracy},  # as the original converters wrote
                patch_size=(64, 64), n_time_steps=1, spatial_resolution=np.float64(10.0),
                benchmark_name="classification_v1.0")

  # m-bigearthnet: 12 L2A bands (B10 absent), float32, 43-way multi-hot numpy labels.
  infos = s2[0:10] + s2[-2:]
  hots = [np.isin(np.arange(43), [i, 42 - i, 20]).astype(np.int64) for i in range(3)]
  samples = [s2_sample(gb, f"b{i}", hots[i], infos, (16, 16), np.float32) for i in range(3)]
  write_dataset(gb, cls / "m-bigearthnet", infos, gb.MultiLabelClassification(43), samples,
                {"default": {"train": ["b0", "b1"], "valid": ["b2"], "test": ["b2"]}},
                patch_size=(16, 16), spatial_resolution=10)

  # m-so2sat: 8 S1 + 10 S2 bands, float reflectance, 32 x 32, 17 classes.
  infos = gb.sentinel1_8_bands + s2[1:9] + s2[-2:]
  samples = []
  for i in range(3):
    bands = [gb.Band((signature(k, (32, 32), np.float32) / 1e4).astype(np.float32), info, 10,
                     convert_to_int16=False) for k, info in enumerate(infos)]
    samples.append(gb.Sample(bands, label=i + 14, sample_name=f"s{i}"))
  write_dataset(gb, cls / "m-so2sat", infos, gb.Classification(17), samples,
                {"default": {"train": ["s0", "s1"], "valid": ["s2"], "test": ["s2"]}},
                patch_size=(32, 32), spatial_resolution=10)

  # m-brick-kiln: 13 bands with an Affine transform and a CRS string; the 60 m bands (B01, B09,
  # B10) of k1 are stored at half size, which the format allows.
  from affine import Affine
  tr = Affine(0.000625, 0.0, 90.0, 0.0, -0.000625, 23.01)
  samples = [s2_sample(gb, "k0", 0, s2, (16, 16), transform=tr, crs="EPSG:4326")]
  bands = [gb.Band(signature(k, (8, 8) if k in (0, 9, 10) else (16, 16)), info, 10, transform=tr)
           for k, info in enumerate(s2)]
  samples.append(gb.Sample(bands, label=1, sample_name="k1"))
  write_dataset(gb, cls / "m-brick-kiln", s2, gb.Classification(2, ["no", "kiln"]), samples,
                {"default": {"train": ["k0"], "valid": ["k1"], "test": ["k1"]}},
                patch_size=(16, 16), spatial_resolution=10)

  # m-cashew-plantation, in the folder the published zip unpacks to: 12 S2 bands (B10 dropped)
  # plus "Cloud Probability", dated bands (descriptor "<name>_<date>"), a CRS object, and a
  # SegmentationClasses label band of 7 classes.
  from rasterio.crs import CRS
  infos = s2[:10] + s2[11:] + [gb.CloudProbability(alt_names=("CPL", "CLD"), spatial_resolution=10)]
  label_info = gb.SegmentationClasses("label", spatial_resolution=10, n_classes=7,
                                      class_names=[f"k{i}" for i in range(7)])
  samples = []
  for i in range(3):
    date = datetime.date(2020, 1, 4 + 5 * i)
    bands = [gb.Band(signature(k, (32, 32)), info, 10, date=date, crs=CRS.from_epsg(32631),
                     convert_to_int16=False) for k, info in enumerate(infos)]
    mask = (np.arange(32 * 32).reshape(32, 32) + i) % 7
    samples.append(gb.Sample(bands, gb.Band(mask.astype(np.int16), label_info, 10), f"c{i}"))
  write_dataset(gb, seg / "m-cashew-plant", infos, label_info, samples,
                {"default": {"train": ["c0", "c1"], "valid": ["c2"], "test": ["c2"]}},
                patch_size=(32, 32), spatial_resolution=10)
  return str(root)


def copy_dataset(gbdir, tmp_path, rel="classification_v1.0/m-eurosat") -> str:
  dst = str(tmp_path / os.path.basename(rel))
  shutil.copytree(os.path.join(gbdir, rel), dst, symlinks=False)
  return dst


# ---- well-formed datasets --------------------------------------------------------------------


def test_eurosat_bands_land_under_their_canonical_names(gbdir):
  sp = reader.open_split(gbdir, "m-eurosat", "train")
  assert (sp.task, sp.split, sp.partition, sp.kind, sp.num_classes) == (
      "geobench/m-eurosat", "train", "default", "classification", 10)
  assert sp.class_names == tuple(f"c{i}" for i in range(10)) and sp.ignore_index is None
  assert dict(sp.inputs)["s2"].bands == CANON_13 and sp.inputs["s2"].units == "dn"
  assert list(sp.inputs) == ["s2"] and len(sp) == 3 and sp.skipped_bands == ()
  x = sp[1]
  assert x["id"] == "id_0001" and x["label"] == 2 and x["s2"].dtype == np.float32
  assert x["s2"].shape == (64, 64, 13)
  for k, band in enumerate(CANON_13):  # band k of geobench's list planted signature(k)
    np.testing.assert_array_equal(x["s2"][..., CANON_13.index(band)], signature(k, (64, 64)))
  assert "m-eurosat" in sp.describe()


def test_channel_order_follows_task_bands_not_file_order(gbdir):
  sp = reader.open_split(gbdir, "m-eurosat", "val")  # id_0003: bands written in reverse
  x = sp[0]
  assert x["id"] == "id_0003" and x["label"] == 6
  for k in range(13):
    np.testing.assert_array_equal(x["s2"][..., k], signature(k, (64, 64)))


def test_partition_and_root_forms(gbdir):
  small = reader.open_split(gbdir, "m-eurosat", "train", partition="0.01x_train")
  assert small.sample_names == ["id_0001"] and small.partition == "0.01x_train"
  ddir = os.path.join(gbdir, "classification_v1.0", "m-eurosat")
  assert os.path.islink(os.path.join(ddir, "default_partition.json"))  # geobench's symlink
  for root in (ddir, os.path.join(gbdir, "classification_v1.0")):
    assert reader.open_split(root, "m-eurosat", "test")[0]["id"] == "id_0004"
  assert reader.open_split(gbdir, "m-eurosat", "valid").split == "val"
  with pytest.raises(ValueError, match="unknown GEO-Bench task"):
    reader.open_split(gbdir, "m-forestnet", "train")
  with pytest.raises(EvalDataError, match="no GEO-Bench dataset folder for m-SA-crop-type"):
    reader.open_split(gbdir, "m-SA-crop-type", "train")
  with pytest.raises(EvalDataError, match=r"m-eurosat: a GEO-Bench dataset folder, but not m-so2"):
    reader.open_split(ddir, "m-so2sat", "train")


def test_bigearthnet_multilabel(gbdir):
  sp = reader.open_split(gbdir, "m-bigearthnet", "train")
  assert sp.kind == "multilabel" and sp.num_classes == 43
  assert sp.inputs["s2"].bands == CANON_13[:10] + CANON_13[11:]
  x = sp[1]
  assert x["label"].dtype == np.uint8 and x["label"].shape == (43,)
  np.testing.assert_array_equal(np.flatnonzero(x["label"]), [1, 20, 41])
  # B11 is the 11th band written (k = 10): the band list skips B10.
  np.testing.assert_array_equal(x["s2"][..., sp.inputs["s2"].bands.index("B11")],
                                signature(10, (16, 16)))


def test_so2sat_lee_intensities_and_reflectance(gbdir):
  sp = reader.open_split(gbdir, "m-so2sat", "val")
  assert sp.inputs["s1"].bands == ("VH", "VV") and sp.inputs["s1"].units == "linear"
  assert sp.inputs["s2"].bands == ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11",
                                   "B12")
  assert sp.inputs["s2"].units == "reflectance"
  assert set(sp.skipped_bands) == set(reader.S1_LEFT_OUT)
  x = sp[0]
  assert x["label"] == 16 and x["s1"].shape == (32, 32, 2) and x["s2"].shape == (32, 32, 10)
  # "05 - VH.LEE Filtered" is band 4 of sentinel1_8_bands, "06 - VV.LEE Filtered" band 5.
  for c, k in enumerate((4, 5)):
    np.testing.assert_array_equal(x["s1"][..., c], signature(k, (32, 32), np.float32) / 1e4)
  np.testing.assert_array_equal(x["s2"][..., 0], signature(8, (32, 32), np.float32) / 1e4)


def test_mixed_band_sizes_are_resampled_bilinearly(gbdir):
  sp = reader.open_split(gbdir, "m-brick-kiln", "val")
  x = sp[0]
  assert x["s2"].shape == (16, 16, 13) and x["label"] == 1
  # Pixel-centre aligned bilinear, clamped at the border (the data pipeline's resampler,
  # data/harmonize.py; PyTorch's align_corners=False).
  a = signature(0, (8, 8)).astype(np.float64)
  u = np.clip((np.arange(16) + 0.5) / 2 - 0.5, 0, 7)
  i0 = np.floor(u).astype(int)
  i1, w = np.minimum(i0 + 1, 7), u - np.floor(u)
  rows = a[i0] * (1 - w)[:, None] + a[i1] * w[:, None]
  want = rows[:, i0] * (1 - w)[None] + rows[:, i1] * w[None]
  np.testing.assert_allclose(x["s2"][..., 0], want, rtol=1e-6)
  np.testing.assert_array_equal(x["s2"][..., 1], signature(1, (16, 16)))


def test_cashew_segmentation(gbdir):
  sp = reader.open_split(gbdir, "m-cashew-plantation", "train")
  assert sp.task == "geobench/m-cashew-plantation" and sp.root.endswith("m-cashew-plant")
  assert (sp.kind, sp.num_classes, sp.class_names[0]) == ("segmentation", 7, "k0")
  assert sp.inputs["s2"].bands == CANON_13[:10] + CANON_13[11:]
  assert sp.skipped_bands == ("Cloud Probability",)
  x = sp[1]
  assert x["label"].dtype == np.int32 and x["label"].shape == (32, 32)
  np.testing.assert_array_equal(x["label"], (np.arange(32 * 32).reshape(32, 32) + 1) % 7)
  np.testing.assert_array_equal(x["s2"][..., 10], signature(10, (32, 32)))  # "11 - SWIR"


# ---- the pickles: what real geobench objects reference, and the allow-list -------------------


class _Recorder(pickle.Unpickler):
  def __init__(self, data):
    super().__init__(io.BytesIO(data))
    self.seen = set()

  def find_class(self, module, name):
    self.seen.add(f"{module}.{name}")
    return super().find_class(module, name)


def test_every_global_of_geobench_pickles_is_allowed(gbdir):
  import ast
  seen = set()
  for dirpath, _, files in os.walk(gbdir):
    for f in files:
      path = os.path.join(dirpath, f)
      if f == "task_specs.pkl":
        data = open(path, "rb").read()
      elif f.endswith(".hdf5"):
        with h5py.File(path) as fp:
          data = ast.literal_eval(fp.attrs["pickle"])
      else:
        continue
      rec = _Recorder(data)
      rec.load()
      seen |= rec.seen
      safe_pickle.loads(data, path)  # must not raise
  assert {"geobench.task.TaskSpecifications", "geobench.dataset.Sentinel1",
          "geobench.dataset.Sentinel2", "geobench.dataset.CloudProbability",
          "geobench.dataset.SegmentationClasses", "geobench.label.Classification",
          "geobench.label.MultiLabelClassification", "affine.Affine", "rasterio.crs.CRS",
          "datetime.date", "numpy.dtype", "numpy.ndarray"} <= seen
  assert any(s.endswith("multiarray.scalar") for s in seen)  # np.float64 spatial_resolution
  assert any(s.endswith("multiarray._reconstruct") for s in seen)  # numpy multi-hot label


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_numpy_and_builtin_spellings(protocol):
  obj = {"label": np.array([0, 1, 1], np.int64), "res": np.float32(10), "s": {1, 2},
         "f": frozenset({3}), "sl": slice(1, 2), "d": datetime.datetime(2020, 1, 2, 3)}
  data = pickle.dumps(obj, protocol=protocol)
  spellings = [data]
  if protocol == 0:  # numpy 1.x wrote numpy.core.*; text opcodes let us respell it in place
    spellings.append(data.replace(b"numpy._core.", b"numpy.core."))
  for d in spellings:
    back = safe_pickle.loads(d, "x.pkl")
    np.testing.assert_array_equal(back["label"], obj["label"])
    assert back["res"] == obj["res"] and back["s"] == obj["s"] and back["d"] == obj["d"]
    assert back["f"] == obj["f"] and back["sl"] == obj["sl"]


def test_object_dtype_and_other_codecs_are_refused():
  with pytest.raises(EvalDataError, match="x.pkl.*object dtype"):
    safe_pickle.loads(pickle.dumps(np.array([1, "a"], dtype=object)), "x.pkl")
  evil = b"c_codecs\nencode\n(Vx\nVrot13\ntR."
  with pytest.raises(EvalDataError, match="rot13"):
    safe_pickle.loads(evil, "x.pkl")


def test_task_specs_naming_os_system_is_refused(gbdir, tmp_path):
  ddir = copy_dataset(gbdir, tmp_path)
  marker = tmp_path / "pwned"
  with open(os.path.join(ddir, "task_specs.pkl"), "wb") as f:
    f.write(b"cos\nsystem\n(Vtouch " + str(marker).encode() + b"\ntR.")
  with pytest.raises(EvalDataError, match=r"task_specs\.pkl.*os\.system"):
    reader.open_split(ddir, "m-eurosat", "train")
  assert not marker.exists()


class _Eval:
  def __reduce__(self):
    return eval, ("1 + 1",)


def test_sample_pickle_naming_builtins_eval_is_refused(gbdir, tmp_path):
  ddir = copy_dataset(gbdir, tmp_path)
  path = os.path.join(ddir, "id_0002.hdf5")
  with h5py.File(path, "a") as fp:
    fp.attrs["pickle"] = str(pickle.dumps({"bands_order": [], "x": _Eval()}))
  sp = reader.open_split(ddir, "m-eurosat", "train")
  with pytest.raises(EvalDataError, match=r"id_0002\.hdf5.*builtins\.eval"):
    sp[2]


# ---- bad input: one EvalDataError naming the file --------------------------------------------


def test_missing_task_specs(gbdir, tmp_path):
  ddir = copy_dataset(gbdir, tmp_path)
  os.remove(os.path.join(ddir, "task_specs.pkl"))
  with pytest.raises(EvalDataError, match=r"task_specs\.pkl: missing"):
    reader.open_split(ddir, "m-eurosat", "train")


def test_missing_partition_lists_the_existing_ones(gbdir):
  with pytest.raises(EvalDataError, match=r"0\.05x_train_partition\.json: no partition.*"
                     r"\['0\.01x_train', 'default', 'original'\]"):
    reader.open_split(gbdir, "m-eurosat", "train", partition="0.05x_train")


def test_partition_naming_a_missing_sample(gbdir, tmp_path):
  ddir = copy_dataset(gbdir, tmp_path)
  os.remove(os.path.join(ddir, "id_0002.hdf5"))
  with pytest.raises(EvalDataError, match=r"default_partition\.json: 1 sample.*id_0002\.hdf5"):
    reader.open_split(ddir, "m-eurosat", "train")


def test_empty_split(gbdir, tmp_path):
  ddir = copy_dataset(gbdir, tmp_path)
  with open(os.path.join(ddir, "empty_partition.json"), "w") as f:
    json.dump({"train": ["id_0000"], "valid": [], "test": ["id_0004"]}, f)
  with pytest.raises(EvalDataError, match=r"empty_partition\.json: split 'valid' is missing or"):
    reader.open_split(ddir, "m-eurosat", "val", partition="empty")


def test_label_out_of_range(gb, gbdir, tmp_path):
  ddir = copy_dataset(gbdir, tmp_path)
  gb.write_sample_hdf5(s2_sample(gb, "id_0001", 12, gb.sentinel2_13_bands), ddir)
  sp = reader.open_split(ddir, "m-eurosat", "train")
  with pytest.raises(EvalDataError, match=r"id_0001\.hdf5: label 12 out of range \[0, 10\)"):
    sp[1]


def test_segmentation_label_out_of_range(gb, gbdir, tmp_path):
  ddir = copy_dataset(gbdir, tmp_path, "segmentation_v1.0/m-cashew-plant")
  with h5py.File(os.path.join(ddir, "c1.hdf5"), "a") as fp:
    fp["label"][0, 0] = 9
  sp = reader.open_split(ddir, "m-cashew-plantation", "train")
  with pytest.raises(EvalDataError, match=r"c1\.hdf5: segmentation label values 0\.\.9"):
    sp[1]


@pytest.mark.parametrize("drop,extra", [(3, False), (None, True)])
def test_wrong_band_set(gb, gbdir, tmp_path, drop, extra):
  ddir = copy_dataset(gbdir, tmp_path)
  infos = [b for k, b in enumerate(gb.sentinel2_13_bands) if k != drop]
  if extra:
    infos.append(gb.CloudProbability(spatial_resolution=10))
  gb.write_sample_hdf5(s2_sample(gb, "id_0002", 1, infos), ddir)
  sp = reader.open_split(ddir, "m-eurosat", "train")
  want = r"missing \['04 - Red'\]" if drop is not None else r"unexpected \['Cloud Probability'\]"
  with pytest.raises(EvalDataError, match=r"id_0002\.hdf5: 1[24] bands.*" + want):
    sp[2]


def test_first_sample_disagreeing_with_task_specs(gb, gbdir, tmp_path):
  ddir = copy_dataset(gbdir, tmp_path)
  gb.write_sample_hdf5(s2_sample(gb, "id_0000", 1, gb.sentinel2_13_bands[:12]), ddir)
  with pytest.raises(EvalDataError,
                     match=r"id_0000\.hdf5: .* lacks \['12 - SWIR'\] and adds \[\] .*task_specs"):
    reader.open_split(ddir, "m-eurosat", "train")


@pytest.mark.parametrize("how", ["garbage", "truncated"])
def test_corrupt_hdf5(gbdir, tmp_path, how):
  ddir = copy_dataset(gbdir, tmp_path)
  path = os.path.join(ddir, "id_0002.hdf5")
  data = open(path, "rb").read()
  with open(path, "wb") as f:
    f.write(b"not an hdf5 file" * 64 if how == "garbage" else data[: len(data) // 2])
  sp = reader.open_split(ddir, "m-eurosat", "train")
  with pytest.raises(EvalDataError, match=r"id_0002\.hdf5: "):
    sp[2]


# --- The whole harness on folders the geobench package wrote -------------------------------------

def test_every_band_reaches_its_stem_slot_through_the_reader(gbdir):
  from terrafm_jax.data.contract import DEFAULT_CONTRACT
  from terrafm_jax.eval import bands as bands_lib
  from terrafm_jax.eval.tasks import get_task
  task = get_task("geobench/m-eurosat")
  split = task.open(gbdir, "train")
  plans = bands_lib.plan(task.stems, split.inputs, DEFAULT_CONTRACT, split.root)
  out = bands_lib.apply(plans, split[0], DEFAULT_CONTRACT)["s2_l1c"]
  mc = DEFAULT_CONTRACT["s2_l1c"]
  for j, band in enumerate(mc.bands):  # B10 (k = 10) is the only band that must not arrive
    raw = signature(CANON_13.index(band), (64, 64)).astype(np.float32)
    np.testing.assert_allclose(out[..., j], (raw - mc.mean[j]) / mc.std[j], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,protocol,partition", [
    ("geobench/m-eurosat", "knn", "default"), ("geobench/m-eurosat", "knn", "0.01x_train"),
    ("geobench/m-bigearthnet", "knn", "default"),
    ("geobench/m-so2sat", "knn", "default"), ("geobench/m-brick-kiln", "linear", "default"),
    ("geobench/m-cashew-plantation", "seg_linear", "default"),
    ("geobench/m-cashew-plantation", "seg_upernet", "default")])
def test_harness_runs_on_package_written_folders(gbdir, tmp_path, name, protocol, partition):
  from terrafm_jax.eval import runner
  from terrafm_jax.eval.config import get_eval_config
  from terrafm_jax.eval.tasks import get_task
  from terrafm_jax.eval.weights import load_weights
  cfg = get_eval_config("tiny")
  cfg.out_dir = str(tmp_path)
  cfg.input_size = 32  # keep the tiny model's compiles small (m-bigearthnet defaults to 128)
  task = get_task(name)
  row = runner.run(task, protocol, load_weights("random:Mu/8"), gbdir, cfg, partition=partition,
                   progress=False)
  assert 0.0 <= row.value <= 100.0 and row.metric == task.metric
  assert row.published == task.published.get(f"{protocol}@{partition}")
  assert row.details["num_samples"]["train"] == len(task.open(gbdir, "train", partition))
  if protocol.startswith("seg_"):
    assert row.example["pred"].shape == row.example["truth"].shape == (32, 32)
