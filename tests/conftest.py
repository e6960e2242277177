"""Suite-wide settings, applied before any test module imports jax.

* JAX_PLATFORMS=cpu where libtpu is installed without a TPU (terrafm_jax/platforms.py).
* Cheap LLVM optimisation for every XLA:CPU compilation of the test process (the subprocess
  helpers of tests/train and tests/eval pass these XLA_FLAGS on): most of the suite's time is
  compiling small programs once, not running them. The numerics are IEEE either way; tests that
  compare runs bit for bit compare runs made under the same flags.
* One persistent compilation cache for the test run, shared by the xdist workers (they share
  their parent process) and by every subprocess they start (they inherit the variable), so a
  program compiled once is loaded everywhere else.
* `shared_artifact`: a folder (a trained workdir, an export) built once per test run, whichever
  worker asks first.
* Longest tests first (LONGEST_FIRST, from `--durations`): launch/run.sh sends xdist workers one
  test at a time (--maxschedchunk=1), so the two workers finish together instead of one of them
  running a long subprocess test alone at the end.
"""
from __future__ import annotations

import fcntl
import os
import sys
import tempfile

import pytest

from terrafm_jax import platforms

FAST_COMPILE = ("--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true")

if "jax" not in sys.modules:
  flags = os.environ.get("XLA_FLAGS", "").split()
  names = {f.split("=")[0] for f in flags}
  flags += [f for f in FAST_COMPILE if f.split("=")[0] not in names]
  os.environ["XLA_FLAGS"] = " ".join(flags)
# libtpu (the test extra) on a machine without a TPU: CPU only, for this process and the
# subprocesses the tests start (terrafm_jax/platforms.py says why).
_platforms = platforms.platforms_without_tpu()
if _platforms:
  os.environ["JAX_PLATFORMS"] = _platforms
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    tempfile.gettempdir(), f"terrafm_tests_jaxcache_{os.getppid()}"))



# Node-id prefixes, longest first. The runs that build a shared artifact (the resume tests'
# uninterrupted run, tests/eval's trained workdir) come early so that no worker waits for one.
LONGEST_FIRST = (
    "tests/train/test_multihost.py::",
    "tests/train/test_cloud_workdir.py::",
    "tests/train/test_resume.py::test_exact_resume_after_sigkill",
    "tests/eval/test_console_report.py::",
    "tests/train/test_preemption.py::",
    "tests/train/test_resume.py::",
    "tests/export/test_torch_parity.py::test_base_released_layout_parity_against_float64",
    "tests/data/test_modality_groups.py::test_grouped_patch_embedding_equals_masked_path",
    "tests/train/test_step_sharding_hlo.py::",
    "tests/train/test_dry_run.py::",
    "tests/train/test_bf16.py::",
    "tests/notebooks/",
)


def pytest_collection_modifyitems(items):
  def rank(item):
    for i, prefix in enumerate(LONGEST_FIRST):
      if item.nodeid.startswith(prefix):
        return i
    return len(LONGEST_FIRST)

  items.sort(key=rank)  # stable: the rest keeps pytest's order


@pytest.fixture(scope="session")
def shared_artifact(tmp_path_factory):
  """shared_artifact(name, build) -> path: `build(path)` runs once per test run even with several
  xdist workers (they share the parent of their base temp folder; a file lock makes the others
  wait and reuse the result)."""
  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent

  def get(name: str, build) -> str:
    target = str(root / name)
    with open(target + ".lock", "w", encoding="utf-8") as lock:
      fcntl.flock(lock, fcntl.LOCK_EX)
      if not os.path.exists(target + ".done"):
        build(target)
        open(target + ".done", "w").close()
    return target

  return get
