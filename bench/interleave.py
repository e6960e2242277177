"""Side-by-side timing for the A/B benchmarks (bench/ helper): A, B, A, B, ... one call each.

The shared machines move by 10-40 % within minutes; alternating the two sides call by call makes
load from other processes hit both alike, so only ratios are read: the ratio of the two medians,
and, per round, A's call over the B call right after it (the median of those ratios and how many
rounds B won), which drift between rounds cannot bias.
"""
from __future__ import annotations

import statistics
from typing import Callable


def interleave(timed: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
  """Run each side's `timed()` (one timed call; returns its seconds) in turn for `rounds` rounds,
  printing every round; returns each side's seconds, round by round."""
  times = {name: [] for name in timed}
  for i in range(rounds):
    for name, fn in timed.items():
      times[name].append(fn())
    print(f"  round {i}: " + ", ".join(f"{n} {t[-1]:.2f} s" for n, t in times.items()), flush=True)
  return times


def report(what: str, times: dict[str, list[float]], losses: dict[str, float]) -> None:
  """One line: both medians, B's speed-up over A (A s / B s), the per-round speed-ups (median,
  rounds B won) and each side's last loss."""
  ta, tb = statistics.median(times["A"]), statistics.median(times["B"])
  pairs = [a / b for a, b in zip(times["A"], times["B"])]
  won = sum(r > 1.0 for r in pairs)
  print(f"{what}: A {ta:.3f} s, B {tb:.3f} s; B speed-up {ta / tb:.3f}x (median of {len(pairs)}); "
        f"per round {statistics.median(pairs):.3f}x (median), B faster in {won} of {len(pairs)}; "
        f"last loss A {losses['A']:.6f}, B {losses['B']:.6f}", flush=True)
