"""The real-pixel learning check: leave-one-out k-NN, the paired bootstrap and the plumbing."""
from __future__ import annotations

import numpy as np
import pytest

from terrafm_jax.data.contract import DEFAULT_CONTRACT
from terrafm_jax.eval import transfer_check as tc
from terrafm_jax.eval import weights as weights_lib
from terrafm_jax.models.config import get_model_config

from tests.eval.test_eurosat import make_folder, write_tif


def test_leave_one_out_never_votes_for_itself():
  # Each image's duplicate carries the other label: with itself excluded, every vote is wrong;
  # counting itself (the one-off error) would make every vote right.
  x = np.repeat(np.eye(4), 2, axis=0) + 0.01 * np.arange(8)[:, None]
  y = np.tile([0, 1], 4)
  assert not tc.loo_knn_correct(x, y, 2, k=1, temperature=0.07).any()
  assert tc.loo_knn_correct(x, np.repeat([0, 1, 2, 3], 2), 4, k=1, temperature=0.07).all()


def test_leave_one_out_weighted_vote():
  # Query 0 has two far neighbours of class 1 and one near neighbour of class 2: with k = 3 the
  # exp(sim / T) weights let the near one win at T = 0.07, the majority at T = 100.
  x = np.array([[1.0, 0.0], [0.99, 0.14], [0.6, 0.8], [0.6, -0.8]])
  y = np.array([2, 2, 1, 1])
  assert tc.loo_knn_correct(x, y, 3, k=3, temperature=0.07)[0]
  assert not tc.loo_knn_correct(x, y, 3, k=3, temperature=100.0)[0]


def test_paired_bootstrap():
  a = np.array([1, 1, 0, 1, 0, 1, 1, 0, 1, 1] * 10)
  same = tc.paired_bootstrap(a, a, 500, seed=1)
  assert same == {"diff": 0.0, "lo": 0.0, "hi": 0.0}
  b = np.roll(a, 1)
  r = tc.paired_bootstrap(a, b, 4000, seed=3)
  assert r["diff"] == pytest.approx(np.mean(a - b)) and r["lo"] < r["diff"] < r["hi"]
  # The paired interval's half-width follows the standard error of the per-image differences.
  se = np.std(a - b) / np.sqrt(len(a))
  assert (r["hi"] - r["lo"]) / 2 == pytest.approx(1.96 * se, rel=0.15)
  assert tc.paired_bootstrap(a, b, 4000, seed=3) == r                         # seeded
  assert tc.paired_bootstrap(np.ones(50), np.zeros(50))["lo"] == 1.0
  with pytest.raises(ValueError, match="equal-length"):
    tc.paired_bootstrap(a, a[:-1])


def test_band_stats():
  x = np.zeros((2, 4, 4, 3))
  x[1, :2, :, 0] = 2.0
  s = tc.band_stats(x)
  assert s.shape == (2, 6) and s[1, 0] == 1.0 and s[1, 3] == 1.0 and not s[0].any()


def test_mean_std_pooling_is_band_stats_of_the_tokens():
  # "mean+std" summarises the patch tokens as band_stats summarises the pixels.
  tokens = np.random.default_rng(0).normal(size=(3, 4, 4, 5)).astype(np.float32)
  out = {"cls": np.zeros((3, 5), np.float32), "patch": tokens}
  np.testing.assert_allclose(np.asarray(tc.pool(out, "mean+std")), tc.band_stats(tokens),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(tc.pool(out, "mean")), tokens.mean(axis=(1, 2)),
                             rtol=1e-6)
  assert np.asarray(tc.pool(out, "cls+mean")).shape == (3, 10)


def test_scene_list(tmp_path):
  a, b = tmp_path / "a.tif", tmp_path / "b.tif"
  a.write_bytes(b"x")
  b.write_bytes(b"x")
  assert tc._scene_paths("") == []
  assert tc._scene_paths(f"{a}, {b}") == [str(a), str(b)]
  with pytest.raises(FileNotFoundError, match="nope.tif"):
    tc._scene_paths(f"{a},{tmp_path / 'nope.tif'}")


def test_check_plumbing(tmp_path):
  root = make_folder(tmp_path, per_class=(("Forest", 4), ("River", 3), ("SeaLake", 3)))
  mc = get_model_config("Mu/8")
  mc.img_size = 32
  settings = tc.Settings(ks=(3, 1), input_size=32, pooling="cls+mean", num_bootstrap=200,
                         batch_size=8, also_poolings=("mean+std",))
  check = tc.TransferCheck(root, mc, DEFAULT_CONTRACT, settings)
  assert check.inputs.shape == (20, 8, 8, 12) and check.stem == "s2_l1c"
  p0 = weights_lib.random_params(mc, seed=0)
  p1 = weights_lib.random_params(mc, seed=1)
  feats = check.features(p0)
  d = p0["cls_token"].shape[-1]
  assert feats["cls+mean"].shape == feats["mean+std"].shape == (20, 2 * d)
  assert np.isfinite(feats["mean+std"]).all()
  # The two readings share the patch-token mean: cls+mean is [cls, mean], mean+std [mean, std].
  np.testing.assert_allclose(feats["cls+mean"][:, d:], feats["mean+std"][:, :d], rtol=1e-6)
  with pytest.raises(RuntimeError, match="set_baselines"):
    check.run(p0)
  check.set_baselines(p0)
  same = check.run(p0)     # the "pretrained" weights are the random init: no difference
  assert same["intervals"]["pretrained-random_init"]["3"] == {"diff": 0.0, "lo": 0.0, "hi": 0.0}
  assert same["intervals"]["pretrained.mean+std-random_init.mean+std"]["3"]["diff"] == 0.0
  other = check.run(p1)
  assert list(other["accuracy"]) == ["pretrained", "pretrained.mean+std", "random_init",
                                     "random_init.mean+std", "raw_band_stats"]
  assert list(other["intervals"]) == [
      "pretrained-random_init", "pretrained-raw_band_stats",
      "pretrained.mean+std-random_init.mean+std", "pretrained.mean+std-raw_band_stats"]
  # Each reading is scored as if it were the only one.
  alone = tc.TransferCheck(root, mc, DEFAULT_CONTRACT, tc.Settings(
      ks=(3, 1), input_size=32, pooling="mean+std", num_bootstrap=200, batch_size=8))
  alone.set_baselines(p0)
  assert alone.run(p1)["accuracy"]["pretrained"] == other["accuracy"]["pretrained.mean+std"]
  acc = other["accuracy"]["pretrained"]
  assert acc == {str(k): v for k, v in check.accuracy(p1).items()}
  assert other["num_images"] == 20 and other["majority_class"] == 0.4
  table = tc.format_table(other)
  assert "raw_band_stats" in table and "pretrained-random_init" in table and "k = 3" in table
  with pytest.raises(ValueError, match="pooling"):
    tc.Settings(pooling="max")
  with pytest.raises(ValueError, match="repeats"):
    tc.Settings(pooling="cls", also_poolings=("cls",))


def test_main_job_prints_logs_and_draws_the_check(tmp_path, run_mod):
  """The trainer's plumbing: in-loop readings every 4 steps, the final table with intervals, the
  JSON, the scalars, the PCA picture and the report panel (smoke:test, random data, a 20-image
  EuroSAT folder)."""
  root = make_folder(tmp_path / "eurosat", per_class=(("Forest", 4), ("River", 3), ("SeaLake", 3)))
  wd = tmp_path / "wd"
  scene = str(tmp_path / "scene.tif")
  write_tif(scene, np.random.default_rng(0).integers(100, 3000, (13, 40, 40)))
  scene2 = str(tmp_path / "scene2.tif")
  write_tif(scene2, np.random.default_rng(1).integers(100, 3000, (13, 48, 48)))
  proc = run_mod("terrafm_jax.train", [
      "--config=configs/smoke.py:test", f"--workdir={wd}", "--config.write_report=True",
      f"--config.transfer.pca_scene={scene},{scene2}",
      "--config.transfer.enabled=True", "--config.transfer.every_steps=4",
      f"--config.transfer.data_root={root}", "--config.transfer.input_size=32",
      "--config.transfer.num_bootstrap=200", "--config.transfer.ks=(3,1)"])
  out = proc.stdout + proc.stderr
  assert "Real-pixel learning check: EuroSAT MS, 20 images" in out
  assert "pretrained-random_init" in out and "real-pixel check k3" in out
  import json
  res = json.loads((wd / "transfer_check.json").read_text())
  assert set(res["accuracy"]) == {"pretrained", "random_init", "raw_band_stats",
                                  "pretrained.mean+std", "random_init.mean+std"}
  assert res["ks"] == [3, 1] and res["also_poolings"] == ["mean+std"]
  assert "pretrained.mean+std-raw_band_stats" in out
  rows = [json.loads(line) for line in (wd / "metrics.jsonl").read_text().splitlines()]
  last = max(r["step"] for r in rows)
  inloop = [r["step"] for r in rows if "eval/eurosat_ms/loo_knn_k3" in r]
  assert inloop == list(range(4, last, 4))               # the last step has the full reading
  final = [r for r in rows if "transfer/pretrained/k3" in r]
  assert len(final) == 1 and final[0]["step"] == last
  assert "transfer/pretrained-random_init/k3/lo" in final[0]
  assert final[0]["transfer/pretrained/k3"] == res["accuracy"]["pretrained"]["3"]
  assert (wd / "report.png").stat().st_size > 10_000
  # Two rows of panels (loss, entropy, exposure; the check), then one row per scene: 4 rows of
  # 3.6 in at 100 dpi.
  import matplotlib.pyplot as plt
  assert plt.imread(str(wd / "report.png")).shape[:2] == (1440, 1500)


def test_missing_eurosat_folder(tmp_path):
  import ml_collections
  c = ml_collections.ConfigDict({"transfer": {"enabled": True, "data_root": str(tmp_path / "no"),
                                              "skip_if_missing": True}})
  assert tc.maybe_create(c, DEFAULT_CONTRACT, None) is None
  c.transfer.skip_if_missing = False
  from terrafm_jax.eval.dataset import EvalDataError
  c.transfer.update(every_steps=0, ks=(20,), temperature=0.07, input_size=64, pooling="cls",
                    num_bootstrap=100, seed=0)
  c.model = get_model_config("Mu/8")
  with pytest.raises(EvalDataError, match=str(tmp_path / "no")):
    tc.maybe_create(c, DEFAULT_CONTRACT, None)
