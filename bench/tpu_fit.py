"""Will the paper-scale jobs fit the TPU slices they are for? Compiled here, with libtpu.

  python bench/tpu_fit.py                        # the README table: every row below
  python bench/tpu_fit.py --rows=b16-v5e-64 --search=0

Each row runs the trainer's dry run (`python -m terrafm_jax.train --dry_run=TOPOLOGY`,
train/dry_run.py) in a fresh process: the real abstract state, mesh, batch and step of the
config, compiled by the TPU compiler for that topology on this host, nothing materialised. It
prints whether the step fits, HBM per chip against the chip's capacity, compile time and the mesh;
with --search it doubles the batch per chip until the step no longer fits, so the table also has
the largest power-of-two batch per chip that fits. Writes bench/results/tpu_fit.json.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> (config, topology, global batch, overrides): TerraFM-B/16 at the paper's 1024 and
# TerraFM-L/16 at 2048 (FSDP + remat, configs/terrafm_l.py), each with its config's defaults
# (both scan one rematerialised block). On v5e-256 B/16 has 4 samples per chip, so its modality
# groups take blocks of 4 (the config's 8 does not divide 4).
ROWS = {
    "b16-v5e-64": ("configs/terrafm_b.py", "v5e-64", 1024, ()),
    "b16-v4-32": ("configs/terrafm_b.py", "v4-32", 1024, ()),
    "l16-v5p-128": ("configs/terrafm_l.py", "v5p-128", 2048, ()),
    "b16-v4-128": ("configs/terrafm_b.py", "v4-128", 1024, ()),
    "b16-v5e-256": ("configs/terrafm_b.py", "v5e-256", 1024, ("--config.data.group_block=4",)),
    "b16-v6e-64": ("configs/terrafm_b.py", "v6e-64", 1024, ()),
    "l16-v4-128": ("configs/terrafm_l.py", "v4-128", 2048, ()),
    "l16-v5e-256": ("configs/terrafm_l.py", "v5e-256", 2048, ()),
    "l16-v6e-64": ("configs/terrafm_l.py", "v6e-64", 2048, ()),
}


def dry_run(config: str, topology: str, batch: int, workdir: str, overrides=()) -> dict:
  t0 = time.time()
  out = subprocess.run(
      [sys.executable, "-m", "terrafm_jax.train", f"--config={config}", f"--workdir={workdir}",
       f"--dry_run={topology}", f"--config.global_batch_size={batch}", *overrides],
      capture_output=True, text=True, cwd=_ROOT, check=False)
  text = out.stdout + out.stderr
  row = {"config": config, "topology": topology, "global_batch": batch, "rc": out.returncode,
         "wall_s": round(time.time() - t0, 1), "overrides": list(overrides)}
  m = re.search(r"dry run: (\S+) \((\d+) x ([^)]+)\), mesh (\{[^}]*\})", text)
  if m:
    row.update(topology=m.group(1), chips=int(m.group(2)), device_kind=m.group(3),
               mesh=m.group(4))
  m = re.search(r"= ([\d.]+) GiB of ([\d.]+) GiB", text)
  if m:
    row.update(hbm_per_chip_gib=float(m.group(1)), capacity_gib=float(m.group(2)))
  m = re.search(r"compiled in ([\d.]+) s", text)
  if m:
    row["compile_s"] = float(m.group(1))
  row["fits"] = out.returncode == 0
  if out.returncode not in (0, 4) and "RESOURCE_EXHAUSTED" not in text:
    row["error"] = text.strip().splitlines()[-1] if text.strip() else f"rc {out.returncode}"
  return row


_RESULTS = os.path.join(_ROOT, "bench", "results", "tpu_fit.json")


def _load() -> dict:
  if not os.path.exists(_RESULTS):
    return {}
  with open(_RESULTS) as f:
    return {r["row"]: r for r in json.load(f).get("rows", [])}


def _save(results) -> None:
  """Rows of earlier runs that this one did not repeat are kept (one file for the whole table)."""
  rows = _load()
  rows.update({r["row"]: r for r in results})
  os.makedirs(os.path.dirname(_RESULTS), exist_ok=True)
  with open(_RESULTS, "w") as f:
    json.dump({"host": os.uname().nodename, "cpus": os.cpu_count(),
               "rows": [rows[k] for k in ROWS if k in rows]}, f, indent=1)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated of {', '.join(ROWS)}")
  p.add_argument("--search", type=int, default=1,
                 help="1: double the batch per chip until it no longer fits")
  p.add_argument("--max_per_chip", type=int, default=128)
  p.add_argument("--workdir", default="/tmp/terrafm_tpu_fit")
  p.add_argument("--reuse", type=int, default=0,
                 help="1: take each row's own compile from bench/results/tpu_fit.json when it is "
                      "there (same config, batch and overrides) and only run the search")
  args = p.parse_args()
  stored = _load()
  results = []
  for name in args.rows.split(","):
    config, topology, batch, overrides = ROWS[name]
    old = stored.get(name)
    if (args.reuse and old and old["config"] == config and old["global_batch"] == batch
        and old["overrides"] == list(overrides)):
      row = dict(old)
    else:
      row = dry_run(config, topology, batch, args.workdir, overrides)
    row["row"] = name
    if args.search and row["fits"] and row.get("chips"):
      per_chip, largest = batch // row["chips"], batch // row["chips"]
      while per_chip * 2 <= args.max_per_chip:
        per_chip *= 2
        probe = dry_run(config, topology, per_chip * row["chips"], args.workdir, overrides)
        row.setdefault("probes", []).append(
            {k: probe.get(k) for k in ("global_batch", "fits", "hbm_per_chip_gib", "compile_s",
                                       "error")})
        if not probe["fits"]:
          break
        largest = per_chip
      row["largest_per_chip"] = largest
      # A probe that failed for another reason than memory leaves the figure a lower bound.
      row["largest_is_bound"] = bool(row["probes"][-1].get("error")) or (
          row["probes"][-1]["fits"])
    results.append(row)
    print(json.dumps(row), flush=True)
    _save(results)  # after every row: a full table takes hours on a small host
  print("\n| job | slice (chips) | mesh | fits | HBM per chip | largest batch per chip | compile |")
  print("|---|---|---|---|---|---|---|")
  for r in results:
    print(f"| {os.path.basename(r['config'])} @ {r['global_batch']} | {r['topology']} "
          f"({r.get('chips', '?')}) | {r.get('mesh', '?')} | {'yes' if r['fits'] else 'no'} | "
          f"{r.get('hbm_per_chip_gib', '?')} / {r.get('capacity_gib', '?')} GiB | "
          f"{_largest(r)} | {r.get('compile_s', '?')} s |")


def _largest(r: dict) -> str:
  if "largest_per_chip" not in r:
    return "-"
  return f"{'>= ' if r.get('largest_is_bound') else ''}{r['largest_per_chip']}"


if __name__ == "__main__":
  main()
