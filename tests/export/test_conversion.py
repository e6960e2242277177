"""State-dict files, strict import errors, training bundles, the contract JSON and the CLI."""
import json
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from terrafm_jax.data.contract import DEFAULT_CONTRACT, InputContract
from terrafm_jax.export import cli, torch_export, torch_import
from terrafm_jax.models.config import get_model_config
from terrafm_jax.models.terrafm import build_dino


def mu_cfg():
  cfg = get_model_config("Mu/8")
  cfg.img_size = 32
  cfg.head.out_dim, cfg.head.hidden_dim, cfg.head.bottleneck_dim = 64, 32, 16
  return cfg


@pytest.fixture(scope="module")
def dino():
  cfg = mu_cfg()
  model = build_dino(cfg)
  x = {m: jnp.zeros((1, 32, 32, c)) for m, c in (("s1", 2), ("s2_l1c", 12), ("s2_l2a", 12))}
  init = jax.jit(lambda k: flax.linen.meta.unbox(model.init(k, x)["params"]))
  return model, init(jax.random.key(0)), init(jax.random.key(1))


def assert_trees_equal(a, b):
  fa, fb = flax.traverse_util.flatten_dict(a), flax.traverse_util.flatten_dict(b)
  assert set(fa) == set(fb)
  for k in fa:
    np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=str(k))


@pytest.mark.parametrize("ext", ["pth", "safetensors"])
def test_released_file_round_trip_is_exact(tmp_path, dino, ext):
  pytest.importorskip("torch")
  _, student, _ = dino
  enc = student["encoder"]
  paths = torch_export.export_released(enc, "Mu/8", 32, str(tmp_path / f"w.{ext}"))
  assert [os.path.basename(p) for p in paths] == [f"w.{ext}", "w.contract.json"]
  # The weights get the mode of any other file of the user (safetensors writes 0600 temporaries).
  umask = os.umask(0)
  os.umask(umask)
  assert os.stat(paths[0]).st_mode & 0o777 == 0o666 & ~umask
  back, cfg = torch_import.load_pretrained(paths[0])
  assert cfg.variant == "Mu/8" and cfg.img_size == 32
  released = {k: v for k, v in enc.items()}
  released["patch_embed"] = {k: v for k, v in enc["patch_embed"].items() if k != "fusion"}
  assert_trees_equal(back, released)
  # Training-only fusion parameters can be filled from another tree (e.g. a fresh init).
  filled = torch_import.encoder_params_from_state_dict(
      torch_import.load_state_dict_file(paths[0]), fill_from=enc)
  assert_trees_equal(filled, enc)


def test_default_export_has_no_training_only_keys(dino):
  _, student, _ = dino
  sd = torch_export.encoder_state_dict(student["encoder"])
  assert not [k for k in sd if "fusion" in k]
  full = torch_export.encoder_state_dict(student["encoder"], include_training_only=True)
  assert sorted(set(full) - set(sd)) == ["patch_embed.fusion.key.weight",
                                         "patch_embed.fusion.queries",
                                         "patch_embed.fusion.score.weight"]


def test_contract_json_beside_weights(tmp_path, dino):
  _, student, _ = dino
  paths = torch_export.export_released(student["encoder"], "Mu/8", 32,
                                       str(tmp_path / "w.safetensors"))
  meta = json.load(open(paths[1]))
  assert meta["model"]["variant"] == "Mu/8" and meta["model"]["patch_size"] == 8
  contract = InputContract.from_dict(meta["contract"])
  DEFAULT_CONTRACT.check_compatible(contract)
  assert contract["s2_l1c"].bands[-2:] == ("B11", "B12") and "B10" not in contract["s2_l1c"].bands


def test_import_lists_every_missing_unexpected_and_misshaped_key(dino):
  _, student, _ = dino
  sd = torch_export.encoder_state_dict(student["encoder"])
  del sd["blocks.1.attn.qkv.bias"]
  del sd["norm.weight"]
  sd["blocks.0.attn.extra"] = np.zeros(3, np.float32)
  sd["blocks.2.mlp.fc1.weight"] = np.zeros((255, 64), np.float32)
  with pytest.raises(ValueError) as e:
    torch_import.encoder_params_from_state_dict(sd, where="bad.pth")
  msg = str(e.value)
  assert "bad.pth" in msg
  assert "missing key: blocks.1.attn.qkv.bias (192,)" in msg
  assert "missing key: norm.weight (64,)" in msg
  assert "unexpected key: blocks.0.attn.extra (3,)" in msg
  assert "shape mismatch: blocks.2.mlp.fc1.weight: expected (256, 64), got (255, 64)" in msg


def test_import_rejects_other_architectures(dino):
  _, student, _ = dino
  sd = torch_export.encoder_state_dict(student["encoder"])
  with pytest.raises(ValueError, match="holds a Mu/8 encoder, not the requested B/16"):
    torch_import.encoder_params_from_state_dict(sd, variant="B/16")
  resnet_like = {"conv1.weight": np.zeros((64, 3, 7, 7), np.float32)}
  with pytest.raises(ValueError, match="is not a TerraFM state_dict: missing key 'cls_token'"):
    torch_import.encoder_params_from_state_dict(resnet_like)
  # One odd tensor is outvoted by the other width-giving keys: a shape mismatch in the listing.
  odd = dict(sd, cls_token=np.zeros((1, 1, 100), np.float32))
  with pytest.raises(ValueError, match=r"shape mismatch: cls_token: expected \(1, 1, 64\)"):
    torch_import.encoder_params_from_state_dict(odd)
  wide = {k: np.zeros(v.shape[:-1] + (100,), np.float32) for k, v in sd.items()
          if k in ("cls_token", "pos_embed")}
  with pytest.raises(ValueError, match="embedding width 100 matches no TerraFM variant"):
    torch_import.encoder_params_from_state_dict(wide)


def test_import_unwraps_common_checkpoint_containers(dino):
  _, student, _ = dino
  sd = torch_export.encoder_state_dict(student["encoder"])
  wrapped = {"teacher": {f"backbone.{k}": v for k, v in sd.items()}}
  a = torch_import.encoder_params_from_state_dict(wrapped)
  b = torch_import.encoder_params_from_state_dict(sd)
  assert_trees_equal(a, b)


def test_corrupt_weight_files_name_the_file(tmp_path):
  for name in ("broken.pth", "broken.safetensors"):
    path = tmp_path / name
    path.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError, match=name):
      torch_import.load_state_dict_file(str(path))
  with pytest.raises(ValueError, match="unknown weight format"):
    torch_import.load_state_dict_file(__file__)


def test_training_bundle_round_trip_keeps_fusion_and_heads(tmp_path, dino):
  model, student, teacher = dino
  sd = torch_export.training_bundle(student, teacher)
  assert "student.backbone.patch_embed.fusion.queries" in sd
  assert "teacher.head.last_layer.weight_v" in sd and "teacher.head.mlp.4.weight" in sd
  np.testing.assert_array_equal(sd["student.head.last_layer.weight_g"], 1.0)
  path = torch_export.save_state_dict(sd, str(tmp_path / "bundle.safetensors"))
  from safetensors.numpy import load_file
  raw = load_file(path)
  for which, ref in (("student", student), ("teacher", teacher)):
    back = torch_import.dino_params_from_bundle(raw, which, where=path)
    assert_trees_equal(back, ref)
  x = {m: np.random.default_rng(0).standard_normal((2, 32, 32, c)).astype(np.float32)
       for m, c in (("s1", 2), ("s2_l1c", 12), ("s2_l2a", 12))}
  mask = jnp.asarray([[True, True, False], [False, False, True]])
  back = torch_import.dino_params_from_bundle(raw, "teacher")
  np.testing.assert_array_equal(np.asarray(model.apply({"params": back}, x, mask)["logits"]),
                                np.asarray(model.apply({"params": teacher}, x, mask)["logits"]))


def test_cli_random_init_export_and_import(tmp_path, capsys):
  out = tmp_path / "mu.safetensors"
  from terrafm_jax import config_schema
  from terrafm_jax.export import config as export_config
  from terrafm_jax.export.options import ExportOptions
  def main(**overrides):  # the command line's path: the schema, overridden, then run
    c = export_config.get_config()
    c.update(overrides)
    return cli.main(["terrafm-export"], c)
  assert main(format="released", random_init=True, variant="Mu/8", img_size=32,
              out=str(out)) == 0
  assert out.exists() and (tmp_path / "mu.contract.json").exists()
  msgpack = tmp_path / "mu.msgpack"
  assert main(format="import", weights=str(out), out=str(msgpack)) == 0
  params = flax.serialization.msgpack_restore(msgpack.read_bytes())
  assert params["pos_embed"].shape == (1, 17, 64)
  assert main(format="import", weights=str(out), variant="B/16",
              out=str(tmp_path / "x.msgpack")) == 1
  assert "not the requested B/16" in capsys.readouterr().err
  with pytest.raises(ValueError, match="format=import takes its weights from exactly one of "
                     "weights; got workdir"):
    config_schema.build(ExportOptions, {"format": "import", "workdir": "w", "out": "x"})
