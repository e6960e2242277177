"""Flax parameters -> PyTorch state_dicts (released layout), written as .pth or .safetensors.

The default export holds exactly the keys of the released `terrafm.py` encoder, so it loads with
`load_state_dict(strict=True)`. The training bundle (fusion, DINO heads, teacher) is a separate
file for continued pretraining. The input contract is written as JSON beside the weights.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping

import flax
import numpy as np

from terrafm_jax.data.contract import DEFAULT_CONTRACT, InputContract
from terrafm_jax.export import layout
from terrafm_jax.models import variants

FORMATS = ("pth", "safetensors")


def _flat(params: Mapping[str, Any]) -> dict[tuple[str, ...], np.ndarray]:
  params = flax.linen.meta.unbox(params)
  if isinstance(params, flax.core.FrozenDict):
    params = params.unfreeze()
  if "params" in params and len(params) == 1:
    params = params["params"]
  return {k: np.asarray(v) for k, v in flax.traverse_util.flatten_dict(params).items()}


def encoder_state_dict(encoder_params: Mapping[str, Any], *,
                       include_training_only: bool = False) -> dict[str, np.ndarray]:
  """Encoder params -> {released key: array}; fusion params only if include_training_only."""
  out = {}
  for path, value in sorted(_flat(encoder_params).items()):
    if layout.is_training_only(path) and not include_training_only:
      continue
    out.update(layout.to_torch(path, value))
  return out


def head_state_dict(head_params: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """DINO head params -> DINO's key layout (mlp.0/2/4, last_layer.weight_v / weight_g)."""
  out = {}
  for path, value in sorted(_flat(head_params).items()):
    out.update(layout.to_torch(path, value, in_head=True))
  return out


def training_bundle(student: Mapping[str, Any], teacher: Mapping[str, Any] | None = None
                    ) -> dict[str, np.ndarray]:
  """{student,teacher}.{backbone,head}.* for the full DINO model params {"encoder", "head"}."""
  out = {}
  for name, params in (("student", student), ("teacher", teacher)):
    if params is None:
      continue
    params = flax.linen.meta.unbox(params)
    for k, v in encoder_state_dict(params["encoder"], include_training_only=True).items():
      out[f"{name}.backbone.{k}"] = v
    for k, v in head_state_dict(params["head"]).items():
      out[f"{name}.head.{k}"] = v
  return out


def _writable_c_array(value: Any) -> np.ndarray:
  """A C-contiguous, writable ndarray (a copy only when needed).

  Arrays from device memory (`np.asarray(jax_array)`) are read-only views; `torch.from_numpy`
  would warn about every one of them (PyTorch tensors cannot be read-only).
  """
  value = np.asarray(value)
  if value.flags.c_contiguous and value.flags.writeable:
    return value
  return np.array(value, order="C", copy=True)


def save_state_dict(state_dict: Mapping[str, np.ndarray], path: str) -> str:
  """Write {key: array} as .pth (torch.save of CPU tensors) or .safetensors, by extension."""
  fmt = os.path.splitext(path)[1].lstrip(".")
  if fmt not in FORMATS:
    raise ValueError(f"{path}: unknown weight format {fmt!r}; use one of .pth, .safetensors")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  arrays = {k: _writable_c_array(v) for k, v in state_dict.items()}
  tmp = path + ".tmp"
  if fmt == "safetensors":
    from safetensors.numpy import save_file
    save_file(arrays, tmp)
  else:
    try:
      import torch
    except ImportError as e:
      raise ImportError("writing .pth needs PyTorch: pip install 'terrafm-jax[torch]'") from e
    torch.save({k: torch.from_numpy(v) for k, v in arrays.items()}, tmp)
  # safetensors writes through a private temporary file (mode 0600); give the export the mode any
  # other file of this user gets (0644 under the usual umask), so others can read shared weights.
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(tmp, 0o666 & ~umask)
  os.replace(tmp, path)  # never leave a half-written weight file under the final name
  return path


def contract_path_for(weights_path: str) -> str:
  return os.path.splitext(weights_path)[0] + ".contract.json"


def write_contract(weights_path: str, variant: str, img_size: int,
                   contract: InputContract = DEFAULT_CONTRACT, extra: Mapping[str, Any] = ()
                   ) -> str:
  dims = variants.decode_variant(variant)
  meta = {
      "model": {"variant": variant, "img_size": img_size, **dims,
                "layout": "TerraFM released terrafm.py (mbzuai-oryx/TerraFM @ e186ad8)"},
      "input": {
          "layout": "NCHW float32 for PyTorch (NHWC for terrafm-jax), normalised per band",
          "normalisation": "(value - mean) / std per band, units as stated per modality",
          "stems": {"s1": "patch_embed.conv2d_s1", "s2_l1c": "patch_embed.conv2d_s2_l1c",
                    "s2_l2a": "patch_embed.conv2d_s2_l2a"},
          "note": ("the released terrafm.py routes every 12-channel input through the L1C stem; "
                   "select the L2A stem explicitly for L2A data"),
      },
      "contract": contract.to_dict(),
      **dict(extra),
  }
  path = contract_path_for(weights_path)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(meta, f, indent=2)
    f.write("\n")
  return path


def export_released(encoder_params: Mapping[str, Any], variant: str, img_size: int,
                    out_path: str, contract: InputContract = DEFAULT_CONTRACT) -> list[str]:
  """Released-layout weights + the contract JSON beside them; returns the written paths."""
  sd = encoder_state_dict(encoder_params)
  return [save_state_dict(sd, out_path), write_contract(out_path, variant, img_size, contract)]
