"""The files next to the prepared shards: index.parquet, contract.json, band_stats.json,
report.json and prepare.json, merged from the units' sidecars."""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Sequence

import numpy as np

from terrafm_jax.data import contract as contract_lib
from terrafm_jax.data import tiling
from terrafm_jax.data.prepare.options import (DATASET_NAME, MAX_REPORTED_ERRORS, VERSION,
                                              PrepareOptions, UnitJob)


def _add_nested(dst: dict[str, dict[str, int]], src: dict[str, dict[str, int]]) -> None:
  for k, d in src.items():
    out = dst.setdefault(k, {})
    for kk, v in d.items():
      out[kk] = out.get(kk, 0) + v


def merge_units(jobs: Sequence[UnitJob]):
  """(index DataFrame, band statistics, report dict, records per unit) of finished units."""
  import pandas as pd  # pylint: disable=g-import-not-at-top
  stats = tiling.new_stats()
  counts: dict[str, int] = {}
  kinds: dict[str, int] = {}
  unavailable: dict[str, dict[str, int]] = {}
  offsets: dict[str, dict[str, int]] = {}
  errors: list[dict[str, Any]] = []
  unavailable_examples: list[dict[str, Any]] = []
  frames, lengths = [], []
  for j in jobs:
    with open(j.stem + ".json", encoding="utf-8") as f:
      info = json.load(f)
    lengths.append(info["num_records"])
    for m, d in info["stats"].items():
      stats[m].merge_arrays(d["n"], d["mean"], d["m2"])
    for src, dst in ((info["counts"], counts), (info["skipped_by_kind"], kinds)):
      for k, v in src.items():
        dst[k] = dst.get(k, 0) + v
    _add_nested(unavailable, info.get("modality_unavailable_by_kind", {}))
    _add_nested(offsets, info["offset_decisions"])
    errors.extend(info["errors"][:MAX_REPORTED_ERRORS - len(errors)])
    unavailable_examples.extend(
        info.get("unavailable", [])[:MAX_REPORTED_ERRORS - len(unavailable_examples)])
    if info["num_records"]:
      frames.append(pd.read_parquet(j.stem + ".index.parquet"))
  index = (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame())
  if len(index):
    index = index.sort_values("tile_index", kind="stable").reset_index(drop=True)
  index.insert(0, "record", np.arange(len(index), dtype=np.int64))
  report = {"counts": counts, "skipped_by_kind": kinds,
            "modality_unavailable_by_kind": unavailable, "offset_decisions": offsets,
            "errors": errors, "unavailable": unavailable_examples}
  return index, stats, report, lengths


def _contract(stats: dict[str, tiling.BandStats], opts: PrepareOptions, where: str):
  c = contract_lib.DEFAULT_CONTRACT
  if opts.stats == "default":
    return c
  for m, s in stats.items():
    if (s.n > 1).all():
      c = c.with_stats(m, s.mean, np.maximum(s.std, 1e-6),
                       f"computed by terrafm_jax.data.prepare over {int(s.n.min())}+ valid "
                       f"pixels per band of {where}")
  return c


def write_extras(path: str, jobs: Sequence[UnitJob], opts: PrepareOptions,
                 plan: dict[str, Any]) -> None:
  """Write the side files of the dataset directory `path`."""
  index, stats, report, _ = merge_units(jobs)
  index.to_parquet(os.path.join(path, "index.parquet"), index=False)
  _contract(stats, opts, plan["folders"]).to_json(os.path.join(path, "contract.json"))
  band_stats = {m: {"bands": list(contract_lib.DEFAULT_CONTRACT[m].bands), "n": s.n.tolist(),
                    "mean": s.mean.tolist(), "std": s.std.tolist()} for m, s in stats.items()}
  with open(os.path.join(path, "band_stats.json"), "w", encoding="utf-8") as f:
    json.dump(band_stats, f, indent=2)
  with open(os.path.join(path, "report.json"), "w", encoding="utf-8") as f:
    json.dump({**report, "plan": plan}, f, indent=2)
  with open(os.path.join(path, "prepare.json"), "w", encoding="utf-8") as f:
    json.dump({"options": dataclasses.asdict(opts), "dataset": DATASET_NAME,
               "version": VERSION, "num_records": int(len(index))}, f, indent=2)
