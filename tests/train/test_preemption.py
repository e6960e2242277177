"""Preemption: SIGTERM mid-run writes a checkpoint of the current step and exits cleanly; the next
start resumes from it. The same run also records a profile when asked."""
from __future__ import annotations

import glob
import os
import re
import signal
import time


def test_sigterm_checkpoints_then_resumes(tmp_path, cli, cli_background):
  work = str(tmp_path / "pre")
  args = ["--config=configs/smoke.py:test", "--config.total_steps=100000",
          "--config.checkpoint.every_steps=100000", "--config.log_every_steps=1",
          "--config.profile.enabled=True", "--config.profile.first_step=2",
          "--config.profile.steps=2", f"--workdir={work}"]
  proc = cli_background(args)
  try:
    metrics = os.path.join(work, "metrics.jsonl")
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
      if os.path.exists(metrics):
        with open(metrics, encoding="utf-8") as f:
          if sum(1 for _ in f) >= 6:
            break
      time.sleep(0.5)
    assert proc.poll() is None, proc.communicate()[1][-4000:]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 0, err[-4000:]
  m = re.search(r"preempted: checkpoint of step (\d+) written", err)
  assert m, err[-4000:]
  step = int(m.group(1))
  assert 6 <= step < 100000
  assert os.path.isdir(os.path.join(work, "checkpoints", str(step)))
  assert glob.glob(os.path.join(work, "**", "*.xplane.pb"), recursive=True), "no profile written"

  # The same schedule (hence the same compiled step, from the compilation cache), two more steps.
  resumed = cli([*args[:4], f"--config.stop_after_step={step + 2}", f"--workdir={work}"])
  assert f"resumed from step {step}" in resumed.stderr
  assert f"stopped after step {step + 2} of 100000" in resumed.stdout
  assert os.path.isdir(os.path.join(work, "checkpoints", str(step + 2)))
  # Restarted with the same stop: nothing left to do, and nothing is trained.
  again = cli([*args[:4], f"--config.stop_after_step={step + 2}", f"--workdir={work}"])
  assert "nothing to train" in again.stdout and "train step compiled" not in again.stdout
