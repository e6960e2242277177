"""Which JAX platforms a terrafm-jax process starts, when the user has not said.

Why (issue #23): the test extra installs libtpu (for the TPU compile test and the dry run). With
libtpu installed on a machine without a TPU, every JAX start first tries the TPU backend: libtpu
prints about eight lines of TPU_ACCELERATOR_TYPE / TPU_WORKER_HOSTNAMES errors and takes a
process-wide lock file, so a second JAX process on the same machine fails to start it. The
entry points (train, eval, embed, export) and the test suite call `quiet_libtpu_without_tpu()`
first: when libtpu is installed, no TPU chip is attached and neither JAX_PLATFORMS nor
`jax_platforms` is set, it restricts JAX to CPU (and CUDA where a CUDA plugin is installed).
A TPU VM, or a user's explicit JAX_PLATFORMS, is left alone. Compiling *for* a TPU topology
(`jax.experimental.topologies`, train/dry_run.py) loads libtpu as a compiler and works either way.
"""
from __future__ import annotations

import glob
import importlib.util
import logging
import os

_log = logging.getLogger(__name__)

# Device files of attached TPU chips: /dev/accel* (v2-v5e), /dev/vfio/<n> (v5p, v6e).
_TPU_DEVICE_GLOBS = ("/dev/accel*", "/dev/vfio/[0-9]*")


def tpu_attached() -> bool:
  return any(glob.glob(pattern) for pattern in _TPU_DEVICE_GLOBS)


def _installed(module: str) -> bool:
  try:
    return importlib.util.find_spec(module) is not None
  except (ImportError, ValueError):
    return False


def platforms_without_tpu() -> str | None:
  """"cpu" (or "cuda,cpu") when libtpu is installed, no TPU is attached and JAX_PLATFORMS is
  unset; None otherwise. Reads no JAX state (tests/conftest.py uses it for the environment)."""
  if os.environ.get("JAX_PLATFORMS") or os.environ.get("JAX_FORCE_TPU_INIT"):
    return None
  if not _installed("libtpu") or tpu_attached():
    return None
  cuda = _installed("jax_cuda12_plugin") or _installed("jax_cuda13_plugin")
  return "cuda,cpu" if cuda else "cpu"


def quiet_libtpu_without_tpu() -> str | None:
  """Set `jax_platforms` to the non-TPU platforms if libtpu is installed but no TPU is attached
  and the user chose nothing; returns the value set (None when left alone). Call before the
  first JAX computation."""
  platforms = platforms_without_tpu()
  if platforms is None:
    return None
  import jax  # pylint: disable=g-import-not-at-top
  if jax.config.jax_platforms:
    return None
  jax.config.update("jax_platforms", platforms)
  _log.debug("libtpu is installed but no TPU is attached: jax_platforms=%s", platforms)
  return platforms
