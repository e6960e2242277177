"""Model size variants, decoded from strings such as "B/16" (size / patch size)."""
from __future__ import annotations

import re

# width (d), depth, heads, MLP hidden size. "Mu" is a tiny CPU variant for tests and smoke runs.
_SIZES: dict[str, tuple[int, int, int, int]] = {
    "Mu": (64, 4, 2, 256),
    "Ti": (192, 12, 3, 768),
    "S": (384, 12, 6, 1536),
    "B": (768, 12, 12, 3072),
    "L": (1024, 24, 16, 4096),
}

# Intermediate layers exported as feature maps for dense heads (the released B uses 3,5,7,11).
DEFAULT_OUT_INDICES: dict[str, tuple[int, ...]] = {
    "Mu": (0, 1, 2, 3),
    "Ti": (3, 5, 7, 11),
    "S": (3, 5, 7, 11),
    "B": (3, 5, 7, 11),
    "L": (5, 11, 17, 23),
}


def decode_variant(variant: str) -> dict[str, int]:
  """"B/16" -> {width, depth, num_heads, mlp_dim, patch_size}; raises ValueError when unknown."""
  m = re.fullmatch(r"(\w+)/(\d+)", variant or "")
  if m is None or m.group(1) not in _SIZES:
    raise ValueError(f"unknown model variant {variant!r}: expected '<size>/<patch>' with size in "
                     f"{sorted(_SIZES)} (e.g. 'B/16')")
  width, depth, heads, mlp = _SIZES[m.group(1)]
  patch = int(m.group(2))
  if patch <= 0:
    raise ValueError(f"variant {variant!r}: patch size must be positive")
  return dict(width=width, depth=depth, num_heads=heads, mlp_dim=mlp, patch_size=patch)


def size_name(variant: str) -> str:
  decode_variant(variant)
  return variant.split("/")[0]
