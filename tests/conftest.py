"""Suite-wide settings, applied before any test module imports jax.

* Cheap LLVM optimisation for every XLA:CPU compilation of the test process (the subprocess
  helpers of tests/train and tests/eval set the same flags): most of the suite's time is
  compiling small programs once, not running them. The numerics are IEEE either way; tests that
  compare runs bit for bit compare runs made under the same flags.
* One persistent compilation cache for the test run, shared by the xdist workers (they share
  their parent process), so a program compiled by one worker is loaded by the other.
"""
from __future__ import annotations

import os
import sys
import tempfile

FAST_COMPILE = ("--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true")

if "jax" not in sys.modules:
  flags = os.environ.get("XLA_FLAGS", "").split()
  names = {f.split("=")[0] for f in flags}
  flags += [f for f in FAST_COMPILE if f.split("=")[0] not in names]
  os.environ["XLA_FLAGS"] = " ".join(flags)
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
      tempfile.gettempdir(), f"terrafm_tests_jaxcache_{os.getppid()}"))
