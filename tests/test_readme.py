"""The README's promises: its quick start runs for a user who has only the repository, and it
points nowhere outside it."""
from __future__ import annotations

import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme() -> str:
  with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
    return f.read()


def test_quick_start_runs_with_only_the_repository(tmp_path):
  text = _readme()
  section = text[text.index("## Quick start"):]
  code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  # Run from an empty folder: nothing beside the checkout (no eo_samples) is reachable by accident.
  proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.strip().splitlines()
  assert "'B8A'" in lines[0] and "random" in lines[0]
  assert lines[-1] == "(1, 768) (1, 14, 14, 768)"  # the shapes the README's comment states


def test_readme_is_short_and_stays_inside_the_repository():
  text = _readme()
  assert len(text.splitlines()) <= 250
  assert "../shared" not in text and "eo_samples/" not in text
  for link in re.findall(r"\]\(([^)#]+)\)", text):
    if "://" not in link:
      assert os.path.exists(os.path.join(REPO, link)), link
