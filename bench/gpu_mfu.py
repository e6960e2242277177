"""TerraFM-B train step on one accelerator: bf16, the largest batch that fits, img/s and MFU.

  python bench/gpu_mfu.py                       # B/16, batches 32, 64, 128, ... until OOM
  python bench/gpu_mfu.py --variant=L/16 --start=16 --max_batch=256

Each batch size runs bench/train_step.py in a fresh process (the project's real jitted, donated
step: random tiles, the paper crops 2 x 224 + 6 x 96, K = 65,536, modality groups over all three
modalities, model.dtype=bfloat16, fp32 params and optimizer), doubling from --start until the
compile or the first step runs out of memory. Prints step time, img/s, TFLOP/s and MFU from the
honest FLOP count (metrics.step_flops: what the step runs, per modality group) against the peak of
metrics.PEAK_FLOPS (H100/H200: 989 TFLOP/s dense bf16), and writes bench/results/gpu_mfu.json.
Target (issue #9): >= 45 % MFU on an H100/H200-class GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(_ROOT, "bench"))

import step_runner  # noqa: E402  (bench/ helper)


def run(args, batch: int) -> dict | None:
  flags = [f"--config.global_batch_size={batch}", "--config.model.dtype=bfloat16",
           f"--config.data.group_block={min(batch, 64)}",
           f"--config.data.builtin.tile_size={args.tile_size}"]
  try:
    return step_runner.run_train_step(args.variant, flags, args.steps, what=f"batch {batch}")
  except step_runner.OutOfMemory:
    return None


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--variant", default="B/16")
  p.add_argument("--start", type=int, default=32)
  p.add_argument("--max_batch", type=int, default=1024)
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--tile_size", type=int, default=256, help="random tile size (px)")
  p.add_argument("--out", default=os.path.join(_ROOT, "bench", "results", "gpu_mfu.json"))
  args = p.parse_args()
  rows, batch = [], args.start
  while batch <= args.max_batch:
    r = run(args, batch)
    if r is None:
      print(f"batch {batch}: out of memory; stopping", flush=True)
      break
    rows.append(r)
    mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a (unknown peak)"
    print(f"{r['device_kind']} batch {batch}: {r['step_s'] * 1e3:.1f} ms/step, "
          f"{r['img_per_s_per_device']:.1f} img/s, {r['tflops_per_device']:.1f} TFLOP/s, MFU {mfu}, "
          f"temp {r['memory_gib'].get('temp_size_gib', 0):.1f} GiB", flush=True)
    batch *= 2
  if not rows:
    raise SystemExit(f"batch {args.start} already runs out of memory; try --start smaller")
  best = max(rows, key=lambda r: r["img_per_s_per_device"])
  print(f"best: batch {best['global_batch']}, {best['img_per_s_per_device']:.1f} img/s, MFU "
        f"{best['mfu']}")
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w", encoding="utf-8") as f:
    json.dump({"settings": vars(args), "rows": rows, "best": best}, f, indent=1)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
