"""Side-by-side timing for the A/B benchmarks (bench/ helper): A, B, A, B, ... one call each.

The shared machines move by 10-40 % within minutes; alternating the two sides call by call makes
load from other processes hit both alike, so only the ratio of the medians is read.
"""
from __future__ import annotations

import statistics
from typing import Callable


def interleave(timed: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
  """Run each side's `timed()` (one timed call; returns its seconds) in turn for `rounds` rounds,
  printing every round; returns each side's median seconds."""
  times = {name: [] for name in timed}
  for i in range(rounds):
    for name, fn in timed.items():
      times[name].append(fn())
    print(f"  round {i}: " + ", ".join(f"{n} {t[-1]:.2f} s" for n, t in times.items()), flush=True)
  return {name: statistics.median(t) for name, t in times.items()}


def report(what: str, medians: dict[str, float], losses: dict[str, float], rounds: int) -> None:
  """One line: both medians, B's speed-up over A (A s / B s) and each side's last loss."""
  ta, tb = medians["A"], medians["B"]
  print(f"{what}: A {ta:.3f} s, B {tb:.3f} s; B speed-up {ta / tb:.3f}x (median of {rounds}); "
        f"last loss A {losses['A']:.6f}, B {losses['B']:.6f}", flush=True)
