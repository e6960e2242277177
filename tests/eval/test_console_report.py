"""The main job's console (one progress line per log interval) and the report it leaves."""
from __future__ import annotations

import json
import os
import re

from PIL import Image


def _console(workdir):
  with open(workdir + ".console.json", encoding="utf-8") as f:
    return json.load(f)


def test_console_is_one_progress_line_per_interval(trained_workdir):
  out = _console(trained_workdir)
  rows = [json.loads(line) for line in open(os.path.join(trained_workdir, "metrics.jsonl"))]
  logged = [r["step"] for r in rows if "loss" in r]
  progress = re.findall(r"^\[terrafm\] step (\d+)/(\d+) \(\d+%\) \| loss \S+ \| teacher entropy "
                        r"\S+ \| lr \S+ \| \S+ img/s \| ETA \S+$", out["stdout"], re.M)
  assert [int(s) for s, _ in progress] == logged  # smoke.py:test logs every step
  # The full metric set stays out of the console; it is in metrics.jsonl and TensorBoard.
  assert "pair_loss" not in out["stdout"] + out["stderr"]
  assert any("pair_loss/" in k for k in rows[-1])
  # No INFO lines on the console (they are in train.log); one summary line for the parameters.
  assert not re.search(r"^I\d{4} ", out["stderr"], re.M)
  assert os.path.getsize(os.path.join(trained_workdir, "train.log")) > 0
  assert len(re.findall(r"^\[terrafm\] student: [\d.]+ M parameters \(", out["stdout"],
                        re.M)) == 1
  assert "Total:" not in out["stdout"]  # CLU's per-parameter table is not printed


def test_report_png_is_written(trained_workdir):
  path = os.path.join(trained_workdir, "report.png")
  with Image.open(path) as im:
    assert im.format == "PNG" and im.size[0] > 400 and im.size[1] > 200
  assert f"[terrafm] report: {path}" in _console(trained_workdir)["stdout"]
