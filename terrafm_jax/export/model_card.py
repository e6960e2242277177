"""MODEL_CARD.md beside every export: what the weights expect, where they came from, how to run them
(its sections: docs/MODEL_CARD.md).

Exported weights leave this repository (issue #25), and the contract JSON alone does not tell a
reader which file is which, how well the model did, or how to call it. The card is written from
the same objects as the export (the contract, the variant, the written files), so it cannot drift
from them: the per-stem tables hold the contract's band order and statistics with every number
written as Python's shortest round-trip repr (parsing a table gives back the JSON's floats), the
provenance lists the sha256 of every written file (and of the weights file an export read), and
evaluation results are copied from the workdir when it has any (`transfer_check.json`,
`results.json`). Nothing here imports JAX or PyTorch; the card holds no date, so exporting the
same weights twice gives the same card.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
from typing import Any, Mapping, Sequence

from terrafm_jax.data import harmonize
from terrafm_jax.data.contract import BAND_GSD_M, InputContract
from terrafm_jax.models import variants

FILENAME = "MODEL_CARD.md"
STEMS = {"s1": "patch_embed.conv2d_s1", "s2_l1c": "patch_embed.conv2d_s2_l1c",
         "s2_l2a": "patch_embed.conv2d_s2_l2a"}
TABLE_HEADER = "| # | band | GSD (m) | mean | std |"
# Config entries shown in the provenance (dotted paths; the full config is in a <details> block).
CONFIG_FIELDS = ("model.variant", "model.img_size", "seed", "global_batch_size", "num_epochs",
                 "total_steps", "data.source", "data.modalities", "data.contract")
EVAL_FILES = ("transfer_check.json", "results.json", "*/results.json")

OFFSET_RULE = (
    f"S2 inputs are harmonised digital numbers: DN = reflectance x 10000 with the +"
    f"{harmonize.S2_OFFSET} offset of processing baseline >= 04.00 removed (DN - "
    f"{harmonize.S2_OFFSET}, clamped at 1; 0 stays 0 = nodata). Products with a baseline in their "
    f"id (`_N0400_` and later) carry the offset; for products without one (or N9999) it is "
    f"detected from the data: present when the minimum over bands (B10 included for L1C) of the "
    f"per-band {harmonize.DETECT_QUANTILE * 100:g} % quantile of valid pixels is >= "
    f"{harmonize.DETECT_THRESHOLD:g} DN (DATA.md 2.6). L1C drops B10 (cirrus).")


def sha256_file(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def _num(v: float) -> str:
  return repr(float(v))


def contract_tables(contract: InputContract) -> str:
  """One Markdown section and table per stem: band order, GSD, mean, std (round-trip floats)."""
  out = []
  for mc in contract.modalities:
    nodata = "none" if mc.nodata is None else _num(mc.nodata)
    if mc.name == "s1":
      nodata_note = (f"{nodata} in Major-TOM linear power, masked before the dB conversion; no "
                     "value is nodata in dB")
    else:
      nodata_note = f"{nodata} DN, normalised to 0 (the band mean)"
    out += [f"### `{mc.name}` (stem `{STEMS[mc.name]}`, {mc.num_channels} channels)", "",
            f"- units: {mc.units}", f"- nodata: {nodata_note}",
            f"- statistics: {mc.stats_source}", "", TABLE_HEADER, "|---|---|---|---|---|"]
    out += [f"| {i} | {b} | {BAND_GSD_M.get(b, '')} | {_num(m)} | {_num(s)} |"
            for i, (b, m, s) in enumerate(zip(mc.bands, mc.mean, mc.std))]
    out.append("")
  return "\n".join(out)


def _get(d: Mapping[str, Any], dotted: str) -> Any:
  for part in dotted.split("."):
    if not isinstance(d, Mapping) or part not in d:
      return None
    d = d[part]
  return d


def _config_lines(config: Mapping[str, Any]) -> list[str]:
  text = json.dumps(config, sort_keys=True, default=str)
  lines = [f"- config sha256: `{hashlib.sha256(text.encode()).hexdigest()}` (canonical JSON)"]
  for key in CONFIG_FIELDS:
    value = _get(config, key)
    if value is not None:
      lines.append(f"- `{key}`: `{json.dumps(value, default=str)}`")
  lines += ["", "<details><summary>full training config</summary>", "", "```json",
            json.dumps(config, indent=2, sort_keys=True, default=str), "```", "", "</details>"]
  return lines


def find_evaluations(workdir: str | None) -> list[tuple[str, Any]]:
  """[(path relative to the workdir, parsed JSON)] of the evaluation files a workdir holds."""
  if not workdir or not os.path.isdir(workdir):
    return []
  found = []
  for pattern in EVAL_FILES:
    for path in sorted(glob.glob(os.path.join(glob.escape(workdir), pattern))):
      try:
        with open(path, encoding="utf-8") as f:
          found.append((os.path.relpath(path, workdir), json.load(f)))
      except (OSError, ValueError) as e:
        found.append((os.path.relpath(path, workdir), {"error": f"unreadable: {e}"}))
  return found


def _transfer_lines(res: Mapping[str, Any]) -> list[str]:
  acc = res["accuracy"]
  ks = [str(k) for k in res.get("ks", next(iter(acc.values())).keys())]
  lines = [f"Real-pixel learning check: EuroSAT MS, {res.get('num_images', '?')} images, "
           f"leave-one-out k-NN accuracy ({res.get('pooling', '?')} features, "
           f"{res.get('input_size', '?')} px).", "",
           "| features | " + " | ".join(f"k = {k}" for k in ks) + " |",
           "|---|" + "---|" * len(ks)]
  for name, by_k in acc.items():
    lines.append(f"| {name} | " + " | ".join(f"{by_k[k]:.3f}" for k in ks) + " |")
  if "majority_class" in res:
    lines += ["", f"Majority class: {float(res['majority_class']):.3f}."]
  intervals = res.get("intervals") or {}
  if intervals:
    lines += ["", "Paired differences (bootstrap interval):", ""]
    for pair, by_k in intervals.items():
      lines.append(f"- {pair}: " + "; ".join(
          f"k = {k}: {v['diff']:+.3f} [{v['lo']:+.3f}, {v['hi']:+.3f}]" for k, v in by_k.items()))
  return lines


def _results_lines(rows: Sequence[Mapping[str, Any]]) -> list[str]:
  lines = ["| task | protocol | partition | metric | value | TerraFM-B (published) |",
           "|---|---|---|---|---|---|"]
  for r in rows:
    pub = r.get("published")
    lines.append(f"| {r.get('task')} | {r.get('protocol')} | {r.get('partition')} | "
                 f"{r.get('metric')} | {float(r['value']):.1f} | "
                 f"{'' if pub is None else f'{float(pub):.1f}'} |")
  return lines


def _evaluation_lines(evals: Sequence[tuple[str, Any]]) -> list[str]:
  if not evals:
    return ["No evaluation results were found beside the weights (a workdir's "
            "`transfer_check.json` or `results.json`).", ""]
  lines = []
  for rel, data in evals:
    lines += [f"From `{rel}`:", ""]
    try:
      if rel.endswith("transfer_check.json"):
        lines += _transfer_lines(data)
      else:
        lines += _results_lines(data)
    except (KeyError, TypeError, ValueError, AttributeError, StopIteration):
      lines += ["```json", json.dumps(data, indent=2, default=str)[:4000], "```"]
    lines.append("")
  return lines


def _usage(variant: str, img_size: int, weights: str, contract: str, has_onnx: bool) -> list[str]:
  load = (f'load_file("{weights}")' if weights.endswith(".safetensors")
          else f'torch.load("{weights}", weights_only=True)')
  imp = ("from safetensors.torch import load_file\n" if weights.endswith(".safetensors") else "")
  lines = ["### PyTorch", "", "```python", "import json, torch", imp +
           "from terrafm_jax.export.torch_model import TerraFMTorch  # released terrafm.py layout",
           "", f'model = TerraFMTorch("{variant}", img_size={img_size}).eval()',
           f"model.load_state_dict({load}, strict=True)",
           f'c = json.load(open("{contract}"))["contract"]["modalities"]["s2_l2a"]',
           "mean = torch.tensor(c[\"mean\"]).view(1, -1, 1, 1)",
           "std = torch.tensor(c[\"std\"]).view(1, -1, 1, 1)",
           "# dn: (B, 12, H, W) float32 harmonised DN in the table's band order",
           "x = torch.where(dn == 0, 0.0, (dn - mean) / std)",
           "with torch.no_grad():",
           '  out = model(x, "s2_l2a")  # out["cls"] (B, d), out["patch_tokens"] (B, N, d)',
           "```", ""]
  if has_onnx:
    lines += ["### ONNX (onnxruntime; needs neither PyTorch nor terrafm-jax)", "", "```python",
              "import numpy as np, onnxruntime as ort", "",
              'sess = ort.InferenceSession("s2_l2a.onnx", providers=["CPUExecutionProvider"])',
              "# raw units, NCHW float32: normalisation and nodata are inside the graph",
              'cls, tokens = sess.run(["cls", "patch_tokens"], {"pixels": dn.astype(np.float32)})',
              "```", ""]
  lines += ["### JAX (terrafm-jax)", "", "```python", "import terrafm_jax", "",
            f'model = terrafm_jax.load("{weights}")  # the contract JSON beside it is read',
            "# raw DN, channels-last; the +1000 offset is detected per image (offset='auto')",
            'out = model.encode(dn_nhwc, modality="s2_l2a")',
            'out["cls"], out["patch_tokens"]  # (B, d), (B, h, w, d)', "```", ""]
  return lines


def write_model_card(out_dir: str, *, variant: str, img_size: int, contract: InputContract,
                     contract_path: str, weights_path: str, source: str,
                     onnx_paths: Sequence[str] = (), onnx_img_size: int | None = None,
                     step: int | None = None, config: Mapping[str, Any] | None = None,
                     workdir: str | None = None, notes: Sequence[str] = ()) -> str:
  """Write <out_dir>/MODEL_CARD.md and return its path.

  source: how the weights were obtained ("workdir", "weights file", "random init"); weights_path:
  the released-layout file the export wrote or read; onnx_paths: graphs written by `onnx_export`.
  """
  dims = variants.decode_variant(variant)
  rel = lambda p: (os.path.relpath(p, out_dir) if os.path.dirname(os.path.abspath(p))
                   == os.path.abspath(out_dir) else os.path.abspath(p))
  weights_ref, contract_ref = rel(weights_path), rel(contract_path)
  lines = [f"# TerraFM {variant} encoder", "",
           "Exported by terrafm-jax (`terrafm-export`). The encoder maps one Sentinel-1 or "
           "Sentinel-2 image (one of three input stems) to a CLS embedding and patch tokens.", "",
           "## Architecture", "",
           f"- variant `{variant}`: ViT width {dims['width']}, depth {dims['depth']}, "
           f"{dims['num_heads']} heads, MLP {dims['mlp_dim']}, patch {dims['patch_size']} px",
           f"- position embedding trained for {img_size} x {img_size} px "
           f"({img_size // dims['patch_size']} x {img_size // dims['patch_size']} patches)",
           "- three patch-embedding stems (`s1` 2 channels, `s2_l1c` 12, `s2_l2a` 12) into a "
           "shared token projection, a CLS token, pre-norm transformer blocks and a final "
           "LayerNorm; key layout of the released TerraFM `terrafm.py` (strict loading)",
           "- outputs: `cls` (B, d) and `patch_tokens` (B, N, d), N = (size / patch)^2, "
           "row-major patch order"]
  if onnx_paths:
    lines += [f"- ONNX graphs: one per stem, {onnx_img_size} x {onnx_img_size} px, dynamic batch; "
              "input `pixels` (B, C, H, W) float32 in **raw units** (S2 harmonised DN, S1 dB): "
              "the per-band normalisation and the S2 nodata rule are inside the graph; the S2 "
              "offset removal is not (see below)"]
  lines += ["", "## Input contract", "",
            "Bands in the order of each table. Normalisation: (value - mean) / std per band, in "
            "the units stated; for S2, nodata (DN 0) becomes 0 after normalisation.", "",
            f"S2 offset rule: {OFFSET_RULE}", "",
            "S1: RTC gamma0 backscatter in dB, 10 * log10(max(linear, 1e-10)).", "",
            contract_tables(contract)]
  files = [(weights_path, "weights (released layout)"), (contract_path, "input contract (JSON)")]
  files += [(p, "ONNX graph") for p in onnx_paths]
  lines += ["## Provenance", "", f"- source: {source}"]
  if workdir:
    lines.append(f"- workdir: `{workdir}`")
  if step is not None:
    lines.append(f"- checkpoint step: {step}")
  lines += [f"- {n}" for n in notes]
  lines += ["", "| file | role | sha256 | bytes |", "|---|---|---|---|"]
  lines += [f"| `{rel(p)}` | {role} | `{sha256_file(p)}` | {os.path.getsize(p)} |"
            for p, role in files]
  lines.append("")
  if config:
    lines += _config_lines(config) + [""]
  lines += ["## Evaluation", ""] + _evaluation_lines(find_evaluations(workdir))
  lines += ["## Usage", ""] + _usage(variant, img_size, weights_ref, contract_ref,
                                      bool(onnx_paths))
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, FILENAME)
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    f.write("\n".join(lines).rstrip() + "\n")
  os.replace(path + ".tmp", path)
  return path
