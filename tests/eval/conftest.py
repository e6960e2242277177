"""Shared fixtures of the evaluation tests: a trained workdir, its export, the eo_samples folder."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EO_SAMPLES = os.path.normpath(os.path.join(REPO, "..", "shared", "eo_samples"))


def subprocess_env() -> dict[str, str]:
  """The test process' environment (tests/conftest.py: cheap LLVM optimisation and the run's one
  compilation cache, so the CLI runs share programs with each other and with tests/train's) on
  one CPU device (the last device-count flag wins)."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=1"
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  return env


def run_module(module: str, args, expect_rc: int = 0, timeout: float = 300):
  proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=subprocess_env(),
                        capture_output=True, text=True, timeout=timeout)
  if proc.returncode != expect_rc:
    pytest.fail(f"{module} {args} exited {proc.returncode}, expected {expect_rc}:\n"
                f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
  return proc


@pytest.fixture(scope="session")
def eo_samples() -> str:
  if not os.path.isdir(os.path.join(EO_SAMPLES, "terramind_majortom")):
    pytest.skip(f"real EO samples not found at {EO_SAMPLES}")
  return EO_SAMPLES


@pytest.fixture(scope="session")
def trained_workdir(shared_artifact) -> str:
  """16 steps of the smoke config (random data) -> a workdir with checkpoints; in-loop k-NN on
  the eo_samples patches every 8 steps (skipped with a warning where they are absent). The
  schedule is tests/train/test_preemption.py's (the same compiled step)."""
  def build(wd):
    proc = run_module("terrafm_jax.train", ["--config=configs/smoke.py:test", f"--workdir={wd}",
                                            "--config.total_steps=100000",
                                            "--config.stop_after_step=16",
                                            "--config.write_report=True",
                                            "--config.eval.every_steps=8",
                                            "--config.eval.skip_if_missing=True"])
    with open(wd + ".console.json", "w", encoding="utf-8") as f:  # for the console tests
      json.dump({"stdout": proc.stdout, "stderr": proc.stderr}, f)
  return shared_artifact("eval_trained_workdir", build)


@pytest.fixture(scope="session")
def exported_pth(trained_workdir, shared_artifact) -> str:
  def build(folder):
    os.makedirs(folder, exist_ok=True)
    run_module("terrafm_jax.export", ["--config.format=released",
                                      f"--config.workdir={trained_workdir}",
                                      f"--config.out={os.path.join(folder, 'teacher.pth')}"])
  return os.path.join(shared_artifact("eval_export", build), "teacher.pth")


@pytest.fixture
def run_mod():
  """`run_module` as a fixture (test modules cannot import conftest under importlib mode)."""
  return run_module
