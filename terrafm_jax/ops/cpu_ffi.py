"""FFI calls that exist for the CPU platform only, built and registered when XLA:CPU lowers them.

Why (issue #23): choosing the CPU kernels from the host's default backend broke every other
target. A TPU compile on a CPU host got `Custom emitter for terrafm_resample not found`, and a GPU
or TPU process built a C++ library it never used. Here each kernel entry point is a primitive
with a lowering rule for the "cpu" platform only:

* tracing binds the primitive (shapes only): no compiler, no OpenBLAS, nothing loaded;
* lowering for CPU builds the library (ops/cpu_build.py, once per process), registers its FFI targets and emits the
  custom call; where the library can't be built here it lowers `fallback` (the same maths on
  XLA's ops) instead, with one warning;
* lowering for any other platform has no rule, so callers put these calls in the `cpu` branch of
  `jax.lax.platform_dependent`, which lowers only the branch of the platform being compiled for.
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from jax.extend import core as jex_core
from jax.interpreters import batching
from jax.interpreters import mlir



class CpuFfiCall:
  """`call(*args, out_shapes=..., **attrs)` -> tuple of arrays, from FFI target `target`."""

  def __init__(self, target: str, available: Callable[[], bool],
               fallback: Callable[..., tuple[jax.Array, ...]]):
    # available(): builds + registers the library (ops/cpu_build.register); False if it can't.
    # fallback(*args, **attrs) -> tuple of the out_shapes, on XLA's ops.
    self.target, self.available, self.fallback = target, available, fallback
    self.prim = jex_core.Primitive(target)
    self.prim.multiple_results = True
    self.prim.def_abstract_eval(self._abstract_eval)
    self.prim.def_impl(self._impl)
    mlir.register_lowering(self.prim, self._lower_cpu, platform="cpu")
    batching.primitive_batchers[self.prim] = self._batch

  def __call__(self, *args: jax.Array, out_shapes: Sequence[jax.ShapeDtypeStruct], **attrs):
    shapes = tuple(jax.ShapeDtypeStruct(s.shape, s.dtype) for s in out_shapes)
    return tuple(self.prim.bind(*args, out_shapes=shapes, **attrs))

  @staticmethod
  def _abstract_eval(*avals, out_shapes, **attrs):
    del avals, attrs
    return [jax.core.ShapedArray(s.shape, s.dtype) for s in out_shapes]

  def _impl(self, *args, **params):
    # Eager calls compile through the same lowering (on whichever device holds the operands).
    return jax.jit(lambda *a: self.prim.bind(*a, **params))(*args)

  def _batch(self, args, dims, **params):
    """vmap: one call per slice, in order (as ffi_call's vmap_method="sequential")."""
    size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
    moved = [jnp.broadcast_to(a, (size,) + a.shape) if d is None
             else jnp.moveaxis(a, d, 0) for a, d in zip(args, dims)]
    outs = jax.lax.map(lambda xs: tuple(self.prim.bind(*xs, **params)), tuple(moved))
    return list(outs), [0] * len(outs)

  def _lower_cpu(self, ctx, *operands, out_shapes, **attrs):
    if self.available():
      return jax.ffi.ffi_lowering(self.target)(ctx, *operands, **attrs)
    fallback = lambda *a: tuple(self.fallback(*a, **attrs))  # noqa: E731
    del out_shapes
    return mlir.lower_fun(fallback, multiple_results=True)(ctx, *operands)
