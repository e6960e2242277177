"""Weak scaling on simulated CPU devices: the same per-device batch on 1, 2, 4 and 8 devices.

  python bench/scaling.py                                   # Ti/16, 4 images per device
  python bench/scaling.py --variant=S/16 --per_device=2 --devices=1,2,4,8

Each point is a fresh process running bench/train_step.py with
XLA_FLAGS=--xla_force_host_platform_device_count=N, mesh data=N and global batch N x --per_device
(the project's real step: random tiles, paper crops scaled by --crop_scale, modality groups with
one block per device). On a CPU host every simulated device shares the same cores, so the ideal is
step time proportional to N (constant time per image): "overhead" = step time / (N x the 1-device
step time) - 1 is what sharding adds (collectives, per-device copies). The 1 -> 2 step also holds
XLA:CPU's threading change (one device's ops use both cores; several simulated devices run their
programs side by side), so the overhead against 2 devices is printed too. Compile time and the
compiled step's memory_analysis() per device are printed beside it; the table is also written as
JSON (--out).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(_ROOT, "bench"))

import step_runner  # noqa: E402  (bench/ helper)


def run_point(args, n: int) -> dict:
  g = int(224 * args.crop_scale) // 16 * 16
  loc = max(int(96 * args.crop_scale) // 16 * 16, 16)
  flags = [f"--config.global_batch_size={n * args.per_device}", f"--config.mesh.data={n}",
           "--config.mesh.fsdp=1", "--config.mesh.model=1", "--config.model.dtype=float32",
           f"--config.data.group_block={args.per_device}",
           f"--config.data.global_size={g}", f"--config.data.local_size={loc}",
           f"--config.model.img_size={g}", f"--config.data.builtin.tile_size={g + 32}",
           f"--config.model.head.out_dim={args.prototypes}"]
  return step_runner.run_train_step(
      args.variant, flags, args.steps, what=f"{n} devices",
      env={"XLA_FLAGS": f"--xla_force_host_platform_device_count={n}"})


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--variant", default="Ti/16")
  p.add_argument("--per_device", type=int, default=4, help="images per device")
  p.add_argument("--devices", default="1,2,4,8")
  p.add_argument("--crop_scale", type=float, default=0.5,
                 help="crop sizes relative to the paper's 224 / 96 px (keeps the CPU run short)")
  p.add_argument("--prototypes", type=int, default=4096, help="DINO head K")
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--out", default=os.path.join(_ROOT, "bench", "results", "scaling.json"))
  args = p.parse_args()
  rows = []
  for n in (int(x) for x in args.devices.split(",")):
    r = run_point(args, n)
    rows.append(r)
    base = rows[0]["step_s"] / rows[0]["devices"]
    over = r["step_s"] / (r["devices"] * base) - 1
    two = next((x for x in rows if x["devices"] == 2), None)
    over2 = (f", {r['step_s'] / (r['devices'] * two['step_s'] / 2) - 1:+6.1%} vs 2"
             if two and r["devices"] >= 2 else "")
    mem = r["memory_gib"]
    print(f"{n} device(s), global batch {r['global_batch']}: {r['step_s'] * 1e3:8.1f} ms/step, "
          f"overhead {over:+6.1%} vs 1 device{over2}, compile {r['compile_s']:5.1f} s, per device: "
          f"args {mem.get('argument_size_gib', 0):.3f} GiB, temp {mem.get('temp_size_gib', 0):.3f} "
          f"GiB", flush=True)
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w", encoding="utf-8") as f:
    json.dump({"settings": vars(args), "rows": rows}, f, indent=1)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
