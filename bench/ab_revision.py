"""Before/after across code versions: the train step of a git revision against the work tree's,
calls interleaved.

  python bench/ab_revision.py --rev=HEAD~1                    # S/16, 6 interleaved pairs
  python bench/ab_revision.py --rev=6fa0df1 --variant=B/16 --steps=4

bench/ab_step.py compares two configs of one code version inside one process. A change to the
code (the step, a model module, an XLA-facing rewrite) needs the old and the new package side by
side, which one Python process cannot import. Here each side is a worker process: "A" runs the
revision's files (exported with `git archive` into a temporary folder), "B" the work tree. Each
builds its step as its own bench/ab_step.py builds it (so REV must contain bench/ab_step.py), then
waits; the driver asks A, B, A, B, ... for one untimed and one timed call at a time, so load from
other processes hits both alike, and prints both medians, their ratio and each side's last loss
(the same data and seed: equal losses mean the same maths). Both sides are alive at once: memory
is twice a single step's.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(_ROOT, "bench"))

import interleave  # noqa: E402  (bench/ helper)

_TAG = "AB_REVISION "

_WORKER = r"""
import argparse, json, os, sys, time
root = os.getcwd()
sys.path[:0] = [root, os.path.join(root, "bench")]
import ab_step
args = argparse.Namespace(**json.loads(sys.argv[1]))
step, _ = ab_step.build(args, [])
print("AB_REVISION " + json.dumps({"compile_s": step.compile_s}), flush=True)
for line in sys.stdin:
  if line.strip() == "step":
    step.step()  # untimed: the first call after the other side's runs slower on a shared machine
    t0 = time.perf_counter()
    step.step()
    print("AB_REVISION " + json.dumps({"step_s": time.perf_counter() - t0}), flush=True)
  else:
    print("AB_REVISION " + json.dumps({"loss": float(step.metrics["loss"])}), flush=True)
    break
"""


class Worker:
  """One side: a process running _WORKER in `root`."""

  def __init__(self, name: str, root: str, settings: dict):
    self.name = name
    env = dict(os.environ)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    self.proc = subprocess.Popen([sys.executable, "-c", _WORKER, json.dumps(settings)], cwd=root,
                                 env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 text=True)
    self.compile_s = self._read()["compile_s"]

  def _read(self) -> dict:
    for line in self.proc.stdout:
      if line.startswith(_TAG):
        return json.loads(line[len(_TAG):])
    raise SystemExit(f"worker {self.name} exited (rc {self.proc.wait()}); its stderr is above")

  def ask(self, command: str) -> dict:
    self.proc.stdin.write(command + "\n")
    self.proc.stdin.flush()
    return self._read()

  def close(self) -> float:
    loss = self.ask("quit")["loss"]
    self.proc.wait(timeout=60)
    return loss


def export_revision(rev: str, dest: str) -> None:
  """The tracked files of `rev` into `dest` (no history, no work-tree changes)."""
  archive = os.path.join(dest, "rev.tar")
  subprocess.run(["git", "-C", _ROOT, "archive", "--format=tar", "-o", archive, rev], check=True)
  with tarfile.open(archive) as tar:
    tar.extractall(dest, filter="data")
  os.remove(archive)
  if not os.path.exists(os.path.join(dest, "bench", "ab_step.py")):
    raise SystemExit(f"{rev} has no bench/ab_step.py; pick a later revision")


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--rev", required=True, help="git revision for side A (B is the work tree)")
  p.add_argument("--variant", default="S/16")
  p.add_argument("--steps", type=int, default=6, help="interleaved timed pairs")
  p.add_argument("--batch", type=int, default=8, help="global batch (images)")
  p.add_argument("--tile_size", type=int, default=256, help="random tile size (px)")
  p.add_argument("--drop_path_rate", type=float, default=0.0)
  p.add_argument("--modalities", default="s2_l1c", choices=("s2_l1c", "all"))
  args = p.parse_args()
  settings = {k: getattr(args, k) for k in ("variant", "batch", "tile_size", "drop_path_rate",
                                            "modalities")}
  rev = subprocess.run(["git", "-C", _ROOT, "rev-parse", "--short", args.rev], check=True,
                       capture_output=True, text=True).stdout.strip()
  with tempfile.TemporaryDirectory(prefix="ab_revision_") as tmp:
    export_revision(rev, tmp)
    sides = {}
    try:
      # One after the other: compiling is single-threaded and would skew nothing, but two
      # compiles at once double the peak memory.
      sides["A"] = Worker("A", tmp, settings)
      sides["B"] = Worker("B", _ROOT, settings)
      print(f"A = {rev}, B = work tree; {args.variant}, batch {args.batch}, "
            f"{args.tile_size}-px tiles; compile A {sides['A'].compile_s:.1f} s, "
            f"B {sides['B'].compile_s:.1f} s", flush=True)
      times = interleave.interleave({name: (lambda w=w: w.ask("step")["step_s"])
                                   for name, w in sides.items()}, args.steps)
      losses = {name: w.close() for name, w in sides.items()}
    finally:
      for w in sides.values():
        if w.proc.poll() is None:
          w.proc.kill()
  interleave.report(f"{args.variant}, A = {rev}, B = work tree", times, losses)


if __name__ == "__main__":
  main()
