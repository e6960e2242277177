"""Run bench/train_step.py in a fresh process and return its JSON figures (bench/ helper).

Each benchmark point gets its own process: a new XLA client (device count from XLA_FLAGS) and no
memory left over from the previous point.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OOM_MARKERS = ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory", "OOM")


class OutOfMemory(RuntimeError):
  pass


def run_train_step(variant: str, flags: list[str], steps: int, env: dict | None = None,
                   what: str = "") -> dict:
  """configs/terrafm_b.py:<variant> with `flags` (--config.x=y ...); raises OutOfMemory on an
  accelerator OOM, SystemExit with the tail of stderr on any other failure."""
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "point.json")
    cmd = [sys.executable, os.path.join(ROOT, "bench", "train_step.py"),
           f"--config={os.path.join(ROOT, 'configs', 'terrafm_b.py')}:{variant}", *flags,
           f"--steps={steps}", f"--json_out={out}"]
    full_env = dict(os.environ, **(env or {}))
    full_env["PYTHONPATH"] = ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")
    proc = subprocess.run(cmd, env=full_env, capture_output=True, text=True, check=False)
    if proc.returncode:
      if any(s in proc.stderr for s in OOM_MARKERS):
        raise OutOfMemory(what)
      raise SystemExit(f"{what} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    with open(out, encoding="utf-8") as f:
      return json.load(f)
