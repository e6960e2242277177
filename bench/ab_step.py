"""Before/after, same process: the project's train step under two configs, calls interleaved.

  python bench/ab_step.py --variant=S/16 --set=model.remat=True
  python bench/ab_step.py --set=data.modality_groups=False --modalities=all --steps=3
  python bench/ab_step.py --xla=xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_DOT

"A" is the step exactly as bench/compare_torch.py builds it (paper crops 2x224 + 6x96, fp32,
K = 65,536, batch --batch, 256-px random tiles); "B" is the same with every --set KEY=VALUE applied
(a config path and a Python literal, as the trainer's --config.KEY=VALUE flags) and compiled with
every --xla NAME=VALUE XLA option (`compile(compiler_options=...)`, B only; enum values by their
full name, as in the example; true/false and integers as such). --modalities picks the draws:
"s2_l1c" (every view single L1C, the compare_torch setting) or "all" (METHOD.md 4 reading a over
the three modalities). Calls alternate A, B, A, B, ... after one untimed call each, so load from
other processes hits both alike; the medians, their ratio and the per-round ratios are printed.
"""
from __future__ import annotations

import argparse
import ast
import os
import sys
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [p for p in (_ROOT, os.path.join(_ROOT, "bench")) if p not in sys.path]

import compare_torch  # noqa: E402
import interleave  # noqa: E402
from terrafm_jax.data.contract import MODALITIES  # noqa: E402
from terrafm_jax.train import data_source, run_setup  # noqa: E402


def parse_set(item: str) -> tuple[str, object]:
  key, sep, raw = item.partition("=")
  if not sep or not key:
    raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
  try:
    value = ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    value = raw  # a bare string such as bfloat16
  return key, value


def apply_set(config, key: str, value) -> None:
  *parents, leaf = key.split(".")
  node = config
  for name in parents:
    if name not in node:
      raise SystemExit(f"--set {key}: no config field {name!r}")
    node = node[name]
  if leaf not in node:
    raise SystemExit(f"--set {key}: no config field {leaf!r} (have {sorted(node.keys())})")
  node[leaf] = value


def build(args, overrides):
  config = compare_torch.load_config(args.variant, args)
  if args.modalities == "all":
    config.data.modalities = MODALITIES
  for key, value in overrides:
    apply_set(config, key, value)
  plan, _, it = data_source.open_run(config, "/tmp/terrafm_bench")
  host = [next(it) for _ in range(2)]
  if args.modalities != "all":
    host = [compare_torch.single_modality(b) for b in host]
  return compare_torch.JaxStep(plan, host), plan.step_flops


def parse_xla(item: str) -> tuple[str, object]:
  """NAME=VALUE -> (name, value); compile() wants Python bools and ints, enums as their names."""
  name, sep, raw = item.partition("=")
  if not sep or not name:
    raise SystemExit(f"--xla expects NAME=VALUE, got {item!r}")
  if raw.lower() in ("true", "false"):
    return name, raw.lower() == "true"
  try:
    return name, int(raw)
  except ValueError:
    return name, raw


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--variant", default="S/16")
  compare_torch.add_step_args(p)
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--modalities", default="s2_l1c", choices=("s2_l1c", "all"))
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="config override for B (repeatable)")
  p.add_argument("--xla", action="append", default=[], metavar="NAME=VALUE",
                 help="XLA compiler option for B's step (repeatable)")
  args = p.parse_args()
  overrides = [parse_set(s) for s in args.set]
  xla_options = dict(parse_xla(o) for o in args.xla)
  if not overrides and not xla_options:
    raise SystemExit("give at least one --set KEY=VALUE or --xla NAME=VALUE (what B changes)")
  what = ", ".join([f"{k}={v!r}" for k, v in overrides] + [f"XLA {k}={v}" for k, v in
                                                            xla_options.items()])
  a, f_a = build(args, [])
  b, f_b = build(args, overrides)
  if xla_options:
    t0 = time.perf_counter()
    # On top of the config's own CPU options (config.xla_cpu_options), which A compiles with.
    base = run_setup.compiler_options(b.config, "cpu") or {}
    b.compiled = b.lowered.compile(compiler_options={**base, **xla_options})
    b.compile_s = time.perf_counter() - t0
  print(f"B = A with {what}\ncompile: A {a.compile_s:.1f} s, B {b.compile_s:.1f} s; model FLOPs/step "
        f"{f_a / 1e9:.0f} G vs {f_b / 1e9:.0f} G; XLA flops {a.flops:.4g} vs {b.flops:.4g}", flush=True)
  def timed(step):
    step.step()  # untimed: the first call after a switch runs slower on a shared 2-core machine
    t0 = time.perf_counter()
    step.step()
    return time.perf_counter() - t0

  times = interleave.interleave({"A": lambda: timed(a), "B": lambda: timed(b)}, args.steps)
  interleave.report(f"{args.variant} ({args.modalities})", times,
                    {"A": float(a.metrics["loss"]), "B": float(b.metrics["loss"])})


if __name__ == "__main__":
  main()
