"""The trainer's console lines: the progress line of each log interval and the parameter summary.

Everything else (every metric of every logged step, library log lines) goes to TensorBoard,
metrics.jsonl and `<workdir>/train.log` (terrafm_jax/console.py), not to the console.
"""
from __future__ import annotations

import collections
import math
from typing import Any, Mapping

import jax

# The console every entry point shares (terrafm_jax/console.py); the trainer's lines below.
from terrafm_jax.console import PREFIX, say

__all__ = ["PREFIX", "say", "progress_line", "parameter_summary"]


def _duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(round(seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def progress_line(step: int, total: int, scalars: Mapping[str, float], num_devices: int,
                  steps_per_sec: float) -> str:
  """`step 120/960 (12%) | loss 3.214 | teacher entropy 2.10 | lr 4.86e-04 | 118 img/s | ETA 2m10s`"""
  parts = [f"step {step}/{total} ({100 * step / max(total, 1):.0f}%)"]
  if "loss" in scalars:
    parts.append(f"loss {scalars['loss']:.4g}")
  if "teacher_entropy" in scalars:
    parts.append(f"teacher entropy {scalars['teacher_entropy']:.3g}")
  if "lr" in scalars:
    parts.append(f"lr {scalars['lr']:.3g}")
  if "img_per_sec_per_device" in scalars:
    parts.append(f"{scalars['img_per_sec_per_device'] * num_devices:.4g} img/s")
  eta = (total - step) / steps_per_sec if steps_per_sec > 0 else float("inf")
  parts.append(f"ETA {_duration(eta)}")
  return " | ".join(parts)


def parameter_summary(params: Any, name: str) -> str:
  """`student: 0.42 M parameters (encoder/patch_embed 0.20 M, encoder/blocks 0.15 M, ...)`."""
  counts: dict[str, int] = collections.OrderedDict()
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    keys = jax.tree_util.keystr(path, simple=True, separator="/").split("/")
    if keys[0] == "encoder" and len(keys) > 1:
      sub = keys[1]
      sub = "blocks" if sub.startswith("blocks_") else (
          "cls+pos" if sub in ("cls_token", "pos_embed") else sub)
      group = f"encoder/{sub}"
    else:
      group = keys[0]
    counts[group] = counts.get(group, 0) + int(math.prod(leaf.shape))
  total = sum(counts.values())
  by = ", ".join(f"{k} {v / 1e6:.2f} M" for k, v in counts.items())
  return f"{name}: {total / 1e6:.2f} M parameters ({by})"
