"""Throughput of `python -m terrafm_jax.embed` (embeddings/s) on synthetic Major-TOM cells.

  python bench/embed.py              # B/16, 4 cells of 448 px, 224 px fragments
  python bench/embed.py --variant=Mu/8 --cells=4 --cell_size=128 --fragment_size=64

Two figures from one process, random weights (the encoder's cost does not depend on their values):
  * end to end: `terrafm_jax.embed.embed()` over synthetic cells written in the Major-TOM parquet
    schema (reader, harmonisation, fragmenting, normalisation, the encoder, GeoParquet parts),
    after a warm-up run on the first cell that compiles the forward (not timed);
  * encoder only: the same jitted forward on one full pre-made batch, several calls.
Printed, and written to bench/results/embed.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from terrafm_jax import api  # noqa: E402
from terrafm_jax.data import synthetic  # noqa: E402
from terrafm_jax.embed import EmbedOptions, embed  # noqa: E402
from terrafm_jax.embed.batches import Encoder  # noqa: E402


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--variant", default="B/16")
  ap.add_argument("--cells", type=int, default=4, help="synthetic cells, all timed")
  ap.add_argument("--cell_size", type=int, default=448)
  ap.add_argument("--fragment_size", type=int, default=224)
  ap.add_argument("--fragment_stride", type=int, default=224)
  ap.add_argument("--batch_size", type=int, default=8)
  ap.add_argument("--modality", default="s2_l2a")
  ap.add_argument("--encoder_calls", type=int, default=3)
  ap.add_argument("--json_out", default=os.path.join(os.path.dirname(__file__), "results",
                                                     "embed.json"))
  args = ap.parse_args()
  import jax  # pylint: disable=g-import-not-at-top

  work = tempfile.mkdtemp(prefix="bench_embed_")
  try:
    raw = os.path.join(work, "majortom")
    t = time.perf_counter()
    synthetic.write_synthetic_majortom(raw, synthetic.SyntheticConfig(
        num_cells=args.cells, cell_size=args.cell_size, tile_size=args.cell_size // 2,
        seed=0, p_missing=(0.0, 0.0, 0.0)))
    t_data = time.perf_counter() - t
    t = time.perf_counter()
    model = api.load(f"random:{args.variant}")
    t_load = time.perf_counter() - t
    common = dict(majortom_dir=raw, weights=f"random:{args.variant}", modality=args.modality,
                  fragment_size=args.fragment_size, fragment_stride=args.fragment_stride,
                  batch_size=args.batch_size, cells_per_part=2, progress=False)
    # Warm-up (compiles the forward): the first cell only, into a folder of its own.
    t = time.perf_counter()
    embed(EmbedOptions(out=os.path.join(work, "warm"), max_cells=1, **common), model=model)
    t_warm = time.perf_counter() - t
    # Timed: every cell into a fresh folder (the compiled forward is memoised in this process).
    t = time.perf_counter()
    report = embed(EmbedOptions(out=os.path.join(work, "timed"), **common), model=model)
    t_e2e = time.perf_counter() - t
    rows = report["counts"]["rows"]
    cells = report["counts"]["cells_read"]

    enc = Encoder(model, args.fragment_size, 0, args.batch_size)
    stems = ("s1", "s2_l1c", "s2_l2a") if args.modality == "fused" else (args.modality,)
    channels = {"s1": 2, "s2_l1c": 12, "s2_l2a": 12}
    rng = np.random.default_rng(0)
    batch = {m: rng.normal(size=(enc.batch_size, args.fragment_size, args.fragment_size,
                                 channels[m])).astype(np.float32) for m in stems}
    enc(stems, batch)
    t = time.perf_counter()
    for _ in range(args.encoder_calls):
      enc(stems, batch)
    t_enc = time.perf_counter() - t
  finally:
    shutil.rmtree(work, ignore_errors=True)

  res = {
      "variant": args.variant, "modality": args.modality, "cells": cells,
      "cell_size": args.cell_size, "fragment_size": args.fragment_size,
      "fragment_stride": args.fragment_stride, "input_size": enc.input_size,
      "batch_size": enc.batch_size, "embeddings": rows,
      "end_to_end_embeddings_per_s": rows / t_e2e,
      "end_to_end_s": t_e2e, "cells_per_s": cells / t_e2e,
      "encoder_only_embeddings_per_s": args.encoder_calls * enc.batch_size / t_enc,
      "warmup_s": t_warm, "weights_load_s": t_load, "synthetic_data_s": t_data,
      "device": str(jax.devices()[0]), "backend": jax.default_backend(),
      "num_devices": jax.device_count(), "cpu_count": os.cpu_count(),
      "load_avg": list(os.getloadavg()), "platform": platform.platform(),
      "python": platform.python_version(), "jax": jax.__version__,
  }
  print(f"embed {args.variant} {args.modality}: {rows} embeddings from {cells} cells of "
        f"{args.cell_size} px ({args.fragment_size} px fragments, input {enc.input_size}) in "
        f"{t_e2e:.1f} s -> {res['end_to_end_embeddings_per_s']:.2f} embeddings/s end to end; "
        f"encoder only {res['encoder_only_embeddings_per_s']:.2f} embeddings/s "
        f"(batch {enc.batch_size}, {jax.default_backend()}, load avg "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
  os.makedirs(os.path.dirname(args.json_out), exist_ok=True)
  with open(args.json_out, "w", encoding="utf-8") as f:
    json.dump(res, f, indent=2)
  print(f"wrote {args.json_out}")


if __name__ == "__main__":
  main()
