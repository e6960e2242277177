"""Encoder weights for evaluation, from any of the three places a user holds them.

  * a training workdir (`<workdir>/checkpoints`, local or gs://): the teacher encoder of the latest
    (or a given) step, with the run's model config and input contract from the same checkpoint;
  * an exported `.pth` / `.pt` / `.safetensors` in the released `terrafm.py` layout (the published
    TerraFM-B included): strictly key- and shape-checked; the contract from `<name>.contract.json`
    beside it when present, otherwise the built-in contract (the published file has none; its
    normalisation is unpublished, METHOD.md 8) and a warning;
  * `random:<variant>` (e.g. `random:B/16`): the architecture at its random initialisation, the
    baseline every table shows; `random:<workdir>`: that run's architecture and contract;
  * `pixels`: no model; the normalised input pixels, flattened, are the features (a baseline for
    k-NN and linear probes).

Every result records `provenance` (kind, source, step, variant, a digest of the parameters) and
the contract's digest, so a number can always be traced back to the weights that produced it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from terrafm_jax.data.contract import DEFAULT_CONTRACT, InputContract
from terrafm_jax.models import variants
from terrafm_jax.models.config import get_model_config
from terrafm_jax.models.terrafm import TerraFMEncoder, build_encoder

WEIGHT_EXTENSIONS = (".pth", ".pt", ".safetensors")
PIXELS = "pixels"  # --weights=pixels: the normalised pixels as features (a baseline)


@dataclasses.dataclass
class Weights:
  params: Any                               # Flax encoder params (host numpy arrays)
  model_config: ml_collections.ConfigDict   # get_model_config() schema
  contract: InputContract
  provenance: dict[str, Any]

  @property
  def variant(self) -> str:
    return self.model_config.variant

  def encoder(self, **overrides) -> TerraFMEncoder:
    return build_encoder(self.model_config, **overrides)


def contract_digest(contract: InputContract) -> str:
  """Short stable hash of the contract (bands, units, statistics)."""
  text = json.dumps(contract.to_dict(), sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def params_digest(params: Any) -> str:
  """Short hash of every parameter's path, shape and bytes (float32)."""
  h = hashlib.sha256()
  for path, v in sorted(flax.traverse_util.flatten_dict(params).items()):
    a = np.ascontiguousarray(np.asarray(v, np.float32))
    h.update("/".join(map(str, path)).encode())
    h.update(str(a.shape).encode())
    h.update(a.tobytes())
  return h.hexdigest()[:16]


def _host(tree: Any) -> Any:
  return jax.tree.map(np.asarray, flax.linen.meta.unbox(tree))


_INITS: dict[str, Any] = {}


def random_params(model_config: ml_collections.ConfigDict, seed: int = 0) -> Any:
  """The encoder's random initialisation; one compiled init per architecture, any seed."""
  key = model_config.to_json()
  if key not in _INITS:
    enc = build_encoder(model_config)
    # One patch is enough: parameter shapes do not depend on the input size (the position
    # embedding is sized by img_size), and a small input keeps the init's compile small.
    p = enc.dims["patch_size"]
    x = {"s2_l2a": jnp.zeros((1, p, p, 12), jnp.float32)}
    _INITS[key] = jax.jit(lambda k: flax.linen.meta.unbox(enc.init(k, x)["params"]))
  return _host(_INITS[key](jax.random.key(seed)))


def _model_config_from_run(cfg: dict[str, Any], where: str) -> ml_collections.ConfigDict:
  model = cfg.get("model")
  if not isinstance(model, dict) or "variant" not in model:
    raise ValueError(f"{where}: the saved config holds no model.variant")
  out = get_model_config(model["variant"])
  for key in ("img_size", "fusion_heads", "fusion_queries", "attn_dim_mult"):
    if key in model:
      out[key] = model[key]
  out.drop_path_rate = 0.0  # evaluation: no stochastic depth
  out.dtype = "float32"
  if "out_indices" in model:
    out.out_indices = tuple(model["out_indices"])
  return out


def _from_workdir(path: str, step: int | None) -> Weights:
  from terrafm_jax.train import checkpoint  # the trainer's checkpoint layout
  ckpt = os.path.join(path, "checkpoints")
  cfg, step = checkpoint.restore_config(ckpt, step)
  model_config = _model_config_from_run(cfg, f"{ckpt} step {step}")
  contract = checkpoint.restore_contract(ckpt, step)
  params = _host(checkpoint.restore_teacher(ckpt, step))
  return Weights(params, model_config, contract,
                 {"kind": "workdir", "source": path, "step": int(step), "network": "teacher"})


def _from_file(path: str, variant: str | None, seed: int) -> Weights:
  from terrafm_jax.export import torch_export, torch_import
  # Training-only fusion parameters are absent from the released layout; a fresh init fills them
  # so that fused input still runs (and the provenance says so).
  params, model_config = torch_import.load_pretrained(path, variant=variant)
  fill = random_params(model_config, seed)
  flat = flax.traverse_util.flatten_dict(params)
  filled = []
  for k, v in flax.traverse_util.flatten_dict(fill).items():
    if k not in flat:
      flat[k] = v
      filled.append("/".join(k))
  params = flax.traverse_util.unflatten_dict(flat)
  contract_file = torch_export.contract_path_for(path)
  if os.path.exists(contract_file):
    with open(contract_file, encoding="utf-8") as f:
      meta = json.load(f)
    if "contract" not in meta:
      raise ValueError(f"{contract_file}: no 'contract' key (not a terrafm-jax contract file)")
    contract = InputContract.from_dict(meta["contract"], where=contract_file)
    contract_source = contract_file
    said = meta.get("model", {}).get("variant")
    if said and variants.decode_variant(said) != variants.decode_variant(model_config.variant):
      raise ValueError(f"{contract_file} describes a {said} model, but {path} holds a "
                       f"{model_config.variant} encoder: the contract file belongs to other weights")
  else:
    logging.warning("%s has no %s beside it: using the built-in input contract (the published "
                    "TerraFM weights come without normalisation statistics)", path,
                    os.path.basename(contract_file))
    contract, contract_source = DEFAULT_CONTRACT, "built-in (no contract file beside the weights)"
  return Weights(params, model_config, contract,
                 {"kind": "file", "source": os.path.abspath(path), "contract": contract_source,
                  "random_fusion": bool(filled)})


def load_weights(spec: str, *, step: int | None = None, variant: str | None = None,
                 seed: int = 0) -> Weights:
  """Weights from a workdir, a released-layout file or `random:<variant>` (see the module doc)."""
  if spec == PIXELS:
    # The raw-pixel baseline: "features" are the normalised input itself (eval/features.py).
    w = Weights({}, get_model_config("Mu/8"), DEFAULT_CONTRACT, {"kind": "pixels", "source": spec})
    w.provenance.update(variant="pixels", img_size=0, params_digest="pixels",
                        contract_digest=contract_digest(w.contract))
    return w
  if spec.startswith("random:"):
    arch = spec.split(":", 1)[1]
    try:
      variants.decode_variant(arch)
      model_config, contract = get_model_config(arch), DEFAULT_CONTRACT
    except ValueError:
      # random:<workdir>: that run's architecture and contract at a random initialisation.
      from terrafm_jax.train import checkpoint  # the trainer's checkpoint layout
      ckpt = os.path.join(arch, "checkpoints")
      if not os.path.isdir(ckpt):
        raise FileNotFoundError(f"--weights={spec!r}: {arch!r} is neither a variant (e.g. B/16) "
                                "nor a workdir with checkpoints/") from None
      cfg, at = checkpoint.restore_config(ckpt, step)
      model_config = _model_config_from_run(cfg, f"{ckpt} step {at}")
      contract = checkpoint.restore_contract(ckpt, at)
    w = Weights(random_params(model_config, seed), model_config, contract,
                {"kind": "random", "source": spec, "seed": seed})
  elif os.path.splitext(spec)[1].lower() in WEIGHT_EXTENSIONS:
    w = _from_file(spec, variant, seed)
  else:
    from terrafm_jax.train import workdir as workdir_lib
    with workdir_lib.reaching(spec, "weights"):
      found = (workdir_lib.resolve(spec) / "checkpoints").exists()
    if not found:
      raise FileNotFoundError(
          f"--weights={spec!r} is neither a workdir with checkpoints/, a released-layout weights "
          f"file ({', '.join(WEIGHT_EXTENSIONS)}), nor random:<variant> (e.g. random:B/16)")
    w = _from_workdir(spec, step)
  if variant is not None and variants.decode_variant(variant) != variants.decode_variant(w.variant):
    raise ValueError(f"{spec} holds a {w.variant} encoder, not the requested {variant}")
  w.provenance.update(variant=w.variant, img_size=int(w.model_config.img_size),
                      params_digest=params_digest(w.params),
                      contract_digest=contract_digest(w.contract))
  return w
