"""PyTorch state_dicts in the released layout -> Flax encoder parameters, strictly checked.

Every released key must be present with its exact shape and no unexpected key may remain; one
ValueError lists every missing, unexpected and mis-shaped key. Training-only Flax parameters
(fusion) are absent from the released layout: they are taken from `fill_from` (e.g. a fresh init)
when given, and omitted otherwise.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np

from terrafm_jax.export import layout
from terrafm_jax.models import variants
from terrafm_jax.models.config import get_model_config
from terrafm_jax.models.terrafm import build_encoder

_WRAPPERS = ("state_dict", "model", "teacher")
_PREFIXES = ("module.", "backbone.")


def load_state_dict_file(path: str) -> dict[str, np.ndarray]:
  """Read .pth/.pt (torch.load, weights only) or .safetensors into {key: float32 array}."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"weights file not found: {path}")
  ext = os.path.splitext(path)[1].lower()
  try:
    if ext == ".safetensors":
      from safetensors.numpy import load_file
      sd = load_file(path)
    elif ext in (".pth", ".pt", ".bin"):
      import torch
      sd = torch.load(path, map_location="cpu", weights_only=True)
    else:
      raise ValueError(f"{path}: unknown weight format {ext!r}; expected .pth, .pt or .safetensors")
  except (ValueError, FileNotFoundError):
    raise
  except Exception as e:  # corrupt / truncated files surface as many different exceptions
    raise ValueError(f"{path}: cannot read weights ({type(e).__name__}: {e})") from e
  return unwrap_state_dict(sd, where=path)


def unwrap_state_dict(sd: Mapping[str, Any], where: str = "state_dict") -> dict[str, np.ndarray]:
  """Accept {"state_dict"|"model"|"teacher": sd} wrappers and "module."/"backbone." prefixes."""
  sd = dict(sd)
  for w in _WRAPPERS:
    if w in sd and isinstance(sd[w], Mapping):
      sd = dict(sd[w])
      break
  for prefix in _PREFIXES:
    if sd and all(k.startswith(prefix) for k in sd):
      sd = {k[len(prefix):]: v for k, v in sd.items()}
  out = {}
  for k, v in sd.items():
    if hasattr(v, "detach"):
      v = v.detach().cpu().float().numpy()
    if not isinstance(v, np.ndarray):
      raise ValueError(f"{where}: entry {k!r} is a {type(v).__name__}, not a tensor")
    out[k] = v
  return out


def infer_variant(sd: Mapping[str, np.ndarray], where: str = "state_dict") -> tuple[str, int]:
  """(variant string, img_size) of a released-layout state_dict, from its shapes."""
  try:
    width = sd["cls_token"].shape[-1]
    patch = sd["patch_embed.conv2d_s1.weight"].shape[-1]
    n_pos = sd["pos_embed"].shape[1] - 1
  except KeyError as e:
    raise ValueError(f"{where} is not a TerraFM state_dict: missing key {e.args[0]!r}") from None
  depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
  for size, (w, dep, _, _) in variants._SIZES.items():  # pylint: disable=protected-access
    if w == width and dep == depth:
      grid = int(round(n_pos ** 0.5))
      return f"{size}/{patch}", grid * patch
  raise ValueError(f"{where}: width {width} and depth {depth} match no TerraFM variant "
                   f"({', '.join(sorted(variants._SIZES))})")  # pylint: disable=protected-access


def encoder_template(variant: str, img_size: int) -> dict[tuple[str, ...], Any]:
  """Flattened ShapeDtypeStructs of the full Flax encoder tree (no compute, no memory)."""
  cfg = get_model_config(variant)
  cfg.img_size = img_size
  enc = build_encoder(cfg)
  x = {"s1": jax.ShapeDtypeStruct((1, img_size, img_size, 2), jnp.float32)}
  shapes = jax.eval_shape(lambda k, x: enc.init(k, x), jax.random.key(0), x)
  return flax.traverse_util.flatten_dict(flax.linen.meta.unbox(shapes["params"]))


def encoder_params_from_state_dict(
    sd: Mapping[str, Any], *, variant: str | None = None, img_size: int | None = None,
    fill_from: Mapping[str, Any] | None = None, with_training_only: bool = False,
    where: str = "state_dict") -> dict[str, Any]:
  """Released-layout state_dict -> nested Flax encoder params (numpy float32).

  with_training_only: the state_dict must also hold the fusion parameters (a training bundle).
  """
  sd = unwrap_state_dict(sd, where)
  guessed_variant, guessed_size = infer_variant(sd, where)
  if variant is not None and variants.decode_variant(variant) != variants.decode_variant(
      guessed_variant):
    raise ValueError(f"{where} holds a {guessed_variant} encoder, not the requested {variant}")
  variant = variant or guessed_variant
  img_size = img_size or guessed_size
  template = encoder_template(variant, img_size)
  fill = (flax.traverse_util.flatten_dict(flax.linen.meta.unbox(fill_from))
          if fill_from is not None else {})

  flat, used, missing, mismatched = {}, set(), [], []
  for path, spec in sorted(template.items()):
    if layout.is_training_only(path) and not with_training_only:
      if path in fill:
        flat[path] = np.asarray(fill[path])
      continue
    key, torch_shape, inverse = layout.from_torch(path, tuple(spec.shape))
    if key not in sd:
      missing.append(f"{key} {torch_shape}")
      continue
    used.add(key)
    value = np.asarray(sd[key], np.float32)
    if tuple(value.shape) != tuple(torch_shape):
      mismatched.append(f"{key}: expected {tuple(torch_shape)}, got {tuple(value.shape)}")
      continue
    flat[path] = inverse(value)
  unexpected = sorted(set(sd) - used)
  if missing or unexpected or mismatched:
    lines = [f"{where} does not match the released TerraFM {variant} layout (img_size {img_size}):"]
    lines += [f"  missing key: {m}" for m in missing]
    lines += [f"  unexpected key: {u} {tuple(np.shape(sd[u]))}" for u in unexpected]
    lines += [f"  shape mismatch: {m}" for m in mismatched]
    raise ValueError("\n".join(lines))
  return flax.traverse_util.unflatten_dict(flat)


def load_pretrained(path: str, *, variant: str | None = None, fill_from=None
                    ) -> tuple[dict[str, Any], Any]:
  """(Flax encoder params, model config) from a released-layout .pth / .safetensors file."""
  sd = load_state_dict_file(path)
  v, size = infer_variant(sd, path)
  params = encoder_params_from_state_dict(sd, variant=variant, fill_from=fill_from, where=path)
  cfg = get_model_config(variant or v)
  cfg.img_size = size
  return params, cfg


def head_params_from_state_dict(sd: Mapping[str, np.ndarray], where: str = "head"
                                ) -> dict[str, Any]:
  """DINO-layout head state_dict (mlp.0/2/4, last_layer.weight_v/_g) -> Flax head params."""
  flat, problems = {}, []
  for key, value in sorted(sd.items()):
    parts = key.split(".")
    if parts[0] == "mlp" and len(parts) == 3 and parts[1].isdigit() and int(parts[1]) % 2 == 0:
      name = f"mlp_{int(parts[1]) // 2}"
      if parts[2] == "weight":
        flat[(name, "kernel")] = np.ascontiguousarray(np.asarray(value, np.float32).T)
      elif parts[2] == "bias":
        flat[(name, "bias")] = np.asarray(value, np.float32)
      else:
        problems.append(f"unexpected key: {key}")
    elif key == "last_layer.weight_v":
      flat[("last_layer",)] = np.ascontiguousarray(np.asarray(value, np.float32).T)
    elif key == "last_layer.weight_g":
      if not np.allclose(value, 1.0):
        problems.append(f"{key}: terrafm-jax fixes the prototype norm g to 1 "
                        "(norm_last_layer=True); this head has learned norms")
    else:
      problems.append(f"unexpected key: {key}")
  if ("last_layer",) not in flat:
    problems.append("missing key: last_layer.weight_v")
  if problems:
    raise ValueError(f"{where} is not a DINO head state_dict:\n  " + "\n  ".join(problems))
  return flax.traverse_util.unflatten_dict(flat)


def dino_params_from_bundle(sd: Mapping[str, Any], which: str = "student", *,
                            where: str = "bundle") -> dict[str, Any]:
  """A training bundle (terrafm_jax.export.torch_export.training_bundle) -> {"encoder", "head"}."""
  sd = {k: (v.detach().cpu().float().numpy() if hasattr(v, "detach") else np.asarray(v))
        for k, v in sd.items()}
  if not any(k.startswith(f"{which}.") for k in sd):
    raise ValueError(f"{where} holds no '{which}.*' keys; found prefixes "
                     f"{sorted({k.split('.')[0] for k in sd})}")
  enc = {k[len(f"{which}.backbone."):]: v for k, v in sd.items()
         if k.startswith(f"{which}.backbone.")}
  head = {k[len(f"{which}.head."):]: v for k, v in sd.items() if k.startswith(f"{which}.head.")}
  return {"encoder": encoder_params_from_state_dict(enc, with_training_only=True,
                                                    where=f"{where} ({which}.backbone)"),
          "head": head_params_from_state_dict(head, where=f"{where} ({which}.head)")}
