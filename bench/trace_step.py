"""Where one train step spends its time: a jax.profiler trace of the project's step, top ops.

  python bench/trace_step.py                          # S/16, batch 8, paper crops, fp32, s2_l1c
  python bench/trace_step.py --variant=B/16 --top=40 --trace_dir=/tmp/trace_b16

Builds the step exactly as bench/compare_torch.py does (same config, same single-modality batch),
runs --warmup untimed steps, then traces --steps steps with `jax.profiler.trace` and aggregates the
XLA:CPU executor events (one per HLO instruction or fusion) by name. Prints, per op, the summed
wall time across threads, the share of all op time, the call count and the HLO op kind; the trace
itself stays in --trace_dir for TensorBoard / xprof. Op names are those of the compiled HLO:
`--hlo_out=FILE` writes the compiled module's text so a name can be looked up there.
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import sys
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [p for p in (_ROOT, os.path.join(_ROOT, "bench")) if p not in sys.path]

import jax  # noqa: E402

import compare_torch  # noqa: E402  (bench/ helper: the same step and batch)
from terrafm_jax.train import data_source  # noqa: E402


def op_events(trace_dir: str):
  """(name, duration_ns, thread) of every XLA op event in the newest trace under trace_dir."""
  files = []
  for dirpath, _, names in os.walk(trace_dir):
    files += [os.path.join(dirpath, n) for n in names if n.endswith(".xplane.pb")]
  if not files:
    raise FileNotFoundError(f"no .xplane.pb under {trace_dir}")
  data = jax.profiler.ProfileData.from_file(max(files, key=os.path.getmtime))
  for plane in data.planes:
    if not plane.name.startswith("/host:"):
      continue
    for line in plane.lines:
      for ev in line.events:
        stats = dict(ev.stats)
        # XLA:CPU tags op events with the HLO op; python/runtime events carry no hlo_op stat.
        if "hlo_op" in stats or "hlo_module" in stats:
          yield ev.name, ev.duration_ns, line.name, stats


def summarize(events):
  total = collections.Counter()
  count = collections.Counter()
  for name, dur, _, _ in events:
    total[name] += dur
    count[name] += 1
  return total, count


def hlo_op_kinds(hlo_text: str) -> dict[str, str]:
  """instruction name -> 'fusion(kind)' / opcode, from the compiled HLO text."""
  kinds = {}
  for m in re.finditer(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*[^=]*?\s([a-z][\w\-]*)\((.*)$",
                       hlo_text, re.M):
    name, op, rest = m.group(1), m.group(2), m.group(3)
    if op == "fusion":
      k = re.search(r"kind=(\w+)", rest)
      c = re.search(r"calls=%?([\w.\-]+)", rest)
      op = f"fusion[{k.group(1) if k else '?'}] {c.group(1) if c else ''}".strip()
    kinds.setdefault(name, op)
  return kinds


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--variant", default="S/16")
  compare_torch.add_step_args(p)
  p.add_argument("--steps", type=int, default=1, help="traced steps")
  p.add_argument("--warmup", type=int, default=1)
  p.add_argument("--top", type=int, default=30)
  p.add_argument("--trace_dir", default="/tmp/terrafm_trace")
  p.add_argument("--hlo_out", default="", help="write the compiled step's HLO text here")
  args = p.parse_args()

  config = compare_torch.load_config(args.variant, args)
  plan, _, it = data_source.open_run(config, "/tmp/terrafm_bench")
  config = plan.config
  host = [compare_torch.single_modality(next(it)) for _ in range(2)]
  step = compare_torch.JaxStep(plan, host)
  print(f"[{args.variant}] compiled in {step.compile_s:.1f} s; XLA flops/step {step.flops:.4g}",
        flush=True)
  hlo = step.compiled.as_text()
  if args.hlo_out:
    with open(args.hlo_out, "w", encoding="utf-8") as f:
      f.write(hlo)
  for _ in range(args.warmup):
    step.step()
  t0 = time.perf_counter()
  with jax.profiler.trace(args.trace_dir):
    for _ in range(args.steps):
      step.step()
  wall = (time.perf_counter() - t0) / args.steps
  kinds = hlo_op_kinds(hlo)
  events = list(op_events(args.trace_dir))
  if not events:
    raise SystemExit(f"the trace in {args.trace_dir} holds no XLA op events")
  total, count = summarize(events)
  all_ns = sum(total.values())
  print(f"step wall {wall:.3f} s (traced); summed op time {all_ns / 1e9 / args.steps:.3f} s/step "
        f"over all threads; {len(total)} distinct ops")
  print(f"{'op':44s} {'ms/step':>9s} {'share':>6s} {'calls':>6s}  kind")
  for name, ns in total.most_common(args.top):
    print(f"{name[:44]:44s} {ns / 1e6 / args.steps:9.1f} {ns / all_ns:6.1%} "
          f"{count[name] // args.steps:6d}  {kinds.get(name, '')[:60]}")
  by_kind = collections.Counter()
  for name, ns in total.items():
    k = kinds.get(name, "?")
    by_kind[k.split(" ")[0]] += ns
  by_family = collections.Counter()
  for name, ns in total.items():
    by_family[re.sub(r"\.\d+$", "", name)] += ns
  print("\nby op name (numeric suffix dropped):")
  for k, ns in by_family.most_common(15):
    print(f"  {k:40s} {ns / 1e6 / args.steps:9.1f} ms/step {ns / all_ns:6.1%}")
  print("\nby op kind:")
  for k, ns in by_kind.most_common(12):
    print(f"  {k:40s} {ns / 1e6 / args.steps:9.1f} ms/step {ns / all_ns:6.1%}")


if __name__ == "__main__":
  main()
