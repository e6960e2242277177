"""Options of the embedding step, and what of them decides the content of the output."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from terrafm_jax.data import harmonize

MODALITIES = ("s2_l2a", "s1", "s2_l1c", "fused")
RUNNERS = ("local", "beam")
SCHEMA_VERSION = 1
MAX_REPORTED_ERRORS = 200


@dataclasses.dataclass(frozen=True)
class EmbedOptions:
  """Options of `python -m terrafm_jax.embed` (field docs in config.py)."""
  majortom_dir: str
  out: str
  weights: str
  modality: str = "s2_l2a"
  fragment_size: int = 224
  fragment_stride: int = 224
  cover_border: bool = True
  input_size: int = 0                  # 0: fragment size rounded up to the patch size
  batch_size: int = 32
  cells_per_part: int = 40
  rows_per_part: int = 0               # > 0: cells_per_part from the first cell's fragment count
  on_error: str = "error"              # "error" | "skip" (as prepare; "raise" is read as "error")
  runner: str = "local"                # "local" | "beam"
  beam_pipeline_options: str = ""      # comma-separated Beam flags
  max_cells: int | None = None
  align: str = "reproject"             # fused: modalities on another grid ("reproject" | "error")
  offset_threshold: float = harmonize.DETECT_THRESHOLD
  process_index: int = -1              # -1: jax.process_index()
  process_count: int = -1              # -1: jax.process_count()
  prefetch_cells: int = 2              # cells read ahead by the background reader thread
  seed: int = 0                        # random:<variant> weights
  step: int | None = None              # workdir weights
  progress: bool = True

  def __post_init__(self):
    if self.modality not in MODALITIES:
      raise ValueError(f"modality must be one of {MODALITIES}, got {self.modality!r}")
    if self.on_error == "raise":
      object.__setattr__(self, "on_error", "error")  # the spelling of earlier releases
    if self.on_error not in ("error", "skip"):
      raise ValueError(f"on_error must be 'error' or 'skip', got {self.on_error!r}")
    if self.runner not in RUNNERS:
      raise ValueError(f"runner must be one of {RUNNERS}, got {self.runner!r}")
    if self.align not in ("reproject", "error"):
      raise ValueError(f"align must be 'reproject' or 'error', got {self.align!r}")
    for name in ("fragment_size", "fragment_stride", "batch_size", "cells_per_part"):
      if getattr(self, name) <= 0:
        raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
    if self.input_size < 0 or self.rows_per_part < 0:
      raise ValueError("input_size and rows_per_part must be >= 0")
    if self.max_cells is not None and self.max_cells <= 0:
      raise ValueError(f"max_cells must be positive, got {self.max_cells}")
    if (self.process_index < 0) != (self.process_count < 0):
      raise ValueError("give both process_index and process_count, or neither")
    if self.process_count > 0 and not 0 <= self.process_index < self.process_count:
      raise ValueError(f"process_index={self.process_index} is not in [0, "
                       f"{self.process_count})")

  @property
  def modalities(self) -> tuple[str, ...]:
    """The Major-TOM modalities read: one, or for "fused" all three (those a cell has)."""
    return ("s1", "s2_l1c", "s2_l2a") if self.modality == "fused" else (self.modality,)


def content_fingerprint(opts: EmbedOptions, *, input_size: int, cells_per_part: int,
                        cells_digest: str, provenance: dict[str, Any]) -> dict[str, Any]:
  """Everything the written rows depend on. A resume must match it exactly, otherwise finished
  parts would mix two configurations (batch size, workers, runner and process count are free)."""
  d = {"schema_version": SCHEMA_VERSION, "modality": opts.modality,
       "fragment_size": opts.fragment_size, "fragment_stride": opts.fragment_stride,
       "cover_border": opts.cover_border, "input_size": input_size, "align": opts.align,
       "offset_threshold": opts.offset_threshold, "max_cells": opts.max_cells,
       "cells_per_part": cells_per_part, "cells_digest": cells_digest,
       "params_digest": provenance.get("params_digest"),
       "contract_digest": provenance.get("contract_digest"),
       "variant": provenance.get("variant")}
  d["digest"] = hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]
  return d
