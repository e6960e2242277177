"""One config style for every entry point: an ml_collections schema derived from an options
dataclass, overridden on the command line as `--config.<field>=value`.

The dataclass stays the one place where a default is written; `schema()` reads the defaults and
the types from it (a field without a default, or with None, becomes a typed placeholder that the
command line can fill), and `build()` turns the overridden config back into the dataclass, where
its own checks run. Package-level and below every layer: it imports nothing from terrafm_jax.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Mapping

import ml_collections
from ml_collections import config_dict


def _base_type(hint) -> type:
  """int for `int`, `int | None`, `Optional[int]`; tuple for `tuple[str, ...]`."""
  origin = typing.get_origin(hint)
  if origin in (typing.Union, types.UnionType):
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return _base_type(args[0]) if len(args) == 1 else object
  return origin or hint


def schema(cls, **extra: Any) -> ml_collections.ConfigDict:
  """The fields of dataclass `cls` with their defaults; `extra` adds entry-point-only fields
  (a value, or a type for a required one)."""
  hints = typing.get_type_hints(cls)
  c = ml_collections.ConfigDict()
  for f in dataclasses.fields(cls):
    if f.default is not dataclasses.MISSING:
      default = f.default
    elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
      default = f.default_factory()  # type: ignore[misc]
    else:
      default = None
    c[f.name] = (config_dict.placeholder(_base_type(hints[f.name])) if default is None
                 else default)
  for name, value in extra.items():
    c[name] = config_dict.placeholder(value) if isinstance(value, type) else value
  return c


def build(cls, cfg: Mapping[str, Any] | ml_collections.ConfigDict, *,
          required: tuple[str, ...] = ()):
  """`cls(**fields of cfg)`; ValueError naming `--config.<name>` for a missing required field
  (the dataclass' own checks raise theirs)."""
  values = cfg.to_dict() if isinstance(cfg, ml_collections.ConfigDict) else dict(cfg)
  for name in required:
    if values.get(name) in (None, ""):
      raise ValueError(f"--config.{name} is required")
  kwargs = {}
  for f in dataclasses.fields(cls):
    if f.name in values:
      v = values[f.name]
      kwargs[f.name] = tuple(v) if isinstance(v, list) else v
  return cls(**kwargs)
