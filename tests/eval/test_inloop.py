"""In-loop evaluation during pretraining: scored on the teacher, logged, and validated up front."""
from __future__ import annotations

import json
import os

import pytest


def test_inloop_knn_is_logged_every_n_steps(trained_workdir, eo_samples):
  rows = [json.loads(line) for line in open(os.path.join(trained_workdir, "metrics.jsonl"))]
  tag = "eval/eosamples_lulc-s2_l2a/knn"
  evals = [r for r in rows if tag in r]
  last = max(r["step"] for r in rows)
  # every 8 steps (the fixture's config.eval.every_steps), the last step included
  assert [r["step"] for r in evals] == list(range(8, last + 1, 8)) and last % 8 == 0
  assert len(evals) >= 2
  assert all(0.0 <= r[tag] <= 100.0 for r in evals)


def test_inloop_config_errors_stop_before_training(tmp_path, run_mod):
  p = run_mod("terrafm_jax.train", ["--config=configs/smoke.py:test", f"--workdir={tmp_path}",
                                    "--config.eval.every_steps=2", "--config.eval.task=nope/x"],
              expect_rc=2)
  assert "config.eval" in p.stderr and "nope/x" in p.stderr
  # The other checks, in-process (the hooks' checks the trainer runs before anything else).
  import importlib.util
  from terrafm_jax.eval import run_hooks
  from terrafm_jax.errors import ConfigError
  from terrafm_jax.train import config_checks
  from terrafm_jax.train import hooks
  path = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "smoke.py")
  spec = importlib.util.spec_from_file_location("smoke_config", path)
  smoke = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(smoke)
  c = smoke.get_config("test")
  c.eval.every_steps = 2
  c.eval.protocol = "seg_linear"
  config_checks.validate(c)  # the training schema leaves config.eval to its hook
  with pytest.raises(ConfigError, match="config.eval: .*classification task"):
    hooks.check_all(run_hooks.default_hooks(), c)
  c.eval.protocol = "finetune"
  with pytest.raises(ConfigError, match="too costly"):
    hooks.check_all(run_hooks.default_hooks(), c)
