"""ONNX export (issue #25): the graphs agree with the JAX encoder on real scenes, an exported folder
runs where terrafm-jax (and PyTorch, JAX) cannot be imported, and the model card's contract tables
are the contract JSON.

Mu/8 weights with a 64 px position embedding keep the three exports and the JAX forwards small;
the graphs take raw units (S2 harmonised DN, S1 dB), so the reference is the training normaliser
(`normalize_tiles`) followed by the Flax encoder with the same weights.
"""
import json
import os
import re
import subprocess
import sys
import textwrap

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from terrafm_jax.data import harmonize
from terrafm_jax.data.contract import MODALITIES, InputContract
from terrafm_jax.export import cli, model_card, torch_export
from terrafm_jax.export.options import ExportOptions
from terrafm_jax.models.config import get_model_config
from terrafm_jax.models.terrafm import build_encoder
from terrafm_jax.train.device_crops import normalize_tiles

pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EO_SAMPLES = os.path.normpath(os.path.join(REPO, "..", "shared", "eo_samples", "terramind_majortom"))
VARIANT, SIZE = "Mu/8", 64
TOL = 1e-4
_FOLDERS = {"s1": "S1RTC", "s2_l1c": "S2L1C", "s2_l2a": "S2L2A"}
_L1C_B10 = 10  # index of B10 in the 13-band L1C files


@pytest.fixture(scope="module")
def encoder():
  cfg = get_model_config(VARIANT)
  cfg.img_size = SIZE
  enc = build_encoder(cfg)
  x = {"s2_l2a": jnp.zeros((1, SIZE, SIZE, 12), jnp.float32)}
  params = jax.jit(lambda k: flax.linen.meta.unbox(enc.init(k, x)["params"]))(jax.random.key(5))
  return jax.jit(lambda p, x: enc.apply({"params": p}, x)), jax.tree.map(np.asarray, params)


@pytest.fixture(scope="module")
def exported(encoder, tmp_path_factory):
  """A released-layout file (+ contract JSON) -> `terrafm-export onnx --weights` -> folder."""
  _, params = encoder
  root = tmp_path_factory.mktemp("onnx")
  weights = torch_export.export_released(params, VARIANT, SIZE, str(root / "mu.safetensors"))[0]
  out = root / "export"
  assert cli.export(ExportOptions(format="onnx", weights=weights, img_size=SIZE, pt2=True,
                                  out=str(out)))
  return str(out), weights


def _read(path):
  import rasterio
  with rasterio.open(path) as f:
    return f.read()  # (C, H, W)


@pytest.fixture(scope="module")
def scenes():
  """{modality: (5, C, SIZE, SIZE) float32 raw contract units}: centre crops of the five
  terramind_majortom scenes, S2 with the +1000 offset removed where detected and L1C without
  B10; one S2 image gets a nodata (DN 0) corner so the graph's nodata rule is compared too."""
  if not os.path.isdir(EO_SAMPLES):
    pytest.skip(f"real EO samples not found at {EO_SAMPLES}")
  names = sorted(os.listdir(os.path.join(EO_SAMPLES, "S1RTC")))
  out = {}
  for mod, folder in _FOLDERS.items():
    imgs = []
    for name in names:
      x = _read(os.path.join(EO_SAMPLES, folder, name))
      lo = (x.shape[1] - SIZE) // 2
      x = x[:, lo:lo + SIZE, lo:lo + SIZE]
      if mod != "s1":
        if harmonize.detect_offset(list(x)):
          x = harmonize.remove_offset(x)
        if mod == "s2_l1c":
          x = np.delete(x, _L1C_B10, axis=0)
      imgs.append(x.astype(np.float32))
    out[mod] = np.stack(imgs)
  for mod in ("s2_l1c", "s2_l2a"):
    out[mod][1, :, :12, :12] = 0.0
  return out


def _session(path):
  return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def _jax_reference(forward, params, contract, mod, x_nchw):
  raw = {mod: np.ascontiguousarray(x_nchw.transpose(0, 2, 3, 1))}
  out = forward(params, normalize_tiles(raw, contract, (mod,)))
  return np.asarray(out["cls"]), np.asarray(out["patch_tokens"])


def _parity(exported, encoder, scenes, run) -> dict[str, float]:
  """Max |diff| per modality of `run(mod, x) -> (cls, tokens)` against the JAX encoder on the real
  scenes; also checks that one image alone gives the same CLS row (the batch axis is dynamic)."""
  forward, params = encoder
  out_dir, _ = exported
  with open(os.path.join(out_dir, "terrafm.contract.json"), encoding="utf-8") as f:
    contract = InputContract.from_dict(json.load(f)["contract"])
  report = {}
  for mod in MODALITIES:
    x = scenes[mod]
    cls, tokens = run(mod, x)
    ref_cls, ref_tokens = _jax_reference(forward, params, contract, mod, x)
    assert cls.shape == ref_cls.shape == (5, 64)
    assert tokens.shape == ref_tokens.shape == (5, (SIZE // 8) ** 2, 64)
    report[mod] = max(float(np.abs(cls - ref_cls).max()), float(np.abs(tokens - ref_tokens).max()))
    np.testing.assert_allclose(run(mod, x[2:3])[0], cls[2:3], atol=1e-5)
  return report


def test_onnx_matches_jax_on_real_scenes(exported, encoder, scenes):
  out_dir, _ = exported
  sessions = {mod: _session(os.path.join(out_dir, f"{mod}.onnx")) for mod in MODALITIES}
  for mod, sess in sessions.items():
    assert [i.name for i in sess.get_inputs()] == ["pixels"]
    assert [o.name for o in sess.get_outputs()] == ["cls", "patch_tokens"]
    assert sess.get_modelmeta().custom_metadata_map["terrafm.modality"] == mod
  report = _parity(exported, encoder, scenes,
                   lambda mod, x: sessions[mod].run(["cls", "patch_tokens"], {"pixels": x}))
  print(f"ONNX vs JAX max |diff| on real scenes: {report}")
  assert max(report.values()) <= TOL, report


def test_torch_export_programs_match_jax_on_real_scenes(exported, encoder, scenes):
  """The .pt2 programs (torch.export) of the same folder: the same parity gate as the graphs."""
  import torch
  out_dir, _ = exported
  programs = {mod: torch.export.load(os.path.join(out_dir, f"{mod}.pt2")).module()
              for mod in MODALITIES}

  def run(mod, x):
    with torch.no_grad():
      return tuple(t.numpy() for t in programs[mod](torch.from_numpy(x)))

  report = _parity(exported, encoder, scenes, run)
  print(f"torch.export vs JAX max |diff| on real scenes: {report}")
  assert max(report.values()) <= TOL, report


def test_export_at_another_size_bakes_the_interpolated_position_embedding(
    exported, encoder, scenes, tmp_path):
  """A 32 px export of 64 px weights agrees with the JAX encoder's own interpolation."""
  forward, params = encoder
  _, weights = exported
  out = tmp_path / "small"
  assert cli.export(ExportOptions(format="onnx", weights=weights, img_size=32, out=str(out)))
  contract = InputContract.from_dict(json.load(open(out / "terrafm.contract.json"))["contract"])
  for mod in ("s1", "s2_l2a"):
    x = np.ascontiguousarray(scenes[mod][:, :, 8:40, 8:40])
    cls, tokens = _session(str(out / f"{mod}.onnx")).run(None, {"pixels": x})
    ref_cls, ref_tokens = _jax_reference(forward, params, contract, mod, x)
    assert tokens.shape == (5, 16, 64)
    assert float(np.abs(cls - ref_cls).max()) <= TOL
    assert float(np.abs(tokens - ref_tokens).max()) <= TOL


_ISOLATED = textwrap.dedent("""
    import json, sys

    class Blocked:
      def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("terrafm_jax", "torch", "jax"):
          raise ImportError(f"{name} is blocked in this test")
        return None

    sys.meta_path.insert(0, Blocked())
    for name in ("terrafm_jax", "torch", "jax"):
      try:
        __import__(name)
      except ImportError:
        pass
      else:
        raise SystemExit(f"{name} imported in the isolated interpreter")
    import numpy as np, onnxruntime as ort

    folder, inputs, outputs = sys.argv[1:4]
    meta = json.load(open(folder + "/terrafm.contract.json"))
    x = np.load(inputs)
    got = {}
    for mod, name in meta["onnx"]["files"].items():
      sess = ort.InferenceSession(folder + "/" + name, providers=["CPUExecutionProvider"])
      assert json.loads(sess.get_modelmeta().custom_metadata_map["terrafm.contract"]) == \\
          meta["contract"]
      got[mod + "/cls"], got[mod + "/patch_tokens"] = sess.run(None, {"pixels": x[mod]})
    np.savez(outputs, **got)
    print("isolated run ok:", sorted(sys.modules.keys() & {"terrafm_jax", "torch", "jax"}))
""")


def test_exported_folder_runs_without_terrafm_jax(exported, scenes, tmp_path):
  out_dir, _ = exported
  inputs, outputs = tmp_path / "in.npz", tmp_path / "out.npz"
  np.savez(inputs, **scenes)
  script = tmp_path / "isolated.py"
  script.write_text(_ISOLATED)
  # -I: no PYTHONPATH, no user site, not the script's folder; the editable install's finder is
  # still on sys.meta_path, hence the blocker inside the script.
  proc = subprocess.run([sys.executable, "-I", str(script), out_dir, str(inputs), str(outputs)],
                        capture_output=True, text=True, cwd=str(tmp_path), timeout=300)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert "isolated run ok: []" in proc.stdout
  got = np.load(outputs)
  for mod in MODALITIES:
    cls, tokens = _session(os.path.join(out_dir, f"{mod}.onnx")).run(None, {"pixels": scenes[mod]})
    np.testing.assert_allclose(got[f"{mod}/cls"], cls, atol=1e-6)
    np.testing.assert_allclose(got[f"{mod}/patch_tokens"], tokens, atol=1e-6)


def parse_contract_tables(markdown: str) -> dict[str, dict[str, list]]:
  """{stem: {"bands", "mean", "std"}} read back from the card's per-stem Markdown tables."""
  out, stem, in_table = {}, None, False
  for line in markdown.splitlines():
    m = re.match(r"^### `(\w+)` \(stem ", line)
    if m:
      stem, in_table = m.group(1), False
      out[stem] = {"bands": [], "mean": [], "std": []}
      continue
    if stem is None:
      continue
    if line.strip() == model_card.TABLE_HEADER:
      in_table = True
      continue
    if in_table and line.startswith("|---"):
      continue
    if in_table and line.startswith("|"):
      idx, band, _, mean, std = [c.strip() for c in line.strip("|").split("|")]
      assert int(idx) == len(out[stem]["bands"])
      out[stem]["bands"].append(band)
      out[stem]["mean"].append(float(mean))
      out[stem]["std"].append(float(std))
    elif in_table:
      stem, in_table = None, False
  return out


def _card_hashes(markdown: str) -> dict[str, str]:
  return dict(re.findall(r"^\| `([^`]+)` \| [^|]+ \| `([0-9a-f]{64})` \|", markdown, re.M))


def test_model_card_contract_tables_equal_the_contract_json(exported):
  out_dir, weights = exported
  card = open(os.path.join(out_dir, "MODEL_CARD.md"), encoding="utf-8").read()
  meta = json.load(open(os.path.join(out_dir, "terrafm.contract.json")))
  tables = parse_contract_tables(card)
  assert list(tables) == list(MODALITIES)
  for mod, d in meta["contract"]["modalities"].items():
    assert tables[mod] == {"bands": d["bands"], "mean": d["mean"], "std": d["std"]}, mod
  hashes = _card_hashes(card)
  for name in ("terrafm.contract.json", "s1.onnx", "s2_l1c.onnx", "s2_l2a.onnx"):
    assert hashes[name] == model_card.sha256_file(os.path.join(out_dir, name)), name
  assert hashes[os.path.abspath(weights)] == model_card.sha256_file(weights)
  for needle in ("`Mu/8`", "offset", "onnxruntime", "terrafm_jax.load", "TerraFMTorch",
                 "No evaluation results"):
    assert needle in card, needle


def test_released_export_writes_a_card_with_workdir_results(tmp_path):
  out = tmp_path / "rel" / "mu.safetensors"
  assert cli.export(ExportOptions(format="released", random_init=True, variant="Mu/8",
                                  img_size=32, out=str(out)))
  card = (tmp_path / "rel" / "MODEL_CARD.md").read_text()
  meta = json.loads((tmp_path / "rel" / "mu.contract.json").read_text())
  tables = parse_contract_tables(card)
  for mod, d in meta["contract"]["modalities"].items():
    assert tables[mod] == {"bands": d["bands"], "mean": d["mean"], "std": d["std"]}, mod
  assert _card_hashes(card)["mu.safetensors"] == model_card.sha256_file(str(out))
  assert "random initialisation" in card and "ONNX" not in card.split("## Usage")[1]
  # Evaluation files of a workdir go into the card (written directly: no checkpoint needed).
  wd = tmp_path / "wd"
  (wd / "eval").mkdir(parents=True)
  (wd / "transfer_check.json").write_text(json.dumps({
      "ks": [5, 20], "num_images": 270, "pooling": "cls", "input_size": 64, "majority_class": 0.1,
      "accuracy": {"trained": {"5": 0.61, "20": 0.64}, "random_init": {"5": 0.5, "20": 0.52}},
      "intervals": {"trained - random_init": {"20": {"diff": 0.12, "lo": 0.05, "hi": 0.2}}}}))
  (wd / "eval" / "results.json").write_text(json.dumps([{
      "task": "m-eurosat", "protocol": "linear", "partition": "default", "metric": "top1",
      "value": 81.3, "published": None}]))
  contract = InputContract.from_dict(meta["contract"])
  path = model_card.write_model_card(
      str(tmp_path / "rel"), variant="Mu/8", img_size=32, contract=contract,
      contract_path=str(tmp_path / "rel" / "mu.contract.json"), weights_path=str(out),
      source="training workdir", step=7, config={"seed": 3, "model": {"variant": "Mu/8"}},
      workdir=str(wd))
  card = open(path).read()
  assert "| trained | 0.610 | 0.640 |" in card
  assert "- trained - random_init: k = 20: +0.120 [+0.050, +0.200]" in card
  assert "| m-eurosat | linear | default | top1 | 81.3 |  |" in card
  assert "checkpoint step: 7" in card and "`model.variant`: `\"Mu/8\"`" in card
