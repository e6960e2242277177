"""Shared helpers for tests/train: run code in a fresh interpreter with N simulated CPU devices.

Multi-device work runs in subprocesses because XLA_FLAGS must be set before jax initialises and
other test folders import jax in the pytest process.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def subprocess_env(num_devices: int) -> dict[str, str]:
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={num_devices}"
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  return env


def run_python(code: str, num_devices: int = 1, timeout: float = 300, args=()) -> str:
  """Run `code` in a new interpreter; return stdout; fail with its stderr on error."""
  proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], cwd=REPO,
                        env=subprocess_env(num_devices), capture_output=True, text=True,
                        timeout=timeout)
  if proc.returncode != 0:
    pytest.fail(f"subprocess failed (rc={proc.returncode}):\n{proc.stdout[-3000:]}\n"
                f"{proc.stderr[-6000:]}")
  return proc.stdout


@pytest.fixture
def run_py():
  return run_python
