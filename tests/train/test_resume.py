"""Checkpoints: exact resume after SIGKILL, torn saves ignored, other device counts, NaN stop.

All runs use `configs/smoke.py:test` (tiny ViT, deterministic random batches) through the real
entry point, on 8 simulated CPU devices with a data x fsdp mesh. They stop inside one long
schedule (config.stop_after_step), so runs on the same devices compile the same step program and
share it through the test run's compilation cache.
"""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

SCHEDULE = "--config.total_steps=100000"
COMMON = ("--config=configs/smoke.py:test", SCHEDULE, "--config.stop_after_step=4",
          "--config.checkpoint.every_steps=2", "--config.mesh.data=4", "--config.mesh.fsdp=2")


def _steps(workdir):
  d = os.path.join(workdir, "checkpoints")
  return sorted(int(x) for x in os.listdir(d) if x.isdigit())


def _subtree(workdir, key):
  import jax
  from terrafm_jax.train import checkpoint
  return jax.device_get(checkpoint.restore_subtree(os.path.join(workdir, "checkpoints"), key))


@pytest.fixture(scope="module")
def uninterrupted(shared_artifact, cli):
  """The uninterrupted 4-step run, once per test run (xdist workers share it; tests copy it)."""
  return shared_artifact("resume_uninterrupted",
                         lambda work: cli([*COMMON, f"--workdir={work}"], num_devices=8))


def test_exact_resume_after_sigkill(uninterrupted, tmp_path, cli, metrics_of):
  work = str(tmp_path / "b")
  # N/2 steps, then SIGKILL right after the step-2 checkpoint committed.
  cli([*COMMON, f"--workdir={work}", "--die_after_step=2"], num_devices=8, expect_rc=-9,
      faults=True)
  assert _steps(work) == [2]
  # What a crash in the middle of writing step 3 leaves: an uncommitted temporary directory.
  ckpts = os.path.join(work, "checkpoints")
  shutil.copytree(os.path.join(ckpts, "2"), os.path.join(ckpts, "3.orbax-checkpoint-tmp-99"))
  resumed = cli([*COMMON, f"--workdir={work}"], num_devices=8)
  assert "resumed from step 2" in resumed.stderr
  assert _steps(work) == [2, 4]

  full, parts = metrics_of(uninterrupted), metrics_of(work)
  assert sorted(full) == [1, 2, 3, 4] and sorted(parts) == [1, 2, 3, 4]
  for s in (1, 2, 3, 4):
    assert parts[s]["loss"] == full[s]["loss"], (s, parts[s]["loss"], full[s]["loss"])
  assert full[4]["loss"] != full[1]["loss"]
  for key in ("student", "teacher", "centers", "opt_state"):
    a, b = _subtree(uninterrupted, key), _subtree(work, key)
    import jax
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=key)


def test_resume_on_one_device_and_teacher_restore(uninterrupted, tmp_path, cli, metrics_of):
  """Saved on 8 devices (fsdp=2), resumed on 1; the teacher alone restores for evaluation."""
  work = str(tmp_path / "c")
  shutil.copytree(uninterrupted, work)
  # The end-of-run kNN learning check runs too (8 held-out tiles: plumbing, not accuracy). A run
  # that reaches total_steps (tests/train/test_cloud_workdir.py compiles the same 1-device step).
  out = cli(["--config=configs/smoke.py:test", "--config.total_steps=5",
             "--config.checkpoint.every_steps=2", f"--workdir={work}",
             "--config.knn.enabled=True", "--config.knn.num_cells=8"], num_devices=1)
  assert "resumed from step 4" in out.stderr
  m = metrics_of(work)
  assert np.isfinite(m[5]["loss"])
  assert "[terrafm] kNN learning check (k=20, 4 held-out tiles)" in out.stdout
  for row in ("s2_l2a (memory and queries)", "s1 memory, s2_l1c queries", "cross-modal mean"):
    assert row in out.stdout, out.stdout
  import jax
  from terrafm_jax.train import checkpoint
  enc = checkpoint.restore_teacher(os.path.join(uninterrupted, "checkpoints"))
  full = _subtree(uninterrupted, "teacher")
  assert set(enc) == set(full["encoder"]) and "patch_embed" in enc
  for x, y in zip(jax.tree.leaves(enc), jax.tree.leaves(full["encoder"])):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_resume_on_four_devices(uninterrupted, tmp_path, cli, metrics_of):
  """Saved with data=4 x fsdp=2 on 8 devices; step 5 taken after a resume on 4 devices (data=2 x
  fsdp=2) matches step 5 taken after a resume on the original 8 (same batch, same state)."""
  losses = {}
  for n_dev in (4, 8):
    work = str(tmp_path / f"dev{n_dev}")
    shutil.copytree(uninterrupted, work)
    out = cli(["--config=configs/smoke.py:test", SCHEDULE, "--config.stop_after_step=5",
               "--config.checkpoint.every_steps=2", "--config.mesh.fsdp=2", f"--workdir={work}"],
              num_devices=n_dev)
    assert "stopped after step 5 of 100000" in out.stdout
    assert "resumed from step 4" in out.stderr
    assert f"'data': {n_dev // 2}, 'fsdp': 2" in out.stderr
    losses[n_dev] = metrics_of(work)[5]["loss"]
  # Not bit-identical: the cross-device reductions are summed in another order.
  np.testing.assert_allclose(losses[4], losses[8], rtol=1e-5)


def test_nan_stops_with_step_and_keeps_last_good_checkpoint(tmp_path, cli):
  work = str(tmp_path / "nan")
  out = cli([*COMMON, f"--workdir={work}", "--nan_at_step=3"], num_devices=8, expect_rc=3,
            faults=True)
  assert "non-finite loss or gradient at step 3" in out.stderr
  assert _steps(work) == [2]
