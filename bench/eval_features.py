"""Feature-extraction throughput of the evaluation harness (images/s), CLS features, frozen encoder.

  python bench/eval_features.py                      # B/16 at 64 and 120 px, 13-band S2 input
  python bench/eval_features.py --variant=S/16 --sizes=64 --num_images=128

Two figures per size, from one process:
  * end to end: `terrafm_jax.eval.features.extract` over an in-memory split of random 13-band DN
    tiles (band mapping into the L1C stem, Grain batching, device resize, the encoder, host copy);
  * encoder only: the same jitted forward on one pre-made device batch.
A 120 px input (m-bigearthnet) is not a multiple of the patch size; the harness resizes it to 128 on
the device, as it does for the benchmark. The first (compiling) batch is not timed.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from terrafm_jax.eval import features as features_lib  # noqa: E402
from terrafm_jax.eval import weights as weights_lib  # noqa: E402
from terrafm_jax.eval.bands import StemMapping  # noqa: E402
from terrafm_jax.eval.dataset import EvalSplit, SourceGroup  # noqa: E402

S2_13 = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")


class RandomSplit(EvalSplit):
  def __init__(self, n: int, size: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    self._x = rng.integers(1, 5000, (n, size, size, 13)).astype(np.float32)
    self._y = rng.integers(0, 10, n)
    self.task, self.split, self.partition, self.kind = "bench/random", "test", "default", \
        "classification"
    self.num_classes, self.root = 10, "<memory>"
    self.inputs = {"s2": SourceGroup(S2_13, "dn")}

  def __len__(self):
    return len(self._y)

  def _load(self, i):
    return {"s2": self._x[i], "label": int(self._y[i]), "id": str(i)}


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--variant", default="B/16")
  ap.add_argument("--sizes", default="64,120")
  ap.add_argument("--num_images", type=int, default=256)
  ap.add_argument("--batch_size", type=int, default=32)
  ap.add_argument("--json_out", default=os.path.join(os.path.dirname(__file__), "results",
                                                     "eval_features.json"))
  args = ap.parse_args()
  w = weights_lib.load_weights(f"random:{args.variant}")
  stems = (StemMapping("s2_l1c", "s2", drop=("B10",)),)
  rows = []
  for size in (int(s) for s in args.sizes.split(",")):
    split = RandomSplit(args.num_images + args.batch_size, size)
    # Warm-up: one batch compiles the forward for this size.
    warm = RandomSplit(args.batch_size, size, seed=1)
    features_lib.extract(w, warm, stems, batch_size=args.batch_size, progress=False)
    t0 = time.perf_counter()
    features_lib.extract(w, split, stems, batch_size=args.batch_size, progress=False)
    end_to_end = len(split) / (time.perf_counter() - t0)

    in_size = features_lib.input_size_for(size, 16)
    fwd = features_lib.make_forward(w, ("s2_l1c",), in_size, ("cls",))
    x = {"s2_l1c": jax.device_put(np.random.default_rng(0).standard_normal(
        (args.batch_size, size, size, 12)).astype(np.float32))}
    jax.block_until_ready(fwd(w.params, x))
    reps = max(2, args.num_images // args.batch_size)
    t0 = time.perf_counter()
    for _ in range(reps):
      jax.block_until_ready(fwd(w.params, x))
    encoder_only = reps * args.batch_size / (time.perf_counter() - t0)
    row = dict(variant=args.variant, size=size, input_size=in_size, batch_size=args.batch_size,
               images=len(split), end_to_end_img_s=round(end_to_end, 2),
               encoder_only_img_s=round(encoder_only, 2))
    rows.append(row)
    print(f"{args.variant} {size} px (encoder input {in_size}): end to end {end_to_end:.1f} img/s, "
          f"encoder only {encoder_only:.1f} img/s", flush=True)
  out = dict(machine=dict(cpu_count=os.cpu_count(), processor=platform.processor(),
                          devices=[str(d) for d in jax.devices()], jax=jax.__version__),
             rows=rows)
  os.makedirs(os.path.dirname(args.json_out), exist_ok=True)
  with open(args.json_out, "w", encoding="utf-8") as f:
    json.dump(out, f, indent=2)
    f.write("\n")


if __name__ == "__main__":
  main()
