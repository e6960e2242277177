"""Before/after, same process: the project's train step with and without modality groups.

  python bench/ab_groups.py --variant=S/16 --steps=3

Both steps are built as bench/compare_torch.py builds them (paper crops, fp32, K = 65,536, batch
--batch, 256-px random tiles). --modalities picks the draws: "s2_l1c" (every view single L1C, the
compare_torch setting) or "all" (METHOD.md 4 reading a over the three modalities). Calls are
interleaved (on, off, on, off, ...) and the medians printed with their ratio.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [p for p in (_ROOT, os.path.join(_ROOT, "bench")) if p not in sys.path]

import compare_torch  # noqa: E402
from terrafm_jax.data.contract import MODALITIES  # noqa: E402
from terrafm_jax.train import data_source, metrics, trainer  # noqa: E402


def build(args, groups: bool):
  config = compare_torch.load_config(args.variant, args)
  config.data.modality_groups = groups
  if args.modalities == "all":
    config.data.modalities = MODALITIES
  data = data_source.make_train_data(config, "/tmp/terrafm_bench")
  config = trainer.resolve_config(config, data.num_examples)
  host = [next(data.iterator) for _ in range(2)]
  if args.modalities != "all":
    host = [compare_torch.single_modality(b) for b in host]
  return compare_torch.JaxStep(config, host), metrics.step_flops(config)


def main():
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--variant", default="S/16")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--tile_size", type=int, default=256)
  p.add_argument("--drop_path_rate", type=float, default=0.0)
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--modalities", default="s2_l1c", choices=("s2_l1c", "all"))
  args = p.parse_args()
  on, f_on = build(args, True)
  off, f_off = build(args, False)
  print(f"compile: groups {on.compile_s:.1f} s, masked {off.compile_s:.1f} s; model FLOPs/step "
        f"{f_on / 1e9:.0f} G vs {f_off / 1e9:.0f} G; XLA flops {on.flops:.4g} vs {off.flops:.4g}")
  on.step()
  off.step()
  t_on, t_off = [], []
  for i in range(args.steps):
    for s, acc in ((on, t_on), (off, t_off)):
      t0 = time.perf_counter()
      s.step()
      acc.append(time.perf_counter() - t0)
    print(f"  step {i}: groups {t_on[-1]:.2f} s, masked {t_off[-1]:.2f} s", flush=True)
  a, b = statistics.median(t_on), statistics.median(t_off)
  print(f"{args.variant} ({args.modalities}): groups {a:.3f} s, masked (every stem + fusion) "
        f"{b:.3f} s; speed-up {b / a:.2f}x")


if __name__ == "__main__":
  main()
