"""Run an FFI kernel per device under the mesh in scope (the SPMD partitioner can't split an opaque
custom call: left to it, the operands would be gathered onto every device).

`per_device(fn, args, axes, out_axes)` calls `fn(*args)` directly when no mesh (or a one-device
mesh) is in scope, and inside `jax.shard_map` over the mesh axes that the logical rules in scope
(`flax.linen.logical_axis_rules`) give each argument's logical axis names otherwise. It returns
None when that is impossible (no rules in scope, or a dimension the rules' mesh axes don't divide),
and the caller then uses its XLA form.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import flax.linen as nn
import jax


def _spec(names: Sequence[str | None], shape, mesh) -> jax.sharding.PartitionSpec | None:
  spec = nn.logical_to_mesh_axes(tuple(names))
  for dim, entry in zip(shape, spec):
    mesh_axes = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
    if dim % math.prod(mesh.shape[a] for a in mesh_axes):
      return None
  return spec


def per_device(fn: Callable, args: Sequence[jax.Array], axes: Sequence[Sequence[str | None]],
               out_axes: Sequence[str | None]):
  """fn(*args), per device when a multi-device mesh is in scope; None if it can't be split."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return fn(*args)
  specs = [_spec(names, a.shape, mesh) for names, a in zip(axes, args)]
  if any(s is None for s in specs) or all(all(e is None for e in s) for s in specs):
    return None  # uneven, or no rules in scope (per-device work would need a gather first)
  out_spec = nn.logical_to_mesh_axes(tuple(out_axes))
  return jax.shard_map(fn, in_specs=tuple(specs), out_specs=out_spec, check_vma=False)(*args)
