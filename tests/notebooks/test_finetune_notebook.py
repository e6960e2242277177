"""Executes notebooks/finetune.ipynb with small settings, so that the notebook cannot rot.

The notebook runs in a Jupyter kernel of this interpreter (a kernelspec written to a temporary
JUPYTER_PATH whose argv is sys.executable, so the project's virtual environment is used whatever
kernels the machine has), with the repository as working directory. It is parameterised the
papermill way: a cell with the small settings is inserted right after the cell tagged
"parameters". Two runs: on the real scenes of ../shared/eo_samples (skipped when that folder is
absent) and on the built-in synthetic set (always runs: nothing is downloaded; this run also
fine-tunes the encoder for one epoch). Both runs share a persistent JAX compilation cache, so the
second one reuses most of the first one's compiles.
TERRAFM_NOTEBOOK_OUT=<folder> keeps the executed notebooks (with their figures) for a look.
"""
from __future__ import annotations

import os
import re
import sys

import pytest

nbformat = pytest.importorskip("nbformat", reason="needs nbformat (pip install -e '.[test]')")
nbclient = pytest.importorskip("nbclient", reason="needs nbclient (pip install -e '.[test]')")
pytest.importorskip("ipykernel", reason="needs ipykernel (pip install -e '.[test]')")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NOTEBOOK = os.path.join(REPO, "notebooks", "finetune.ipynb")
EO_SAMPLES = os.path.normpath(os.path.join(REPO, "..", "shared", "eo_samples"))
KERNEL = "terrafm-notebook-test"
# Small settings: a few probe epochs, one lr, a small synthetic set.
TINY = dict(WEIGHTS="random:Mu/8", EPOCHS=8, LRS=(1e-2,), SEG_EPOCHS=3, SEG_LRS=(1e-2,),
            SYNTHETIC_TILES=40, SYNTHETIC_TILE_SIZE=32, SEED=0)
FIGURE_CELLS = 3  # predictions, PCA picture, training curve: one PNG each
SCORE = re.compile(r"\| test (accuracy|micro_f1|map|miou): (-?[0-9.]+)")


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
  """Environment of the kernel: our kernelspec, fast CPU compiles, a shared compilation cache."""
  from ipykernel.kernelspec import install
  prefix = tmp_path_factory.mktemp("jupyter")
  install(kernel_name=KERNEL, prefix=str(prefix))  # argv: [sys.executable, -m, ipykernel_launcher]
  env = {
      "JUPYTER_PATH": str(prefix / "share" / "jupyter"),
      "JAX_PLATFORMS": "cpu",
      # The test run's fast-compile flags and compilation cache (tests/conftest.py): XLA:CPU
      # compile time dominates.
      "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
      "JAX_COMPILATION_CACHE_DIR": os.environ["JAX_COMPILATION_CACHE_DIR"],
      "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
      "TF_CPP_MIN_LOG_LEVEL": "2",
      "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
      "TERRAFM_EO_SAMPLES": "",
  }
  return env


def run_notebook(name: str, params: dict, env: dict, monkeypatch):
  nb = nbformat.read(NOTEBOOK, as_version=4)
  tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
  assert len(tagged) == 1, "the notebook needs exactly one cell tagged 'parameters'"
  source = "\n".join(f"{k} = {v!r}" for k, v in params.items())
  source += "\nimport sys\nprint('kernel python:', sys.executable)"
  nb.cells.insert(tagged[0] + 1, nbformat.v4.new_code_cell(
      source, metadata={"tags": ["injected-parameters"]}))
  for k, v in env.items():
    monkeypatch.setenv(k, v)
  client = nbclient.NotebookClient(nb, kernel_name=KERNEL, timeout=600,
                                   resources={"metadata": {"path": REPO}})
  client.execute()  # raises CellExecutionError (with the traceback) on any error
  keep = os.environ.get("TERRAFM_NOTEBOOK_OUT")  # a folder: keep the executed notebooks there
  if keep:
    os.makedirs(keep, exist_ok=True)
    nbformat.write(nb, os.path.join(keep, f"finetune_{name}.ipynb"))
  return nb


def text_of(cell) -> str:
  parts = []
  for o in cell.get("outputs", []):
    if o.output_type == "stream":
      parts.append(o.text)
    elif o.output_type in ("execute_result", "display_data"):
      parts.append(o.get("data", {}).get("text/plain", ""))
  return "".join(parts)


def check_run(nb) -> dict[str, list[float]]:
  text = "".join(text_of(c) for c in nb.cells if c.cell_type == "code")
  assert f"kernel python: {sys.executable}" in text, "the kernel is not this interpreter"
  errors = [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
  assert not errors, errors
  figures = [c for c in nb.cells if "figure" in c.metadata.get("tags", [])]
  assert len(figures) == FIGURE_CELLS
  for c in figures:
    pngs = [o for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(pngs) == 1, f"a figure cell produced {len(pngs)} PNG images:\n{c.source[:200]}"
  scores: dict[str, list[float]] = {}
  for metric, value in SCORE.findall(text):
    scores.setdefault(metric, []).append(float(value))
  assert scores, f"no score printed:\n{text[-3000:]}"
  for metric, values in scores.items():
    assert all(0.0 <= v <= 100.0 for v in values), (metric, values)
  return scores


def test_committed_notebook_has_no_outputs():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  for c in nb.cells:
    if c.cell_type == "code":
      assert not c.outputs and c.execution_count is None, "clear the outputs before committing"
  first = next(c for c in nb.cells if c.cell_type == "code")
  assert '"google.colab" in sys.modules' in first.source  # installs in Colab only


def test_notebook_on_eo_samples(kernel_env, monkeypatch):
  if not os.path.isdir(os.path.join(EO_SAMPLES, "terramind_majortom")):
    pytest.skip(f"real EO samples not found at {EO_SAMPLES}; the built-in run still runs")
  nb = run_notebook("eo_samples", {**TINY, "EO_SAMPLES": EO_SAMPLES}, kernel_env, monkeypatch)
  scores = check_run(nb)
  assert len(scores["accuracy"]) == 1 and len(scores["miou"]) == 1  # probe and segmentation
  text = "".join(text_of(c) for c in nb.cells if c.cell_type == "code")
  assert "eosamples/lulc-s2_l2a | linear probe" in text


def test_notebook_on_builtin_synthetic_set(kernel_env, monkeypatch):
  """The fallback that needs no data folder; it also runs the optional fine-tuning cell."""
  nb = run_notebook("builtin", {**TINY, "EO_SAMPLES": None, "FINETUNE": True,
                                "FINETUNE_EPOCHS": 1}, kernel_env, monkeypatch)
  scores = check_run(nb)
  assert list(scores) == ["accuracy"] and len(scores["accuracy"]) == 2  # probe and fine-tuning
  text = "".join(text_of(c) for c in nb.cells if c.cell_type == "code")
  assert "builtin/landcover-s2_l2a | linear probe" in text
  assert "builtin/landcover-s2_l2a | fine-tuned" in text
