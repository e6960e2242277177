"""Command line: export trained weights to the released PyTorch layout, or import them.

  terrafm-export released --workdir WORKDIR [--step N] --out terrafm_b.pth
  terrafm-export released --random-init --variant B/16 --out /tmp/random_b.safetensors
  terrafm-export bundle   --workdir WORKDIR [--step N] --out bundle.safetensors
  terrafm-export import   --weights terrafm_b.pth --out terrafm_b.msgpack

`released` writes exactly the keys of the published `terrafm.py` (strict=True loadable) plus
`<name>.contract.json` (bands, order, units, normalisation); `bundle` writes the student and teacher
with fusion and DINO heads for continued pretraining; `import` converts released weights into a
Flax params file (flax.serialization msgpack) after a strict key and shape check.
"""
from __future__ import annotations

import argparse
import os
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np

from terrafm_jax import platforms
from terrafm_jax.data.contract import DEFAULT_CONTRACT
from terrafm_jax.export import torch_export, torch_import
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
    params = _host(_random_encoder(args.variant, args.img_size, args.seed))
  else:
    params = _host(_restore_teacher(args.workdir, args.step)["encoder"])
  sd = torch_export.encoder_state_dict(params)
  variant, img_size = torch_import.infer_variant(sd)
  contract = DEFAULT_CONTRACT if args.random_init else _run_contract(args.workdir, args.step)
  return [torch_export.save_state_dict(sd, args.out),
          torch_export.write_contract(args.out, variant, img_size, contract)]


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


def main(argv: list[str] | None = None) -> int:
  platforms.quiet_libtpu_without_tpu()
  parser = argparse.ArgumentParser(prog="terrafm-export", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)
  rel = sub.add_parser("released", help="teacher backbone -> released terrafm.py layout")
  src = rel.add_mutually_exclusive_group(required=True)
  src.add_argument("--workdir", help="training workdir (reads <workdir>/checkpoints)")
  src.add_argument("--random-init", action="store_true", help="export a freshly initialised model")
  rel.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  rel.add_argument("--variant", default="B/16")
  rel.add_argument("--img-size", type=int, default=224)
  rel.add_argument("--seed", type=int, default=0)
  rel.add_argument("--out", required=True, help="output .pth or .safetensors")
  bun = sub.add_parser("bundle", help="teacher with fusion + DINO head, for continued pretraining")
  bun.add_argument("--workdir", required=True)
  bun.add_argument("--step", type=int, default=None)
  bun.add_argument("--teacher-as-student", action="store_true",
                   help="also write the teacher under student.* (to restart from the EMA model)")
  bun.add_argument("--out", required=True)
  imp = sub.add_parser("import", help="released .pth/.safetensors -> Flax params (msgpack)")
  imp.add_argument("--weights", required=True)
  imp.add_argument("--variant", default=None, help="expected variant (default: inferred)")
  imp.add_argument("--out", required=True)
  args = parser.parse_args(argv)
  try:
    written = {"released": _cmd_released, "bundle": _cmd_bundle, "import": _cmd_import}[
        args.command](args)
  except (ValueError, FileNotFoundError) as e:
    print(f"terrafm-export: error: {e}", file=sys.stderr)
    return 1
  for path in written:
    print(path)
  return 0


if __name__ == "__main__":
  sys.exit(main())
