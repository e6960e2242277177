"""In-loop evaluation during pretraining: scored on the teacher, logged, and validated up front."""
from __future__ import annotations

import json
import os


def test_inloop_knn_is_logged_every_n_steps(trained_workdir, eo_samples):
  rows = [json.loads(line) for line in open(os.path.join(trained_workdir, "metrics.jsonl"))]
  tag = "eval/eosamples_lulc-s2_l2a/knn"
  evals = [r for r in rows if tag in r]
  last = max(r["step"] for r in rows)
  # every 16 steps (the fixture's config.eval.every_steps), the last step included
  assert [r["step"] for r in evals] == list(range(16, last + 1, 16)) and last % 16 == 0
  assert len(evals) >= 2
  assert all(0.0 <= r[tag] <= 100.0 for r in evals)


def test_inloop_config_errors_stop_before_training(tmp_path, run_mod):
  p = run_mod("terrafm_jax.train", ["--config=configs/smoke.py:test", f"--workdir={tmp_path}",
                                    "--config.eval.every_steps=2", "--config.eval.task=nope/x"],
              expect_rc=2)
  assert "config.eval" in p.stderr and "nope/x" in p.stderr
  p = run_mod("terrafm_jax.train", ["--config=configs/smoke.py:test", f"--workdir={tmp_path}",
                                    "--config.eval.every_steps=2",
                                    "--config.eval.protocol=seg_linear"], expect_rc=2)
  assert "segmentation" in p.stderr or "classification" in p.stderr
