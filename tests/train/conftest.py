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
  """The test process' environment (tests/conftest.py: cheap LLVM optimisation, the run's one
  compilation cache, so runs with the same program and device count compile once, here and in
  tests/eval) with `num_devices` simulated CPU devices (the last device-count flag wins)."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = (f"{os.environ.get('XLA_FLAGS', '')} "
                      f"--xla_force_host_platform_device_count={num_devices}").strip()
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  # These tests read the trainer's INFO lines (resume, mesh, warnings) from stderr; the console
  # default is one progress line per interval (tests/eval checks that one).
  env["TERRAFM_VERBOSE"] = "1"
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


FAULT_TRAIN = os.path.join(REPO, "tests", "train", "fault_train.py")


def train_command(args, faults: bool = False) -> list[str]:
  """The trainer's command line, or the test-only one with fault and recorder flags."""
  return [sys.executable, *((FAULT_TRAIN,) if faults else ("-m", "terrafm_jax.train")), *args]


def run_cli(args, num_devices: int = 1, expect_rc: int = 0, timeout: float = 300,
            faults: bool = False):
  """`python -m terrafm_jax.train ARGS` (faults: tests/train/fault_train.py ARGS); asserts the
  exit code; returns the CompletedProcess."""
  proc = subprocess.run(train_command(args, faults), cwd=REPO,
                        env=subprocess_env(num_devices), capture_output=True, text=True,
                        timeout=timeout)
  if proc.returncode != expect_rc:
    pytest.fail(f"terrafm_jax.train {args} exited {proc.returncode}, expected {expect_rc}:\n"
                f"{proc.stdout[-2000:]}\n{proc.stderr[-8000:]}")
  return proc


def start_cli(args, num_devices: int = 1) -> subprocess.Popen:
  """`python -m terrafm_jax.train ARGS` in the background (stdout/stderr piped, text)."""
  return subprocess.Popen([sys.executable, "-m", "terrafm_jax.train", *args], cwd=REPO,
                          env=subprocess_env(num_devices), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="session")
def cli_background():
  return start_cli


def read_metrics(workdir: str) -> dict[int, dict]:
  import json  # pylint: disable=g-import-not-at-top
  out = {}
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    for line in f:
      row = json.loads(line)
      # A step may have several rows (training metrics, in-loop evaluations, the final checks).
      out.setdefault(row["step"], {}).update(row)
  return out


@pytest.fixture(scope="session")
def cli():
  return run_cli


@pytest.fixture(scope="session")
def metrics_of():
  return read_metrics


@pytest.fixture(scope="session")
def env_for():
  """subprocess_env(num_devices): the environment of the CLI subprocesses."""
  return subprocess_env


# The smoke model's train step built the way the trainer builds it, for code run with run_python:
# defines config, plan, mesh, rules, data, data_iter, model, scheds, tx, sh (state shardings),
# init, rng, keys
# (the batch keys the step reads). NUM_SHARDS: the mesh's data axis; OVERRIDES: config lines.
STEP_SETUP = r"""
import json
import numpy as np
import jax, flax
from terrafm_jax.train import data_source, schedules, sharding, optim
from terrafm_jax.train import state as state_lib, step as step_lib
from terrafm_jax.models import terrafm
import importlib.util
spec = importlib.util.spec_from_file_location("smoke", "configs/smoke.py")
mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
config = mod.get_config("test")
config.unlock()
config.mesh.data, config.mesh.fsdp = NUM_SHARDS, 1
OVERRIDES
mesh = sharding.make_mesh(config.mesh)
rules = sharding.logical_rules(config)
plan, data, data_iter = data_source.open_run(config, "/tmp/unused")
config = plan.config
model = terrafm.build_dino(config.model)
scheds = schedules.make_schedules(config)
param_init = state_lib.make_param_init_fn(model, config, NUM_SHARDS, data.contract.num_channels)
rng = jax.random.PRNGKey(0)
tx = optim.make_optimizer(config, sharding.unbox(jax.eval_shape(param_init, rng)), scheds,
                          idle=plan.idle)
init = state_lib.make_state_init_fn(param_init, tx, config.model.head.out_dim)
sh = state_lib.state_shardings(param_init, tx, rng, mesh, rules)
keys = data_source.step_keys(config)
"""


def step_setup_code(num_shards: int, overrides: str = "") -> str:
  return STEP_SETUP.replace("NUM_SHARDS", str(num_shards)).replace("OVERRIDES", overrides)


@pytest.fixture(scope="session")
def step_setup():
  """step_setup(num_shards, overrides=""): the code prelude STEP_SETUP."""
  return step_setup_code
