"""Weights from a workdir, a released-layout .pth and random init, and the eval CLI end to end."""
from __future__ import annotations

import json
import os
import shutil

import flax
import numpy as np
import pytest

from terrafm_jax.data.contract import DEFAULT_CONTRACT
from terrafm_jax.eval import weights as weights_lib


def _flat(tree):
  return flax.traverse_util.flatten_dict(tree)


def test_workdir_pth_and_random_weights(trained_workdir, exported_pth, tmp_path):
  from terrafm_jax.train import checkpoint
  w = weights_lib.load_weights(trained_workdir)
  assert w.provenance["kind"] == "workdir" and w.provenance["network"] == "teacher"
  assert w.variant == "Mu/8" and w.model_config.img_size == 32
  teacher = checkpoint.restore_teacher(os.path.join(trained_workdir, "checkpoints"))
  for k, v in _flat(w.params).items():
    np.testing.assert_array_equal(v, np.asarray(_flat(teacher)[k]))
  ckpt_contract = checkpoint.restore_contract(os.path.join(trained_workdir, "checkpoints"))
  assert w.contract == ckpt_contract

  f = weights_lib.load_weights(exported_pth)
  assert f.provenance["kind"] == "file" and f.provenance["random_fusion"]
  assert f.contract == ckpt_contract  # from teacher.contract.json beside the weights
  wf, ff = _flat(w.params), _flat(f.params)
  assert set(wf) == set(ff)
  for k in wf:
    if "fusion" not in k:
      np.testing.assert_array_equal(wf[k], ff[k])
  assert f.provenance["contract_digest"] == w.provenance["contract_digest"]

  # The same file without its contract: the built-in contract, said in the provenance.
  bare = str(tmp_path / "bare.pth")
  shutil.copy(exported_pth, bare)
  b = weights_lib.load_weights(bare)
  assert b.contract == DEFAULT_CONTRACT and "built-in" in b.provenance["contract"]

  r1, r2 = weights_lib.load_weights("random:Mu/8"), weights_lib.load_weights("random:Mu/8")
  assert r1.provenance["params_digest"] == r2.provenance["params_digest"]
  assert weights_lib.load_weights("random:Mu/8", seed=1).provenance["params_digest"] != \
      r1.provenance["params_digest"]


def test_bad_weights_are_clear_errors(exported_pth, tmp_path):
  with pytest.raises(ValueError, match="not the requested B/16"):
    weights_lib.load_weights(exported_pth, variant="B/16")
  with pytest.raises(FileNotFoundError, match="neither a workdir"):
    weights_lib.load_weights(str(tmp_path / "nowhere"))
  broken = tmp_path / "broken.pth"
  broken.write_bytes(b"not a torch file")
  with pytest.raises(ValueError, match="broken.pth"):
    weights_lib.load_weights(str(broken))


@pytest.mark.parametrize("source", ["workdir", "pth"])  # random: test_cli_usage_and_data_errors
def test_cli_knn_from_each_weight_source(source, trained_workdir, exported_pth, eo_samples,
                                         tmp_path, run_mod):
  weights = {"workdir": trained_workdir, "pth": exported_pth, "random": "random:Mu/8"}[source]
  out = tmp_path / "res"
  proc = run_mod("terrafm_jax.eval", [
      "--config=configs/eval.py:tiny", "--task=eosamples/lulc-s2_l2a", "--protocol=knn",
      f"--weights={weights}", f"--out_dir={out}"])
  assert "eosamples/lulc-s2_l2a knn default: accuracy" in proc.stdout
  # The console is a few lines (absl / Orbax INFO and library warnings go to eval.log only).
  assert not [l for l in proc.stderr.splitlines() if l[:1] in "IW" and l[1:5].isdigit()], \
      proc.stderr[-3000:]
  assert len(proc.stdout.splitlines()) <= 10, proc.stdout
  assert "Restoring checkpoint" in (out / "eval.log").read_text() or source != "workdir"
  rows = json.loads((out / "results.json").read_text())
  assert len(rows) == 1
  row = rows[0]
  assert row["task"] == "eosamples/lulc-s2_l2a" and row["protocol"] == "knn"
  assert 0.0 <= row["value"] <= 100.0 and row["metric"] == "accuracy"
  assert row["provenance"]["kind"] == {"workdir": "workdir", "pth": "file",
                                       "random": "random"}[source]
  assert len(row["contract_digest"]) == 16 and row["seed"] == 0
  assert (out / "results.png").stat().st_size > 0
  assert list(out.glob("*_confusion.png"))


def test_cli_usage_and_data_errors(tmp_path, run_mod):
  p = run_mod("terrafm_jax.eval", ["--task=nope/x", "--weights=random:Mu/8"], expect_rc=2)
  assert "unknown task" in p.stderr and p.stderr.strip().splitlines()[-1].startswith(
      "[terrafm] ERROR:")
  p = run_mod("terrafm_jax.eval", ["--task=geobench/m-eurosat", "--weights=random:Mu/8"],
                 expect_rc=2)
  assert "--data_root" in p.stderr
  p = run_mod("terrafm_jax.eval", ["--task=geobench/m-eurosat", "--weights=random:Mu/8",
                                      f"--data_root={tmp_path}", f"--out_dir={tmp_path / 'o'}"],
              expect_rc=1)
  assert str(tmp_path) in p.stderr  # random weights loaded, then the data folder refused
