"""The rename + transpose table between Flax parameter paths and PyTorch state_dict keys.

Encoder paths map 1:1 to the released keys (METHOD.md 1.6): "/" becomes ".", "blocks_3" becomes
"blocks.3", kernels are transposed (Dense (in,out) -> (out,in); Conv HWIO -> OIHW) and LayerNorm
"scale" becomes "weight". Training-only parameters (fusion, DINO head) use the same rules; the DINO
head's weight-normalised last layer is written as DINO writes it (`weight_v`, `weight_g` = 1).
"""
from __future__ import annotations

import re
from typing import Callable

import numpy as np

Path = tuple[str, ...]

# Parameters of the encoder that are not part of the released checkpoint.
TRAINING_ONLY_PREFIXES: tuple[Path, ...] = (("patch_embed", "fusion"),)

_INDEXED = re.compile(r"(blocks|mlp)_(\d+)$")


def is_training_only(path: Path) -> bool:
  return any(path[:len(p)] == p for p in TRAINING_ONLY_PREFIXES)


def _torch_component(name: str, in_head: bool) -> str:
  m = _INDEXED.match(name)
  if m is None:
    return name
  base, idx = m.group(1), int(m.group(2))
  if base == "mlp" and in_head:
    return f"mlp.{2 * idx}"  # DINO's nn.Sequential(Linear, GELU, Linear, GELU, Linear)
  return f"{base}.{idx}"


def to_torch(path: Path, value: np.ndarray, *, in_head: bool = False) -> dict[str, np.ndarray]:
  """One Flax leaf -> {torch key: array} (one leaf can give two keys: weight_v and weight_g)."""
  *mods, leaf = path
  prefix = ".".join(_torch_component(m, in_head) for m in mods)
  join = (lambda s: f"{prefix}.{s}" if prefix else s)
  value = np.asarray(value)
  if in_head and leaf == "last_layer":
    v = np.ascontiguousarray(value.T)  # (K, bottleneck)
    return {join("last_layer.weight_v"): v,
            join("last_layer.weight_g"): np.ones((v.shape[0], 1), v.dtype)}
  if leaf == "kernel":
    if value.ndim == 4:
      return {join("weight"): np.ascontiguousarray(value.transpose(3, 2, 0, 1))}
    if value.ndim == 2:
      return {join("weight"): np.ascontiguousarray(value.T)}
    raise ValueError(f"unexpected kernel rank {value.ndim} at {'/'.join(path)}")
  if leaf == "scale":
    return {join("weight"): value}
  return {join(leaf): value}


def from_torch(path: Path, shape: tuple[int, ...], *, in_head: bool = False
               ) -> tuple[str, tuple[int, ...], Callable[[np.ndarray], np.ndarray]]:
  """The torch key a Flax leaf comes from, the torch shape expected, and the inverse transform."""
  *mods, leaf = path
  probe = to_torch(path, np.zeros(shape, np.float32), in_head=in_head)
  if in_head and leaf == "last_layer":
    key = next(k for k in probe if k.endswith("weight_v"))
    return key, probe[key].shape, lambda a: np.ascontiguousarray(a.T)
  (key, arr), = probe.items()
  if leaf == "kernel" and len(shape) == 4:
    return key, arr.shape, lambda a: np.ascontiguousarray(a.transpose(2, 3, 1, 0))
  if leaf == "kernel":
    return key, arr.shape, lambda a: np.ascontiguousarray(a.T)
  return key, arr.shape, lambda a: a
