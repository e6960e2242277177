"""The train step's matmul shapes, XLA:CPU against PyTorch (MKL), side by side in one process.

  python bench/matmul_shapes.py                 # ViT-B/16 shapes, batch 16 x 197 tokens
  python bench/matmul_shapes.py --width=384     # ViT-S/16 (6 heads)

Why: the train step's FLOPs are almost all matmuls, so the step's JAX/PyTorch ratio follows the
ratio of these kernels. Rows:

* `dense`          (B*N, d) x (d, 4d): fc1 of the MLP, the largest GEMM of a block;
* `dense wgrad`    (B*N, d)^T x (B*N, 4d): its weight gradient (a transposed operand);
* `attn QK^T`      (B, H, N, 64) x (B, H, N, 64)^T, per head: the attention logits (and dP);
* `attn PV`        (B, H, N, N) x (B, H, N, 64): attention output (and dQ);
* `attn P^T dO`    (B, H, N, N)^T x (B, H, N, 64): dV and dK in the backward pass.

Each row is the minimum of --repeats timed calls after two warm-up calls, JAX (jitted, inputs on
the device) and PyTorch alternating, so load from other processes hits both alike.
ratio = PyTorch s / JAX s (> 1: JAX is faster).
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch


def best_of(fn, repeats: int) -> float:
  fn()
  fn()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return min(times)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--tokens", type=int, default=197)
  p.add_argument("--width", type=int, default=768)
  p.add_argument("--head_dim", type=int, default=64)
  p.add_argument("--repeats", type=int, default=7)
  args = p.parse_args()
  b, n, d, hd = args.batch, args.tokens, args.width, args.head_dim
  h = d // hd
  rng = np.random.default_rng(0)
  x = rng.standard_normal((b * n, d), np.float32)
  w = rng.standard_normal((d, 4 * d), np.float32)
  dy = rng.standard_normal((b * n, 4 * d), np.float32)
  q = rng.standard_normal((b, h, n, hd), np.float32)
  s = rng.standard_normal((b, h, n, n), np.float32)

  rows = [
      ("dense", lambda a, c: a @ c, (x, w), lambda a, c: a @ c),
      ("dense wgrad", lambda a, c: a.T @ c, (x, dy), lambda a, c: a.t() @ c),
      ("attn QK^T", lambda a, c: jnp.einsum("bhqd,bhkd->bhqk", a, c), (q, q),
       lambda a, c: a @ c.transpose(-2, -1)),
      ("attn PV", lambda a, c: jnp.einsum("bhqk,bhkd->bhqd", a, c), (s, q), lambda a, c: a @ c),
      ("attn P^T dO", lambda a, c: jnp.einsum("bhqk,bhqd->bhkd", a, c), (s, q),
       lambda a, c: a.transpose(-2, -1) @ c),
  ]
  print(f"batch {b} x {n} tokens, width {d}, {h} heads of {hd}; torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads, jax {jax.__version__} on {jax.devices()[0].platform}")
  print(f"{'row':14s} {'GFLOP':>7s} {'JAX ms':>8s} {'torch ms':>9s} {'ratio':>6s} "
        f"{'JAX GFLOP/s':>12s}")
  for name, jfn, (a, c), tfn in rows:
    f = jax.jit(jfn)
    ja, jc = jnp.asarray(a), jnp.asarray(c)
    ta, tc = torch.from_numpy(a), torch.from_numpy(c)
    out = f(ja, jc)
    flops = 2.0 * np.prod(out.shape) * (a.shape[-1] if name not in ("dense wgrad", "attn P^T dO")
                                        else a.shape[-2])
    tj = best_of(lambda: jax.block_until_ready(f(ja, jc)), args.repeats)
    tt = best_of(lambda: tfn(ta, tc), args.repeats)
    print(f"{name:14s} {flops / 1e9:7.2f} {tj * 1e3:8.1f} {tt * 1e3:9.1f} {tt / tj:6.2f} "
          f"{flops / tj / 1e9:12.1f}")


if __name__ == "__main__":
  main()
