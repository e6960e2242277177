"""Mesh, logical-axis rules and the global-array plumbing (DESIGN.md decisions 3 and 4).

The mesh has the named axes ("data", "fsdp", "model"); their sizes come from `config.mesh`
(-1 = whatever is left). Parameters carry logical names (models/), which `config.logical_axis_rules`
maps onto mesh axes. The batch is split over ("data", "fsdp").
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

MESH_AXES: tuple[str, ...] = ("data", "fsdp", "model")
BATCH_AXES: tuple[str, ...] = ("data", "fsdp")


def mesh_shape(mesh_cfg: ml_collections.ConfigDict, num_devices: int) -> tuple[int, ...]:
  """Resolve the one -1 entry; raise a clear error when the sizes do not tile the devices."""
  sizes = [int(mesh_cfg[a]) for a in MESH_AXES]
  if sizes.count(-1) > 1:
    raise ValueError(f"config.mesh: at most one axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
  if any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"config.mesh: sizes must be positive or -1, got "
                     f"{dict(zip(MESH_AXES, sizes))}")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise ValueError(f"config.mesh {dict(zip(MESH_AXES, sizes))}: {num_devices} devices are not "
                       f"divisible by the fixed axes' product {known}")
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ValueError(f"config.mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
                     f"but {num_devices} are available")
  return tuple(sizes)


def make_mesh(mesh_cfg: ml_collections.ConfigDict,
              devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  devices = list(devices) if devices is not None else jax.devices()
  shape = mesh_shape(mesh_cfg, len(devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(shape),
                       devices=devices)


def logical_rules(config: ml_collections.ConfigDict) -> tuple[tuple[str, Any], ...]:
  return tuple((name, tuple(ax) if isinstance(ax, (list, tuple)) else ax)
               for name, ax in config.logical_axis_rules)


def batch_sharding(mesh: jax.sharding.Mesh, ndim: int) -> NamedSharding:
  """Leading (batch) axis split over data x fsdp, the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def _is_box(x) -> bool:
  return isinstance(x, nn.LogicallyPartitioned)


def unbox(tree: Any) -> Any:
  """Plain values of a boxed tree, without the sharding constraint flax's unbox adds (the jit
  out_shardings already fix the layout)."""
  return jax.tree.map(lambda x: x.value if _is_box(x) else x, tree, is_leaf=_is_box)


def _dedupe(names: tuple[Any, ...]) -> tuple[Any, ...]:
  """A logical name may label several dims of one tensor (e.g. a conv kernel's "patch_in"
  spatial and channel dims); only its first occurrence can map to a mesh axis."""
  seen, out = set(), []
  for n in names:
    out.append(None if n is not None and n in seen else n)
    if n is not None:
      seen.add(n)
  return tuple(out)


def tree_shardings(abstract_boxed: Any, mesh: jax.sharding.Mesh,
                   rules: Sequence[tuple[str, Any]]) -> Any:
  """NamedShardings for a tree whose leaves may be `nn.LogicallyPartitioned` boxes.

  Unboxed leaves (step, centers, rng, optimizer counters) are replicated.
  """

  def one(x):
    if _is_box(x):
      names = _dedupe(tuple(x.names))
      mesh_axes = nn.logical_to_mesh_axes(names, rules)
      return NamedSharding(mesh, P(*mesh_axes))
    return NamedSharding(mesh, P())

  return jax.tree.map(one, abstract_boxed, is_leaf=_is_box)


def check_divisible(abstract: Any, shardings: Any) -> None:
  """Name the parameter whose dimension does not split evenly over its mesh axes."""

  def check(path, x, s):
    if not hasattr(x, "shape") or not isinstance(s, NamedSharding):
      return
    for dim, axes in zip(x.shape, s.spec):
      if axes is None:
        continue
      axes = axes if isinstance(axes, tuple) else (axes,)
      n = math.prod(s.mesh.shape[a] for a in axes)
      if dim % n:
        raise ValueError(f"{jax.tree_util.keystr(path)}: dimension {dim} of shape {x.shape} is "
                         f"not divisible by mesh axes {axes} (size {n}); change config.mesh or "
                         f"config.logical_axis_rules")

  jax.tree_util.tree_map_with_path(check, abstract, shardings)


def global_batch(local: Mapping[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
  """Per-process numpy slices -> global jax.Arrays split over the batch axes.

  Each process passes its own rows (leading dim = global batch / process count); the global
  leading dim is the sum over processes.
  """
  out = {}
  for k, v in local.items():
    v = np.asarray(v)
    sharding = batch_sharding(mesh, v.ndim)
    gshape = (v.shape[0] * jax.process_count(),) + v.shape[1:]
    out[k] = jax.make_array_from_process_local_data(sharding, v, gshape)
  return out
