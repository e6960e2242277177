"""The attention core, forward + backward, three ways side by side in one process (issue #9).

  python bench/attention_core.py                  # ViT-S/16 and ViT-B/16, batch 16 x 197 tokens
  python bench/attention_core.py --heads=12 --rounds=30

Rows (each the median and minimum of --rounds timed calls, the three sides called in turn so
that load from other processes hits them alike):
* `kernel`: the fused XLA:CPU kernel (terrafm_jax/ops/attention.cc), what the model runs on CPU
  in float32 (`model.attention_impl="auto"`);
* `xla`:    the same maths on XLA's own ops (`model.attention_impl="core"`, models/attention.py);
* `torch`:  the released terrafm.py attention in eager PyTorch (q k^T * scale, softmax, @ v).
Each call is the loss sum(attn(q, k, v) * g) and its gradients with respect to q, k and v.
speed-up = other s / kernel s (> 1: the kernel is faster). Prints JSON too.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch

from terrafm_jax.models.attention import attention


def _timed(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def run(batch: int, tokens: int, heads: int, head_dim: int, rounds: int) -> dict:
  rng = np.random.default_rng(0)
  arrays = [rng.standard_normal((batch, tokens, heads, head_dim), np.float32) for _ in range(4)]
  q, k, v, g = (jnp.asarray(a) for a in arrays)
  scale = head_dim ** -0.5

  def jax_side(use_kernel):
    grad = jax.jit(jax.value_and_grad(
        lambda q, k, v: jnp.sum(attention(q, k, v, scale, impl="auto" if use_kernel else "core") * g), (0, 1, 2)))
    return lambda: jax.block_until_ready(grad(q, k, v))

  tq, tk, tv = (torch.tensor(a.transpose(0, 2, 1, 3), requires_grad=True) for a in arrays[:3])
  tg = torch.tensor(arrays[3].transpose(0, 2, 1, 3))

  def torch_side():
    for t in (tq, tk, tv):
      t.grad = None
    out = ((tq @ tk.transpose(-2, -1)) * scale).softmax(dim=-1) @ tv
    (out * tg).sum().backward()

  sides = {"kernel": jax_side(True), "xla": jax_side(False), "torch": torch_side}
  times = {name: [] for name in sides}
  for fn in sides.values():
    fn(), fn()  # compile / warm up
  for _ in range(rounds):
    for name, fn in sides.items():
      fn()  # untimed: the first call after switching framework runs slower on this machine
      times[name].append(_timed(fn))
  out = {"shape": [batch, tokens, heads, head_dim]}
  for name, t in times.items():
    out[name] = {"median_ms": 1e3 * statistics.median(t), "min_ms": 1e3 * min(t)}
  for other in ("xla", "torch"):
    pairs = [o / kk for o, kk in zip(times[other], times["kernel"])]
    out[f"speedup_vs_{other}"] = statistics.median(pairs)
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--tokens", type=int, default=197)
  parser.add_argument("--heads", type=int, nargs="*", default=[6, 12],
                      help="head counts to run (6 = ViT-S, 12 = ViT-B; head dim 64)")
  parser.add_argument("--rounds", type=int, default=15)
  args = parser.parse_args()
  results = []
  for heads in args.heads:
    r = run(args.batch, args.tokens, heads, 64, args.rounds)
    results.append(r)
    print(f"{args.batch} x {args.tokens} tokens, {heads} heads x 64: "
          + ", ".join(f"{n} {r[n]['median_ms']:.1f} ms (min {r[n]['min_ms']:.1f})"
                      for n in ("kernel", "xla", "torch"))
          + f"; kernel speed-up per round: {r['speedup_vs_xla']:.2f}x vs xla, "
            f"{r['speedup_vs_torch']:.2f}x vs torch", flush=True)
  print(json.dumps(results))


if __name__ == "__main__":
  main()
