"""PyTorch state_dicts in the released layout -> Flax encoder parameters, strictly checked.

Every released key must be present with its exact shape and no unexpected key may remain; one
ValueError lists every missing, unexpected and mis-shaped key. The variant is inferred from the
width (cls_token / pos_embed / norm / patch-embedding shapes, by majority) and the patch size
alone, so a checkpoint with a missing block or another ViT layout (e.g. timm) still gets the full
listing against that variant's keys. Training-only Flax parameters (fusion) are absent from the
released layout: they are taken from `fill_from` (e.g. a fresh init) when given, and omitted
otherwise.

Accepted containers: {"state_dict"|"model"|"teacher": sd} wrappers (a DINO checkpoint.pth gives
its teacher), a "module." prefix, and DINO's `MultiCropWrapper` layout ("backbone.*" encoder keys
plus "head.*" DINO-head keys, which are dropped with a logged warning).
"""
from __future__ import annotations

import collections
import logging
import math
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

_log = logging.getLogger(__name__)

_WRAPPERS = ("state_dict", "model", "teacher")
_STEMS = ("conv2d_s1", "conv2d_s2_l1c", "conv2d_s2_l2a")
_EMBEDS = ("s1_embed", "s2_l1c_embed", "s2_l2a_embed")
_RELEASED_PATCH = 16
_RELEASED_GRID = 14


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


def _strip(sd: dict[str, Any], prefix: str) -> dict[str, Any]:
  return {k[len(prefix):]: v for k, v in sd.items()}


def unwrap_state_dict(sd: Mapping[str, Any], where: str = "state_dict") -> dict[str, np.ndarray]:
  """Accept {"state_dict"|"model"|"teacher": sd} wrappers, a "module." prefix and DINO's
  "backbone.*" + "head.*" layout: "backbone." is stripped and the head keys are dropped, with a
  warning, when nothing else is there (other keys stay, to be listed as unexpected)."""
  sd = dict(sd)
  for w in _WRAPPERS:
    if w in sd and isinstance(sd[w], Mapping):
      sd = dict(sd[w])
      break
  if sd and all(k.startswith("module.") for k in sd):
    sd = _strip(sd, "module.")
  backbone = _strip({k: v for k, v in sd.items() if k.startswith("backbone.")}, "backbone.")
  rest = {k: v for k, v in sd.items() if not k.startswith("backbone.")}
  if backbone and not set(backbone) & set(rest):
    head = [k for k in rest if k.startswith("head.")]
    if head and len(head) == len(rest):
      _log.warning("%s: DINO checkpoint layout: took the encoder from its 'backbone.' keys and "
                   "dropped its %d DINO-head keys (head.*)", where, len(head))
      rest = {}
    sd = {**backbone, **rest}  # anything else stays, to be listed as unexpected
  out = {}
  for k, v in sd.items():
    if hasattr(v, "detach"):
      v = v.detach().cpu().float().numpy()
    if not isinstance(v, np.ndarray):
      raise ValueError(f"{where}: entry {k!r} is a {type(v).__name__}, not a tensor")
    out[k] = v
  return out


def _infer_dims(sd: Mapping[str, np.ndarray]) -> tuple[int | None, int | None, int | None]:
  """(width, patch size, img_size) from the shapes, each None when no key tells it.

  The width is the most common answer of every key that gives it (ties: the first of cls_token,
  pos_embed, norm, proj3, the stems, the blocks), so one odd tensor becomes a shape mismatch in
  the listing rather than a wrong variant.
  """
  def shape(key):
    return tuple(np.shape(sd[key])) if key in sd else ()

  widths = []
  for key in ("cls_token", "pos_embed"):
    if len(shape(key)) == 3:
      widths.append(shape(key)[-1])
  for key in ("norm.weight", "norm.bias", "patch_embed.projection.proj3.bias"):
    if len(shape(key)) == 1:
      widths.append(shape(key)[0])
  if len(shape("patch_embed.projection.proj3.weight")) == 2:
    widths.append(shape("patch_embed.projection.proj3.weight")[0])
  for stem in _STEMS:  # A = 3 d
    s = shape(f"patch_embed.{stem}.weight")
    if len(s) == 4 and s[0] % 3 == 0:
      widths.append(s[0] // 3)
  for emb in _EMBEDS:
    s = shape(f"patch_embed.{emb}")
    if s and s[-1] % 3 == 0:
      widths.append(s[-1] // 3)
  for key in sorted(sd):
    parts = key.split(".")
    if len(parts) == 4 and parts[0] == "blocks" and parts[2:] == ["norm1", "weight"]:
      if len(shape(key)) == 1:
        widths.append(shape(key)[0])
  width = collections.Counter(widths).most_common(1)[0][0] if widths else None

  patches = [shape(f"patch_embed.{stem}.weight")[-1] for stem in _STEMS
             if len(shape(f"patch_embed.{stem}.weight")) == 4]
  if not patches:  # another ViT's patch embedding (e.g. timm's patch_embed.proj.weight)
    patches = [np.shape(v)[-1] for k, v in sorted(sd.items())
               if k.startswith("patch_embed.") and k.endswith("weight") and np.ndim(v) == 4]
  patch = collections.Counter(patches).most_common(1)[0][0] if patches else None

  img_size = None
  if len(shape("pos_embed")) == 3 and patch:
    n = shape("pos_embed")[1] - 1
    grid = math.isqrt(max(n, 0))
    if grid > 0 and grid * grid == n:
      img_size = grid * patch
  return width, patch, img_size


def _size_for_width(width: int, where: str) -> str:
  sizes = variants._SIZES  # pylint: disable=protected-access
  for size, (w, _, _, _) in sizes.items():
    if w == width:
      return size
  known = ", ".join(f"{s} {d[0]}" for s, d in sorted(sizes.items(), key=lambda x: x[1][0]))
  raise ValueError(f"{where}: embedding width {width} matches no TerraFM variant "
                   f"(widths: {known})")


def _not_terrafm(sd: Mapping[str, np.ndarray], where: str) -> ValueError:
  keys = sorted(sd)
  shown = ", ".join(keys[:8]) + (f", ... ({len(keys)} keys)" if len(keys) > 8 else "")
  return ValueError(f"{where} is not a TerraFM state_dict: missing key 'cls_token' and every "
                    f"other key that gives the embedding width (pos_embed, norm.weight, "
                    f"patch_embed.*); it holds: {shown or 'no keys'}")


def infer_variant(sd: Mapping[str, np.ndarray], where: str = "state_dict") -> tuple[str, int]:
  """(variant string, img_size) of a released-layout state_dict, from its shapes.

  Only the width and the patch size decide the variant (the depth does not), so a state_dict
  with missing or extra blocks still resolves and the strict import lists its keys. Without a
  patch-embedding or pos_embed key the released values (patch 16, 14x14 grid) are assumed.
  """
  width, patch, img_size = _infer_dims(sd)
  if width is None:
    raise _not_terrafm(sd, where)
  size = _size_for_width(width, where)
  patch = patch or _RELEASED_PATCH
  return f"{size}/{patch}", img_size or _RELEASED_GRID * patch


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
  params, _, _ = _import_encoder(sd, variant=variant, img_size=img_size, fill_from=fill_from,
                                 with_training_only=with_training_only, where=where)
  return params


def _import_encoder(sd, *, variant, img_size, fill_from, with_training_only, where
                    ) -> tuple[dict[str, Any], str, int]:
  sd = unwrap_state_dict(sd, where)
  width, patch, guessed_size = _infer_dims(sd)
  if width is None:
    raise _not_terrafm(sd, where)
  if variant is None:
    variant, default_size = infer_variant(sd, where)
  else:
    want = variants.decode_variant(variant)
    if width != want["width"] or (patch is not None and patch != want["patch_size"]):
      try:
        held = f"a {_size_for_width(width, where)}/{patch or '?'} encoder"
      except ValueError:
        held = f"an encoder of width {width}"
      raise ValueError(f"{where} holds {held}, not the requested {variant}")
    default_size = _RELEASED_GRID * want["patch_size"]
  img_size = img_size or guessed_size or default_size
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
    lines = [f"{where} does not match the released TerraFM {variant} layout (img_size {img_size}): "
             f"{len(missing)} missing, {len(unexpected)} unexpected, {len(mismatched)} mis-shaped "
             "key(s)"]
    lines += [f"  missing key: {m}" for m in missing]
    lines += [f"  unexpected key: {u} {tuple(np.shape(sd[u]))}" for u in unexpected]
    lines += [f"  shape mismatch: {m}" for m in mismatched]
    if "patch_embed.proj.weight" in unexpected:
      lines.append("  note: patch_embed.proj.* is a single-stem ViT patch embedding (timm / DINO); "
                   "TerraFM has one stem per modality plus a TokenProjection")
    raise ValueError("\n".join(lines))
  return flax.traverse_util.unflatten_dict(flat), variant, img_size


def load_pretrained(path: str, *, variant: str | None = None, fill_from=None
                    ) -> tuple[dict[str, Any], Any]:
  """(Flax encoder params, model config) from a released-layout .pth / .safetensors file."""
  sd = load_state_dict_file(path)
  params, variant, img_size = _import_encoder(sd, variant=variant, img_size=None,
                                              fill_from=fill_from, with_training_only=False,
                                              where=path)
  cfg = get_model_config(variant)
  cfg.img_size = img_size
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
