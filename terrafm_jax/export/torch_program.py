"""torch.export programs of the encoder (`<modality>.pt2`), the same graph as the ONNX export.

Why (issue #25): PyTorch users who deploy with torch (AOTInductor, ExecuTorch, `torch.compile`)
want a serialised `torch.export.ExportedProgram` rather than an ONNX file. Each program is the
module the ONNX graph is traced from (onnx_export.raw_units_module): raw contract units in, the
contract's normalisation and the S2 nodata rule inside, a dynamic batch axis, a fixed image size,
outputs (cls, patch_tokens). Load with `torch.export.load(path).module()(pixels)`; it needs torch
only, not terrafm-jax.
"""
from __future__ import annotations

import os
from typing import Mapping

from terrafm_jax.data.contract import MODALITIES, InputContract
from terrafm_jax.export import onnx_export


def export_program(model, modality: str, contract: InputContract, path: str, *,
                   img_size: int = onnx_export.DEFAULT_IMG_SIZE,
                   metadata: Mapping[str, str] | None = None) -> str:
  """Write one modality's ExportedProgram to `path` (weights inside); returns the path."""
  if modality not in MODALITIES:
    raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
  import torch  # pylint: disable=g-import-not-at-top
  module = onnx_export.raw_units_module(model, modality, contract, img_size)
  example = torch.zeros(2, contract[modality].num_channels, img_size, img_size)
  batch = torch.export.Dim("batch", min=1)
  with torch.no_grad(), onnx_export.quiet_exporter():
    program = torch.export.export(module, (example,), dynamic_shapes={"pixels": {0: batch}})
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  extra = {"terrafm.json": __import__("json").dumps(
      {"modality": modality, "img_size": img_size, "input": "NCHW float32 raw units",
       "units": onnx_export.INPUT_UNITS[modality], "bands": list(contract[modality].bands),
       "outputs": list(onnx_export.OUTPUT_NAMES), **dict(metadata or {})}, sort_keys=True)}
  tmp = path + ".tmp"
  torch.export.save(program, tmp, extra_files=extra)
  os.replace(tmp, path)
  return path


def export_all(model, contract: InputContract, out_dir: str, *,
               img_size: int = onnx_export.DEFAULT_IMG_SIZE,
               modalities: tuple[str, ...] = MODALITIES) -> list[str]:
  """<out_dir>/<modality>.pt2 for each modality."""
  return [export_program(model, m, contract, os.path.join(out_dir, f"{m}.pt2"), img_size=img_size)
          for m in modalities]
