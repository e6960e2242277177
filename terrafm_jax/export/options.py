"""Options of `terrafm-export` (fields documented in export/config.py)."""
from __future__ import annotations

import dataclasses

FORMATS = ("released", "bundle", "import", "onnx")
# Where each format may take its weights from.
_SOURCES = {"released": ("workdir", "random_init"), "bundle": ("workdir",),
            "import": ("weights",), "onnx": ("weights", "workdir", "random_init")}


@dataclasses.dataclass(frozen=True)
class ExportOptions:
  format: str
  out: str
  workdir: str = ""
  weights: str = ""
  random_init: bool = False
  step: int | None = None
  variant: str | None = None
  img_size: int = 224
  seed: int = 0
  teacher_as_student: bool = False
  pt2: bool = False

  def __post_init__(self):
    if self.format not in FORMATS:
      raise ValueError(f"format must be one of {FORMATS}, got {self.format!r}")
    given = [s for s in ("workdir", "weights", "random_init") if getattr(self, s)]
    allowed = _SOURCES[self.format]
    if len(given) != 1 or given[0] not in allowed:
      raise ValueError(f"format={self.format} takes its weights from exactly one of "
                       f"{', '.join(allowed)}; got {', '.join(given) or 'none'}")
    if not self.out:
      raise ValueError("out is required")
    if self.img_size <= 0:
      raise ValueError(f"img_size must be positive, got {self.img_size}")
    if self.pt2 and self.format != "onnx":
      raise ValueError("pt2 goes with format=onnx")
    if self.teacher_as_student and self.format != "bundle":
      raise ValueError("teacher_as_student goes with format=bundle")
