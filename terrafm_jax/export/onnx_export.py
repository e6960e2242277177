"""ONNX graphs of the encoder, one per input modality, that take raw units and need no terrafm-jax.

An export has to be usable where neither JAX nor this package is installed (issue #25), so each
graph carries everything between the user's array and the embedding that can be done without
looking at metadata:

  * Normalisation is inside the graph. The input is the contract's raw units, NCHW float32 in the
    contract's band order: S2 (`s2_l1c`, `s2_l2a`) harmonised DN (reflectance x 10000, the +1000
    offset of processing baseline >= 04.00 already removed, B10 dropped for L1C), S1 gamma0 in dB.
    The graph computes (x - mean) / std per band with the contract's statistics and maps S2 nodata
    (DN 0) to 0, the band mean, exactly as training does (terrafm_jax/train/device_crops.py
    `normalize_tiles`). S1 has no nodata rule in dB (NaN is not allowed, as in prepared data).
  * The S2 offset removal stays outside: it is decided per product from its processing baseline,
    or from the data for products without one (DATA.md 2.6), which a fixed graph cannot know. So
    is the band selection and resampling to the 10 m grid.
  * The image size is fixed (224 by default) and the batch axis is dynamic. When the export size
    differs from the size the position embedding was trained at, the interpolated embedding is
    computed once at export time (PyTorch bicubic, as `TerraFMTorch`) and stored as a constant,
    so the graph holds no Resize.
  * Outputs are named: "cls" (B, d), the final-norm CLS token, and "patch_tokens" (B, N, d), the
    patch tokens in row-major patch order (N = (img_size / patch)^2), as `TerraFMTorch.forward`.
  * The contract, modality, variant and units are also written into each file's metadata
    (`custom_metadata_map` in onnxruntime), so one .onnx file still says what it expects.

The graphs are traced from `TerraFMTorch` loaded strictly with released-layout weights, with the
torch.export-based exporter of torch.onnx (it needs `onnxscript`): pip install 'terrafm-jax[onnx]'.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from typing import Any, Mapping

import numpy as np

from terrafm_jax.data.contract import MODALITIES, InputContract
from terrafm_jax.export import torch_import

INPUT_NAME = "pixels"
OUTPUT_NAMES = ("cls", "patch_tokens")
DEFAULT_IMG_SIZE = 224
INPUT_UNITS = {
    "s1": "S1 RTC gamma0 in dB, 10*log10(linear); no NaN",
    "s2_l1c": "S2 L1C harmonised DN (reflectance x 10000, +1000 offset removed), 0 = nodata",
    "s2_l2a": "S2 L2A harmonised DN (reflectance x 10000, +1000 offset removed), 0 = nodata",
}


def _torch():
  try:
    import torch
  except ImportError as e:
    raise ImportError("ONNX export needs PyTorch: pip install 'terrafm-jax[onnx]'") from e
  return torch


def _require_onnx():
  missing = []
  for name in ("onnx", "onnxscript"):
    try:
      __import__(name)
    except ImportError:
      missing.append(name)
  if missing:
    raise ImportError(f"ONNX export needs {', '.join(missing)}: pip install 'terrafm-jax[onnx]'")


def torch_encoder(state_dict: Mapping[str, Any], *, variant: str | None = None,
                  where: str = "state_dict"):
  """(TerraFMTorch in eval mode, variant, native img_size) from a released-layout state_dict.

  The key and shape check is the importer's (one error listing every missing, unexpected or
  mis-shaped key); the module is then loaded with strict=True.
  """
  torch = _torch()
  from terrafm_jax.export.torch_model import TerraFMTorch
  sd = torch_import.unwrap_state_dict(state_dict, where)
  inferred, img_size = torch_import.infer_variant(sd, where)
  variant = variant or inferred
  # Validation only: raises with the full listing when the layout does not match.
  torch_import.encoder_params_from_state_dict(sd, variant=variant, where=where)
  model = TerraFMTorch(variant, img_size)
  model.load_state_dict({k: torch.from_numpy(np.array(v, np.float32, order="C"))
                         for k, v in sd.items()}, strict=True)
  return model.eval(), variant, img_size


def raw_units_module(model, modality: str, contract: InputContract, img_size: int):
  """The exported nn.Module: raw units -> normalised -> one stem -> encoder -> (cls, tokens)."""
  torch = _torch()
  nn = torch.nn
  mc = contract[modality]
  patch = model.patch_size
  if img_size % patch:
    raise ValueError(f"export size {img_size} is not a multiple of the patch size {patch}")
  grid = img_size // patch
  with torch.no_grad():
    pos = model.interpolate_pos_encoding(grid * grid, img_size, img_size).detach().clone()

  class RawUnitsEncoder(nn.Module):
    def __init__(self):
      super().__init__()
      self.encoder = model
      shape = (1, mc.num_channels, 1, 1)
      self.register_buffer("mean", torch.tensor(mc.mean, dtype=torch.float32).reshape(shape))
      self.register_buffer("std", torch.tensor(mc.std, dtype=torch.float32).reshape(shape))
      self.register_buffer("pos_embed", pos)

    def forward(self, pixels):
      y = (pixels - self.mean) / self.std
      if modality != "s1":  # S2 nodata DN 0 -> 0 (the band mean), as normalize_tiles
        y = torch.where(pixels == 0, torch.zeros_like(y), y)
      enc = self.encoder
      t = enc.patch_embed(y, modality)
      t = torch.cat([enc.cls_token.expand(t.shape[0], -1, -1), t], dim=1) + self.pos_embed
      for blk in enc.blocks:
        t = blk(t)
      t = enc.norm(t)
      return t[:, 0], t[:, 1:]

  return RawUnitsEncoder().eval()


@contextlib.contextmanager
def quiet_exporter():
  """The exporter logs a warning per missing torchvision op and torch.export a FutureWarning about
  its own pytree internals, on every export; neither concerns this graph."""
  log = logging.getLogger("torch.onnx._internal.exporter._registration")
  level = log.level
  log.setLevel(logging.ERROR)
  try:
    with warnings.catch_warnings():
      warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
      yield
  finally:
    log.setLevel(level)


def export_modality(model, modality: str, contract: InputContract, path: str, *,
                    img_size: int = DEFAULT_IMG_SIZE, variant: str = "",
                    metadata: Mapping[str, str] | None = None) -> str:
  """Write one modality's graph to `path` (weights inside the file); returns the path."""
  if modality not in MODALITIES:
    raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
  _require_onnx()
  torch = _torch()
  import onnx
  module = raw_units_module(model, modality, contract, img_size)
  example = torch.zeros(2, contract[modality].num_channels, img_size, img_size)
  batch = torch.export.Dim("batch", min=1)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with torch.no_grad(), quiet_exporter():
    program = torch.onnx.export(module, (example,), dynamo=True, input_names=[INPUT_NAME],
                                output_names=list(OUTPUT_NAMES),
                                dynamic_shapes={INPUT_NAME: {0: batch}}, optimize=True,
                                verbose=False)
  proto = program.model_proto
  meta = {"terrafm.modality": modality, "terrafm.variant": variant,
          "terrafm.img_size": str(img_size), "terrafm.input_layout": "NCHW float32",
          "terrafm.input_units": INPUT_UNITS[modality],
          "terrafm.bands": ",".join(contract[modality].bands),
          "terrafm.normalisation": "inside the graph: (x - mean) / std per band" + (
              "" if modality == "s1" else "; DN 0 (nodata) -> 0"),
          "terrafm.outputs": "cls (B, d); patch_tokens (B, N, d), row-major patches",
          "terrafm.contract": json.dumps(contract.to_dict(), sort_keys=True),
          **dict(metadata or {})}
  del proto.metadata_props[:]
  for k, v in meta.items():
    proto.metadata_props.add(key=k, value=v)
  tmp = path + ".tmp"
  onnx.save_model(proto, tmp)  # one file: even L/16 (~1.2 GB fp32) is under protobuf's 2 GB
  os.replace(tmp, path)
  return path


def export_all(state_dict: Mapping[str, Any], contract: InputContract, out_dir: str, *,
               img_size: int = DEFAULT_IMG_SIZE, variant: str | None = None,
               modalities: tuple[str, ...] = MODALITIES, where: str = "state_dict",
               metadata: Mapping[str, str] | None = None) -> tuple[list[str], str, int]:
  """<out_dir>/<modality>.onnx for each modality; returns (paths, variant, native img_size)."""
  model, variant, native = torch_encoder(state_dict, variant=variant, where=where)
  paths = [export_modality(model, m, contract, os.path.join(out_dir, f"{m}.onnx"),
                           img_size=img_size, variant=variant, metadata=metadata)
           for m in modalities]
  return paths, variant, native
