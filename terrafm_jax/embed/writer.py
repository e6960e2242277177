"""Output folder of an embedding run: parts written atomically, resume, manifest and report.

  <out>/part_00000-00039.parquet   one part per run of cells (plan.py), GeoParquet
  <out>/_embed.json                manifest: the content fingerprint (options, weights, cell list)
  <out>/_parts/part_*.json         per part: counts and skipped cells (written before the part)
  <out>/_report.json               counts merged over every finished part

A part is written under a hidden temporary name (`.part_....parquet.tmp-<pid>`) and renamed when
complete, so a killed run never leaves a half-written part under its final name; the final name is
the only "done" marker. Side files start with "_" and temporaries with ".", which pyarrow's dataset
discovery skips: `geopandas.read_parquet(out)` reads the whole expansion.
"""
from __future__ import annotations

import glob
import json
import os
from typing import Any, Iterable, Mapping

import pyarrow.parquet as pq

from terrafm_jax.embed.options import MAX_REPORTED_ERRORS
from terrafm_jax.embed.plan import PartJob

MANIFEST = "_embed.json"
REPORT = "_report.json"
SIDECARS = "_parts"


def _atomic_json(path: str, obj: Any) -> None:
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=2, sort_keys=True, default=str)
  os.replace(tmp, path)


class PartWriter:
  """Writes and recognises the finished parts of one output folder."""

  def __init__(self, out: str):
    self.out = os.path.abspath(out)
    os.makedirs(os.path.join(self.out, SIDECARS), exist_ok=True)

  def path(self, part: PartJob) -> str:
    return os.path.join(self.out, part.name)

  def sidecar(self, part: PartJob) -> str:
    return os.path.join(self.out, SIDECARS, part.name.replace(".parquet", ".json"))

  def done(self, part: PartJob) -> bool:
    return os.path.exists(self.path(part))

  def check_manifest(self, fingerprint: Mapping[str, Any], extra: Mapping[str, Any]) -> None:
    """Write the manifest, or check that an existing one was made with the same content options.

    Every process writes identical content, so concurrent writers are harmless."""
    path = os.path.join(self.out, MANIFEST)
    if os.path.exists(path):
      with open(path, encoding="utf-8") as f:
        old = json.load(f).get("fingerprint", {})
      if old.get("digest") != fingerprint["digest"]:
        diff = sorted(k for k in set(old) | set(fingerprint)
                      if k != "digest" and old.get(k) != fingerprint.get(k))
        what = "; ".join(f"{k}: {old.get(k)!r} there, {fingerprint.get(k)!r} now"
                         for k in diff) or "digest differs"
        raise ValueError(
            f"{self.out} holds embeddings made with other options, weights or cells ({what}); "
            "resume with the original options or write to a new --out")
      return
    _atomic_json(path, {"fingerprint": dict(fingerprint), **extra})

  def clean_stale(self, parts: Iterable[PartJob]) -> int:
    """Remove temporaries of `parts` (this process' own) left by a killed run."""
    n = 0
    for p in parts:
      for tmp in glob.glob(os.path.join(self.out, f".{p.name}.tmp-*")):
        os.remove(tmp)
        n += 1
    return n

  def write(self, part: PartJob, table, result: Mapping[str, Any]) -> None:
    """Sidecar first, then the part under a temporary name, then the rename that marks it done."""
    _atomic_json(self.sidecar(part), {"part": part.name, "first_cell": part.first,
                                      "last_cell": part.last, **result})
    tmp = os.path.join(self.out, f".{part.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, self.path(part))


def merge_report(out: str, parts: Iterable[PartJob]) -> dict[str, Any]:
  """Counts summed over the finished parts among `parts` (those with a final name)."""
  counts: dict[str, int] = {}
  nested: dict[str, dict[str, Any]] = {}
  errors: list[dict[str, Any]] = []
  finished = 0
  for p in parts:
    side = os.path.join(out, SIDECARS, p.name.replace(".parquet", ".json"))
    if not (os.path.exists(os.path.join(out, p.name)) and os.path.exists(side)):
      continue
    finished += 1
    with open(side, encoding="utf-8") as f:
      info = json.load(f)
    for k, v in info.get("counts", {}).items():
      counts[k] = counts.get(k, 0) + v
    for key in ("skipped_by_kind", "fragments_dropped_by_kind", "modality_unavailable_by_kind",
                "offset_decisions"):
      _add_nested(nested.setdefault(key, {}), info.get(key, {}))
    errors.extend(info.get("errors", [])[:MAX_REPORTED_ERRORS - len(errors)])
  return {"parts_finished": finished, "counts": counts, **nested, "errors": errors}


def _add_nested(dst: dict[str, Any], src: Mapping[str, Any]) -> None:
  for k, v in src.items():
    if isinstance(v, Mapping):
      _add_nested(dst.setdefault(k, {}), v)
    else:
      dst[k] = dst.get(k, 0) + v


def write_report(out: str, report: Mapping[str, Any]) -> None:
  _atomic_json(os.path.join(out, REPORT), report)
