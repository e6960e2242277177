"""The dry run (train/dry_run.py): the smoke model's real step, mesh and recipe compiled for a TPU
topology (v5e:2x2) on this CPU host with libtpu. It fits; the attention in the HLO is the one the
config asks for; no all-gather or all-to-all of activations appears under data parallelism; the
CPU kernels never reach a TPU program; bf16 compute shows in the dots; a step that does not fit
is one clear error naming what to change."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                                reason="libtpu (the test extra's jax[tpu]) is not installed")


REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _config(**model):
  spec = importlib.util.spec_from_file_location("smoke", os.path.join(REPO, "configs", "smoke.py"))
  smoke = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(smoke)
  c = smoke.get_config("test")
  c.model.dtype = "bfloat16"
  for k, v in model.items():
    c.model[k] = v
  return c


@pytest.fixture(scope="module")
def auto_report(tmp_path_factory):
  # The smoke model with the pod configs' block settings (configs/terrafm_b.py): one scanned,
  # rematerialised block ("dots" policy).
  from terrafm_jax.train import dry_run
  return dry_run.run(_config(scan_layers=True, remat=True, remat_policy="dots"), "v5e:2x2",
                     str(tmp_path_factory.mktemp("dry")))


def test_smoke_step_fits_v5e_with_xla_attention_and_no_activation_gathers(auto_report):
  r = auto_report
  assert (r.num_chips, r.device_kind, r.mesh["data"]) == (4, "TPU v5 lite", 4)
  assert r.fits and 0 < r.peak_gib < r.hbm_gib == 16
  assert r.attention.startswith("XLA")  # "auto" on TPU: XLA's fused attention
  assert "all-gather" not in r.collectives and "all-to-all" not in r.collectives
  assert r.collectives["all-reduce"][0] >= 1  # the gradient / metric reductions
  hlo = open(r.hlo_path).read()
  assert "terrafm_attention" not in hlo and "terrafm_resample" not in hlo  # CPU kernels stay CPU
  assert " while(" in hlo  # the blocks run as one loop (model.scan_layers)
  # The dtype policy: the ViT's matmuls in bf16, the DINO head's softmax and loss in f32.
  assert r.dot_dtypes.get("bf16", 0) > 0 and r.dot_dtypes.get("f32", 0) > 0
  assert r.compile_s > 0 and r.model_flops > 0


def test_pallas_attention_reaches_the_tpu_hlo(tmp_path):
  from terrafm_jax.train import dry_run
  r = dry_run.run(_config(attention_impl="pallas"), "v5e:2x2", str(tmp_path))
  assert r.fits and r.attention.startswith("Pallas splash")
  assert "all-gather" not in r.collectives and "all-to-all" not in r.collectives


def test_does_not_fit_names_what_to_change(auto_report, monkeypatch):
  from terrafm_jax.train import dry_run
  monkeypatch.setattr(auto_report, "hbm_gib", auto_report.peak_gib / 2)
  with pytest.raises(dry_run.DoesNotFit, match=r"(?s)DOES NOT FIT.*2 samples per chip.*"
                     r"global_batch_size.*remat=True.*fsdp=-1"):
    dry_run.check_fits(auto_report, _config())


def test_compiler_out_of_memory_is_does_not_fit(monkeypatch, tmp_path):
  """The TPU compiler may refuse a program itself (RESOURCE_EXHAUSTED, e.g. B/16 at 64 per chip on
  v5e-256); that is the same one error naming what to change, not a traceback."""
  import jax
  from terrafm_jax.train import dry_run

  class _Refused:
    def lower(self, *args):
      return self

    def compile(self):
      raise jax.errors.JaxRuntimeError(
          "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
          "temporaries (17.08G) exceeds available HBM (15.75G).")

  monkeypatch.setattr(dry_run.assemble, "jit_step", lambda *a, **k: _Refused())
  with pytest.raises(dry_run.DoesNotFit, match=r"v5e:2x2: the TPU compiler ran out of HBM for "
                     r"Mu/8 at 2 samples per chip \(RESOURCE_EXHAUSTED.*global_batch_size.*fsdp"):
    dry_run.run(_config(), "v5e:2x2", str(tmp_path))


def test_unknown_topology_is_a_config_error():
  from terrafm_jax.errors import ConfigError
  from terrafm_jax.train import dry_run
  with pytest.raises(ConfigError, match="--dry_run='v5e-7'"):
    dry_run.topology_devices("v5e-7")


def test_collectives_parser_counts_kinds_and_bytes():
  from terrafm_jax.train import dry_run
  hlo = ("  %ar = f32[1024,768]{1,0} all-reduce(f32[1024,768]{1,0} %g), replica_groups={}\n"
         "  %ag = (bf16[4,256]{1,0}, bf16[8]{0}) all-gather-start(bf16[1,256]{1,0} %x)\n"
         "  %agd = bf16[4,256]{1,0} all-gather-done(%ag)\n"
         "  %d = bf16[16,64]{1,0} dot(bf16[16,32]{1,0} %a, bf16[32,64]{1,0} %b)\n")
  assert dry_run.collectives(hlo) == {"all-reduce": (1, 1024 * 768 * 4),
                                      "all-gather": (1, 4 * 256 * 2 + 8 * 2)}
  assert dry_run.dot_dtypes(hlo) == {"bf16": 1}


def test_cli_dry_run_prints_the_report(tmp_path):
  out = subprocess.run(
      [sys.executable, "-m", "terrafm_jax.train", "--config=configs/smoke.py:test",
       f"--workdir={tmp_path}", "--dry_run=v5e:2x2", "--config.model.dtype=bfloat16"],
      capture_output=True, text=True, timeout=600, check=False, cwd=REPO)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "dry run: v5e:2x2 (4 x TPU v5 lite)" in out.stdout
  assert "GiB of 16 GiB: fits" in out.stdout
  assert list((tmp_path / "dry_run").glob("v5e_2x2_b8.hlo.txt"))
