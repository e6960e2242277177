"""Shared fixtures of the embedding tests: a tiny synthetic Major-TOM folder, the real fixture,
an in-process random Mu/8 model, and a CLI runner (subprocess) that shares the model's XLA flags.

The subprocesses inherit this process' environment (XLA flags included), so `random:Mu/8` has the
same parameters in both and a run killed in a subprocess can be resumed in-process; they reuse the
in-process model's compilation through a persistent cache, and the main CLI run goes on in the
background while the in-process tests run.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys

import pytest

from terrafm_jax.data import synthetic

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURE = os.path.normpath(os.path.join(REPO, "..", "shared", "eo_samples",
                                        "majortom_fixture_bigearthnet"))
WEIGHTS = "random:Mu/8"
# 6 cells of 64 px with every modality; 32 px fragments -> 2 x 2 per cell.
SYN_CFG = synthetic.SyntheticConfig(num_cells=6, cell_size=64, tile_size=32, seed=3,
                                    rows_per_part=4, p_missing=(0.0, 0.0, 0.0))
SYN_ARGS = dict(modality="s2_l2a", fragment_size=32, fragment_stride=32, cells_per_part=2,
                batch_size=8, progress=False)


@pytest.fixture(scope="session")
def syn_raw(tmp_path_factory) -> str:
  root = str(tmp_path_factory.mktemp("embed_synthetic"))
  synthetic.write_synthetic_majortom(root, SYN_CFG)
  return root


@pytest.fixture(scope="session")
def fixture_dir() -> str:
  if not os.path.isdir(FIXTURE):
    pytest.skip(f"real Major-TOM fixture not found at {FIXTURE}")
  return FIXTURE


@pytest.fixture(scope="session")
def cli_env(tmp_path_factory) -> dict[str, str]:
  env = dict(os.environ)
  env.setdefault("JAX_PLATFORMS", "cpu")
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path_factory.mktemp("jax_cache"))
  env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  return env


KILLED_EMBED = os.path.join(REPO, "tests", "embed", "killed_embed.py")


def _cmd(args, killed_after_parts: int = 0) -> list[str]:
  if killed_after_parts:  # the test-only entry that dies halfway through the next part
    return [sys.executable, KILLED_EMBED, f"--stop_after_parts={killed_after_parts}", *args]
  return [sys.executable, "-m", "terrafm_jax.embed", *args]


@contextlib.contextmanager
def _persistent_cache(path: str):
  """JAX's persistent compilation cache at `path` for the duration of the block only (then the
  process' previous setting is restored), so that the subprocesses reuse what this process
  compiled (the random init of Mu/8 is most of a run's start-up)."""
  try:
    from jax.experimental.compilation_cache import compilation_cache as cc
  except ImportError:
    yield
    return
  import jax
  keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
  prev = [getattr(jax.config, k) for k in keys]
  jax.config.update(keys[0], path)
  jax.config.update(keys[1], 0.0)
  cc.reset_cache()
  try:
    yield
  finally:
    for k, v in zip(keys, prev):
      jax.config.update(k, v)
    cc.reset_cache()


@pytest.fixture(scope="session")
def model(cli_env):
  from terrafm_jax import api
  with _persistent_cache(cli_env["JAX_COMPILATION_CACHE_DIR"]):
    return api.load(WEIGHTS)


@pytest.fixture(scope="session")
def cli_background(syn_raw, model, cli_env, make_flags, tmp_path_factory):
  """The standard synthetic run through the CLI, started in the background (after `model` has
  filled the compilation cache) so that it runs while the in-process tests do; `cli_out` waits."""
  del model
  root = tmp_path_factory.mktemp("embed_cli")
  out = str(root / "out")
  with open(root / "stdout", "w") as so, open(root / "stderr", "w") as se:
    proc = subprocess.Popen(_cmd(make_flags(syn_raw, out)), cwd=REPO, env=cli_env, stdout=so,
                            stderr=se, text=True)
  yield proc, out, root
  if proc.poll() is None:
    proc.kill()
    proc.wait()


@pytest.fixture(scope="session")
def cli_out(cli_background) -> str:
  proc, out, root = cli_background
  rc = proc.wait(timeout=300)
  if rc != 0:
    pytest.fail(f"the CLI run exited {rc}:\n{(root / 'stderr').read_text()[-6000:]}")
  return out


@pytest.fixture(scope="session")
def cli(cli_env):
  """run(args, expect_rc=0, killed_after_parts=0) -> CompletedProcess of
  `python -m terrafm_jax.embed args` (or of tests/embed/killed_embed.py)."""
  def run(args, expect_rc: int = 0, killed_after_parts: int = 0):
    proc = subprocess.run(_cmd(args, killed_after_parts), cwd=REPO, env=cli_env, capture_output=True, text=True,
                          timeout=300)
    if proc.returncode != expect_rc:
      pytest.fail(f"embed {args} exited {proc.returncode}, expected {expect_rc}:\n"
                  f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc
  return run


@pytest.fixture(scope="session")
def make_flags():
  """(raw, out, **overrides) -> CLI flags of the standard synthetic run (test modules cannot
  import conftest under --import-mode=importlib)."""
  def make(raw: str, out: str, **kw) -> list[str]:
    d = {**SYN_ARGS, **kw}
    return [f"--config.majortom_dir={raw}", f"--config.out={out}",
            f"--config.weights={WEIGHTS}"] + [
        f"--config.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in d.items()]
  return make


@pytest.fixture(scope="session")
def make_opts():
  """(raw, out, **overrides) -> EmbedOptions of the standard synthetic run."""
  from terrafm_jax.embed import EmbedOptions

  def make(raw: str, out: str, **kw):
    return EmbedOptions(majortom_dir=raw, out=out, weights=WEIGHTS, **{**SYN_ARGS, **kw})
  return make
