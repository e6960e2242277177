"""Command line: export trained weights to the released PyTorch layout, or import them.
absl + ml_collections, as every entry point; the fields: export/config.py.

  terrafm-export --config.format=released --config.workdir=WORKDIR [--config.step=N] \
      --config.out=terrafm_b.pth
  terrafm-export --config.format=released --config.random_init --config.variant=B/16 \
      --config.out=/tmp/random_b.safetensors
  terrafm-export --config.format=bundle --config.workdir=WORKDIR --config.out=bundle.safetensors
  terrafm-export --config.format=import --config.weights=terrafm_b.pth --config.out=b.msgpack
  terrafm-export --config.format=onnx --config.weights=terrafm_b.pth [--config.img_size=224] \
      [--config.pt2] --config.out=DIR      (or --config.workdir / --config.random_init)
(`python -m terrafm_jax.export` is the same.)

`released` writes exactly the keys of the published `terrafm.py` (strict=True loadable) plus
`<name>.contract.json` (bands, order, units, normalisation); `bundle` writes the student and teacher
with fusion and DINO heads for continued pretraining; `import` converts released weights into a
Flax params file (flax.serialization msgpack) after a strict key and shape check; `onnx` writes
DIR/{s1,s2_l1c,s2_l2a}.onnx (raw units in, normalised inside the graph; dynamic batch, fixed size)
with DIR/terrafm.contract.json (and DIR/terrafm.safetensors when the weights came from a workdir
or a random init); with pt2 also DIR/<modality>.pt2, the same graphs as torch.export programs.
`released` and `onnx` also write MODEL_CARD.md beside the export (docs/MODEL_CARD.md says what it holds).
"""
from __future__ import annotations

import json
import os
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import logging
from ml_collections import config_flags

from terrafm_jax import config_schema
from terrafm_jax import console
from terrafm_jax import platforms
from terrafm_jax.data.contract import DEFAULT_CONTRACT, MODALITIES, InputContract
from terrafm_jax.export import model_card, torch_export, torch_import
from terrafm_jax.export.options import ExportOptions
from terrafm_jax.models.config import get_model_config
from terrafm_jax.models.terrafm import build_encoder


def _restore_teacher(workdir: str, step: int | None):
  from terrafm_jax.train import checkpoint  # the trainer's checkpoint layout
  return checkpoint.restore_teacher(os.path.join(workdir, "checkpoints"), step,
                                    encoder_only=False)


def _run_contract(workdir: str, step: int | None):
  """The input contract the run trained with (saved in its checkpoint), for the export."""
  from terrafm_jax.train import checkpoint  # the trainer's checkpoint layout
  return checkpoint.restore_contract(os.path.join(workdir, "checkpoints"), step)


def _run_config(workdir: str, step: int | None) -> tuple[dict | None, int | None]:
  """(the run's saved config, the step it belongs to); (None, step) when the checkpoint has none."""
  from terrafm_jax.train import checkpoint  # the trainer's checkpoint layout
  try:
    return checkpoint.restore_config(os.path.join(workdir, "checkpoints"), step)
  except (ValueError, FileNotFoundError, KeyError):
    return None, step


def _card(out_dir: str, variant: str, img_size: int, contract, contract_path: str,
          weights_path: str, args, **kw) -> str:
  """MODEL_CARD.md for an export from args.workdir, args.weights or a random init."""
  workdir = getattr(args, "workdir", None)
  if workdir:
    config, step = _run_config(workdir, args.step)
    source = "training workdir (teacher encoder)"
  else:
    config, step = None, None
    source = (f"released-layout weights file `{os.path.abspath(args.weights)}`"
              if getattr(args, "weights", None) else
              f"random initialisation (seed {args.seed}), a baseline, not a trained model")
  return model_card.write_model_card(
      out_dir, variant=variant, img_size=img_size, contract=contract,
      contract_path=contract_path, weights_path=weights_path, source=source, step=step,
      config=config, workdir=workdir, **kw)


def _host(tree):
  return jax.tree.map(np.asarray, flax.linen.meta.unbox(tree))


def _random_encoder(variant: str, img_size: int, seed: int):
  cfg = get_model_config(variant)
  cfg.img_size = img_size
  enc = build_encoder(cfg)
  x = {"s2_l2a": jnp.zeros((1, img_size, img_size, 12), jnp.float32)}
  return jax.jit(lambda k: flax.linen.meta.unbox(enc.init(k, x)["params"]))(jax.random.key(seed))


def _cmd_released(args) -> list[str]:
  if args.random_init:
    params = _host(_random_encoder(args.variant or "B/16", args.img_size, args.seed))
  else:
    params = _host(_restore_teacher(args.workdir, args.step)["encoder"])
  sd = torch_export.encoder_state_dict(params)
  variant, img_size = torch_import.infer_variant(sd)
  contract = DEFAULT_CONTRACT if args.random_init else _run_contract(args.workdir, args.step)
  written = [torch_export.save_state_dict(sd, args.out),
             torch_export.write_contract(args.out, variant, img_size, contract)]
  out_dir = os.path.dirname(os.path.abspath(args.out))
  return written + [_card(out_dir, variant, img_size, contract, written[1], written[0], args)]


def _cmd_onnx(args) -> list[str]:
  from terrafm_jax.export import onnx_export  # needs torch + onnx + onnxscript
  written, notes = [], []
  weights = os.path.join(args.out, "terrafm.safetensors")
  if args.weights:
    sd = torch_import.load_state_dict_file(args.weights)
    weights = args.weights
    beside = torch_export.contract_path_for(args.weights)
    if os.path.exists(beside):
      with open(beside, encoding="utf-8") as f:
        meta = json.load(f)
      contract = InputContract.from_dict(meta.get("contract", meta), where=beside)
      notes.append(f"input contract from `{os.path.abspath(beside)}`")
    else:
      contract = DEFAULT_CONTRACT
      notes.append("the weights file had no contract JSON beside it: the built-in contract "
                   "(DATA.md 6) is assumed")
      print(f"terrafm-export: warning: no {beside}; using the built-in input contract",
            file=sys.stderr)
  else:
    if args.random_init:
      params = _host(_random_encoder(args.variant or "B/16", args.img_size, args.seed))
      contract = DEFAULT_CONTRACT
    else:
      params = _host(_restore_teacher(args.workdir, args.step)["encoder"])
      contract = _run_contract(args.workdir, args.step)
    sd = torch_export.encoder_state_dict(params)
    written.append(torch_export.save_state_dict(sd, weights))
  paths, variant, native = onnx_export.export_all(
      sd, contract, args.out, img_size=args.img_size,
      variant=args.variant if args.weights else None,
      where=args.weights or "encoder")
  contract_path = torch_export.write_contract(
      os.path.join(args.out, "terrafm.onnx"), variant, native, contract,
      extra={"onnx": {"files": {m: f"{m}.onnx" for m in MODALITIES}, "img_size": args.img_size,
                      "input": {"name": onnx_export.INPUT_NAME, "layout": "NCHW float32",
                                "units": onnx_export.INPUT_UNITS,
                                "normalisation": "inside the graph (contract mean/std; S2 DN 0 "
                                                 "-> 0)"},
                      "outputs": list(onnx_export.OUTPUT_NAMES)}})
  written += paths + [contract_path]
  if args.pt2:  # the same modules as torch.export programs (export/torch_program.py)
    from terrafm_jax.export import torch_program  # pylint: disable=g-import-not-at-top
    model, _, _ = onnx_export.torch_encoder(sd, variant=variant, where=args.weights or "encoder")
    written += torch_program.export_all(model, contract, args.out, img_size=args.img_size)
  return written + [_card(args.out, variant, native, contract, contract_path, weights, args,
                          onnx_paths=paths, onnx_img_size=args.img_size, notes=notes)]


def _cmd_bundle(args) -> list[str]:
  teacher = _host(_restore_teacher(args.workdir, args.step))
  sd = torch_export.training_bundle(student=teacher, teacher=teacher) if args.teacher_as_student \
      else torch_export.training_bundle(student=None, teacher=teacher)
  variant, img_size = torch_import.infer_variant(torch_export.encoder_state_dict(teacher["encoder"]))
  return [torch_export.save_state_dict(sd, args.out),
          torch_export.write_contract(args.out, variant, img_size,
                                      _run_contract(args.workdir, args.step))]


def _cmd_import(args) -> list[str]:
  params, cfg = torch_import.load_pretrained(args.weights, variant=args.variant)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "wb") as f:
    f.write(flax.serialization.msgpack_serialize(params))
  with open(os.path.splitext(args.out)[0] + ".model.json", "w", encoding="utf-8") as f:
    f.write(cfg.to_json_best_effort(indent=2) + "\n")
  return [args.out]


def export(opts: ExportOptions) -> list[str]:
  """Run one export; returns the paths written."""
  return {"released": _cmd_released, "bundle": _cmd_bundle, "import": _cmd_import,
          "onnx": _cmd_onnx}[opts.format](opts)


def main(argv, config) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}", exitcode=2)
  platforms.quiet_libtpu_without_tpu()
  try:
    opts = config_schema.build(ExportOptions, config)
  except ValueError as e:
    raise app.UsageError(str(e), exitcode=2) from None
  console.configure(None, "export")  # a few lines: the files written, or one error
  try:
    written = export(opts)
  except (ValueError, FileNotFoundError, ImportError) as e:
    logging.info("export stopped", exc_info=True)
    console.error(str(e))
    return 1
  for path in written:
    print(path)
  return 0


def run() -> None:
  """Console script `terrafm-export`. The flag is defined here, not at import, so that importing
  this module (tests, notebooks) never clashes with another entry point's --config."""
  flag = config_flags.DEFINE_config_file(
      "config", os.path.join(os.path.dirname(os.path.abspath(__file__)), "config.py"),
      "export config (default: the built-in schema, terrafm_jax/export/config.py); override "
      "fields with --config.<field>=value", lock_config=True)
  app.run(lambda argv: sys.exit(main(argv, flag.value)))


if __name__ == "__main__":
  run()
