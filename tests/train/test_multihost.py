"""Multi-host: 2 local processes x 2 CPU devices (gloo collectives) via launch/local_multiprocess.sh,
a few steps and a checkpoint holding one data-iterator state per process."""
from __future__ import annotations

import os
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_two_processes_train_and_checkpoint(tmp_path, metrics_of):
  import sys
  work, logs = tmp_path / "w", tmp_path / "logs"
  env = dict(os.environ, WORKDIR_LOGS=str(logs), PYTHON=sys.executable,
             XLA_FLAGS="--xla_backend_optimization_level=0 "
                       "--xla_llvm_disable_expensive_passes=true")
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  proc = subprocess.run(
      ["bash", "launch/local_multiprocess.sh", "2", "2", "--", "--config=configs/smoke.py:test",
       f"--workdir={work}", "--config.total_steps=2", "--config.checkpoint.every_steps=2"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
  log0 = (logs / "process_0.log").read_text()
  assert proc.returncode == 0, proc.stderr[-3000:] + log0[-5000:]
  assert "on 4 devices (2 processes)" in log0
  data = work / "checkpoints" / "2" / "data"
  assert {"process_0-of-2.json", "process_1-of-2.json"} <= set(os.listdir(data))
  m = metrics_of(str(work))  # written by process 0 only
  assert sorted(m) == [1, 2]
