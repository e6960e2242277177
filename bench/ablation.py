"""The paper's component ablation at smoke scale, scored on real pixels.

Trains the rows of TerraFM's ablation one after another with one budget (configs/smoke.py's recipe,
data and steps; only the components change) and prints the real-pixel learning check of each:
leave-one-out k-NN on the EuroSAT images (k = 20 and 5), with the paired bootstrap interval
against the run's own random init.

  single source       L2A only, one modality per view, no dual centering (plain DINO)
  + modality aug.     S1, L1C and L2A drawn per view, still one modality per view
  + fusion            half the views fuse >= 2 modalities (cross-attention fusion)
  + dual centering    the land-cover center beside DINO's (alpha = 0.8): the smoke config

    python bench/ablation.py --seeds=0 --root=/tmp/ablation      # ~4 min per row and seed
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from absl import app, flags

ROWS = (
    ("single source (L2A)", ["--config.data.modalities=('s2_l2a',)", "--config.data.single_p=1.0",
                             "--config.dino.alpha=1.0"]),
    ("+ modality augmentation", ["--config.data.single_p=1.0", "--config.dino.alpha=1.0"]),
    ("+ fusion", ["--config.dino.alpha=1.0"]),
    ("+ dual centering", []),
)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

flags.DEFINE_list("seeds", ["0"], "config.seed of each repeat")
flags.DEFINE_string("root", "/tmp/terrafm_ablation", "workdirs go under here (one per row, seed)")
flags.DEFINE_list("extra", [], "overrides added to every row, e.g. --extra=--config.num_epochs=50")
FLAGS = flags.FLAGS


def run_row(name: str, overrides: list[str], seed: int) -> dict:
  wd = os.path.join(FLAGS.root, f"{name.strip('+ ').split(' ')[0]}_{seed}")
  result = os.path.join(wd, "transfer_check.json")
  if not os.path.exists(result):
    cmd = [sys.executable, "-m", "terrafm_jax.train", "--config=configs/smoke.py",
           f"--workdir={wd}", f"--config.seed={seed}", "--config.knn.enabled=False",
           "--config.write_report=False", *overrides, *FLAGS.extra]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode:
      raise SystemExit(f"{name} (seed {seed}) failed:\n{proc.stderr[-3000:]}")
    print(f"  {name}, seed {seed}: {time.time() - t0:.0f} s", flush=True)
  with open(result, encoding="utf-8") as f:
    return json.load(f)


def main(argv):
  del argv
  print(f"EuroSAT leave-one-out k-NN, pretrained vs the run's random init; workdirs in "
        f"{FLAGS.root}", flush=True)
  rows = []
  for name, overrides in ROWS:
    for seed in FLAGS.seeds:
      rows.append((name, int(seed), run_row(name, overrides, int(seed))))
  print(f"\n{'row':<26}{'seed':>5}{'k=20':>8}{'k=5':>8}   pretrained - random init (95 % paired)")
  for name, seed, r in rows:
    acc = r["accuracy"]["pretrained"]
    iv = r["intervals"]["pretrained-random_init"]
    cells = "  ".join(f"k={k}: {v['diff']:+.3f} [{v['lo']:+.3f}, {v['hi']:+.3f}]"
                      for k, v in iv.items())
    print(f"{name:<26}{seed:>5}{acc['20']:>8.3f}{acc['5']:>8.3f}   {cells}")
  ri = {s: r["accuracy"]["random_init"] for _, s, r in rows}
  raw = rows[0][2]["accuracy"]["raw_band_stats"]
  for s, a in ri.items():
    print(f"{'random init':<26}{s:>5}{a['20']:>8.3f}{a['5']:>8.3f}")
  print(f"{'raw band statistics':<26}{'':>5}{raw['20']:>8.3f}{raw['5']:>8.3f}")


if __name__ == "__main__":
  app.run(main)
