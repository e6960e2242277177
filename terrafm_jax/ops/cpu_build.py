"""Build, cache and register the project's XLA:CPU FFI kernels (`*.cc` beside this file).

A kernel is compiled once per machine with the system C++ compiler against the FFI headers that
ship with jaxlib and OpenBLAS from the `scipy-openblas32` wheel, then cached under
`$TERRAFM_KERNEL_CACHE` (default `$XDG_CACHE_HOME/terrafm_jax/kernels`, i.e. ~/.cache/...). The
cache key hashes the source, the compiler command and version, the C library (glibc) version and
the jaxlib / OpenBLAS versions, so an upgrade of any of them rebuilds (a home folder shared by
machines with different toolchains keeps one build per toolchain). Concurrent processes (pytest workers, the hosts of a local multi-process run)
each write to a private temporary file and rename it into place, so no one loads a half-written
library.

Nothing here runs off the CPU: `register` is called by the CPU lowering rule of the kernels'
primitives (ops/cpu_ffi.py), so a TPU or GPU compile never starts the C++ compiler or imports
OpenBLAS. Where no compiler or OpenBLAS is available the CPU lowering falls back to XLA's own ops
(with one warning).
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.metadata
import logging
import os
import pathlib
import platform
import shutil
import subprocess
import tempfile

import jax
import jax.numpy as jnp

_SOURCE_DIR = pathlib.Path(__file__).resolve().parent
_log = logging.getLogger(__name__)


class KernelBuildError(RuntimeError):
  """The kernel could not be compiled or loaded (the message has the compiler's output)."""


def cache_dir() -> pathlib.Path:
  root = os.environ.get("TERRAFM_KERNEL_CACHE")
  if root:
    return pathlib.Path(root)
  xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return pathlib.Path(xdg) / "terrafm_jax" / "kernels"


def _compile_command(source: pathlib.Path, output: pathlib.Path) -> list[str]:
  try:
    import scipy_openblas32 as openblas
  except ImportError as e:
    raise KernelBuildError("the scipy-openblas32 package is not installed") from e
  compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
  if not compiler:
    raise KernelBuildError("no C++ compiler found (set CXX or install g++)")
  lib_dir = openblas.get_lib_dir()
  # -fopenmp-simd: the `omp simd` loops (and glibc's vector expf) vectorise without OpenMP's
  # runtime. No -ffast-math: it would change the numerics and, on GCC < 13, set flush-to-zero for
  # the whole process when the library loads.
  return [compiler, "-O3", "-std=c++17", "-shared", "-fPIC", "-fopenmp-simd", "-fno-math-errno",
          *_arch_flags(), str(source), f"-I{_SOURCE_DIR}", f"-I{jax.ffi.include_dir()}", f"-I{openblas.get_include_dir()}",
          f"-L{lib_dir}", f"-l{openblas.get_library()}", f"-Wl,-rpath,{lib_dir}", "-o", str(output)]


def _arch_flags() -> list[str]:
  """AVX2 + FMA code where this CPU has them. The flags are part of the cache key, so machines
  of different CPU types that share a home folder keep separate builds."""
  if platform.machine() not in ("x86_64", "AMD64"):
    return []
  try:
    flags = set(pathlib.Path("/proc/cpuinfo").read_text().split())
  except OSError:
    return []
  return ["-march=x86-64-v3"] if {"avx2", "fma", "bmi2"} <= flags else []


def _versions(compiler: str) -> str:
  packages = ";".join(f"{p}={importlib.metadata.version(p)}" for p in ("jaxlib", "scipy-openblas32"))
  return f"{packages};cc={_compiler_version(compiler)};libc={'-'.join(platform.libc_ver())}"


@functools.cache
def _compiler_version(compiler: str) -> str:
  try:
    done = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=False,
                          timeout=60)
  except (OSError, subprocess.TimeoutExpired) as e:
    raise KernelBuildError(f"{compiler} --version failed: {e}") from e
  return done.stdout.strip().splitlines()[0] if done.stdout.strip() else f"rc={done.returncode}"


def _build(source: pathlib.Path, target: pathlib.Path) -> None:
  target.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}-", suffix=".so", dir=target.parent)
  os.close(fd)
  try:
    _log.info("compiling the CPU kernel %s -> %s", source.name, target)
    done = subprocess.run(_compile_command(source, pathlib.Path(tmp)), capture_output=True,
                          text=True, check=False)
    if done.returncode:
      raise KernelBuildError(f"compiling {source} failed:\n{done.stderr[-4000:]}")
    os.replace(tmp, target)  # atomic: a concurrent process sees no file or a whole one
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


@functools.cache
def load(name: str) -> ctypes.CDLL:
  """The compiled kernel `name` (`name.cc` here), built on first use; KernelBuildError if it can't be."""
  source = _SOURCE_DIR / f"{name}.cc"
  probe = _compile_command(source, pathlib.Path("OUT"))
  headers = b"".join(h.read_bytes() for h in sorted(_SOURCE_DIR.glob("*.h")))
  key = hashlib.sha256(source.read_bytes() + headers + repr(probe).encode()
                       + _versions(probe[0]).encode()).hexdigest()
  target = cache_dir() / f"{name}-{key[:16]}.so"
  if not target.exists():
    try:
      _build(source, target)
    except OSError as e:  # an unwritable cache folder, a compiler that can't start
      raise KernelBuildError(f"building {target} from {source} failed: {e}") from e
  try:
    return ctypes.cdll.LoadLibrary(str(target))
  except OSError as e:
    raise KernelBuildError(f"loading {target} failed: {e}") from e


def float32(*arrays: jax.Array) -> bool:
  """All float32: the only dtype the kernels here take (the platform is chosen at lowering)."""
  return all(x.dtype == jnp.float32 for x in arrays)


@functools.cache
def register(name: str, targets: tuple[tuple[str, str], ...]) -> bool:
  """Build and load kernel `name`, register its (XLA target, exported symbol) handlers for the CPU
  platform; True when done, False with one warning when the kernel can't be built here. Called
  while lowering for CPU (ops/cpu_ffi.py), never while tracing."""
  try:
    lib = load(name)
  except KernelBuildError as e:
    _log.warning("CPU kernel %s unavailable, using XLA's ops instead: %s", name, e)
    return False
  for target, symbol in targets:
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
  return True
