"""Import errors list every key (not the first one that variant inference trips over), DINO teacher
checkpoints load, and .pth export raises no PyTorch warning."""
import logging
import warnings

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from terrafm_jax.export import layout, torch_export, torch_import
from terrafm_jax.models.config import get_model_config
from terrafm_jax.models.terrafm import build_encoder


def released_zeros(variant="Ti/16", img_size=224):
  """A released-layout state_dict of zeros with the exact shapes of `variant` (no init)."""
  template = torch_import.encoder_template(variant, img_size)
  sd = {}
  for path, spec in template.items():
    if not layout.is_training_only(path):
      sd.update(layout.to_torch(path, np.zeros(spec.shape, np.float32)))
  return sd


def timm_vit_zeros(width=192, depth=12, patch=16, grid=14, classes=1000):
  """The key layout of a timm / DINO `VisionTransformer` (single RGB patch embedding)."""
  sd = {"cls_token": np.zeros((1, 1, width), np.float32),
        "pos_embed": np.zeros((1, grid * grid + 1, width), np.float32),
        "patch_embed.proj.weight": np.zeros((width, 3, patch, patch), np.float32),
        "patch_embed.proj.bias": np.zeros((width,), np.float32),
        "norm.weight": np.zeros((width,), np.float32), "norm.bias": np.zeros((width,), np.float32),
        "head.weight": np.zeros((classes, width), np.float32),
        "head.bias": np.zeros((classes,), np.float32)}
  shapes = {"norm1.weight": (width,), "norm1.bias": (width,),
            "attn.qkv.weight": (3 * width, width), "attn.qkv.bias": (3 * width,),
            "attn.proj.weight": (width, width), "attn.proj.bias": (width,),
            "norm2.weight": (width,), "norm2.bias": (width,),
            "mlp.fc1.weight": (4 * width, width), "mlp.fc1.bias": (4 * width,),
            "mlp.fc2.weight": (width, 4 * width), "mlp.fc2.bias": (width,)}
  for i in range(depth):
    for k, s in shapes.items():
      sd[f"blocks.{i}.{k}"] = np.zeros(s, np.float32)
  return sd


def import_error(sd, **kw):
  with pytest.raises(ValueError) as e:
    torch_import.encoder_params_from_state_dict(sd, where="ckpt.pth", **kw)
  return str(e.value)


def test_missing_last_block_lists_its_keys():
  sd = released_zeros("Ti/16")
  dropped = sorted(k for k in sd if k.startswith("blocks.11."))
  assert len(dropped) == 12
  for k in dropped:
    del sd[k]
  msg = import_error(sd)
  assert "ckpt.pth" in msg and "Ti/16" in msg
  for k in dropped:
    assert f"missing key: {k} " in msg, k
  assert "unexpected key" not in msg and "shape mismatch" not in msg
  assert "match no" not in msg


def test_timm_vit_lists_missing_and_unexpected_keys():
  msg = import_error(timm_vit_zeros())
  assert "Ti/16" in msg
  missing = [line for line in msg.splitlines() if "missing key:" in line]
  unexpected = [line for line in msg.splitlines() if "unexpected key:" in line]
  for key in ("patch_embed.conv2d_s1.weight", "patch_embed.conv2d_s2_l1c.weight",
              "patch_embed.conv2d_s2_l2a.bias", "patch_embed.s1_embed",
              "patch_embed.projection.proj1.weight", "patch_embed.projection.norm_input.weight",
              "patch_embed.projection.proj3.bias"):
    assert any(f"missing key: {key} " in line for line in missing), key
  for key in ("patch_embed.proj.weight", "patch_embed.proj.bias", "head.weight", "head.bias"):
    assert any(f"unexpected key: {key} " in line for line in unexpected), key
  # The transformer itself has the released names, so it is neither missing nor unexpected.
  assert not [line for line in missing + unexpected if "blocks." in line or "norm.weight" in line]


def test_width_of_no_variant_is_named():
  sd = timm_vit_zeros(width=100, depth=2)
  msg = import_error(sd)
  assert "width 100" in msg and "no TerraFM variant" in msg


def test_mixed_width_is_a_shape_mismatch_not_a_variant_error():
  sd = released_zeros("Ti/16")
  sd["cls_token"] = np.zeros((1, 1, 100), np.float32)
  msg = import_error(sd)
  assert "shape mismatch: cls_token: expected (1, 1, 192), got (1, 1, 100)" in msg


@pytest.fixture(scope="module")
def mu_encoder():
  cfg = get_model_config("Mu/8")
  cfg.img_size = 32
  enc = build_encoder(cfg)
  x = {"s1": jnp.zeros((1, 32, 32, 2), jnp.float32)}
  return jax.jit(lambda k: flax.linen.meta.unbox(enc.init(k, x)["params"]))(jax.random.key(0))


def _dino_teacher_sd(sd):
  """DINO's saved teacher: MultiCropWrapper(backbone, DINOHead) state_dict."""
  out = {f"backbone.{k}": v for k, v in sd.items()}
  out.update({"head.mlp.0.weight": np.zeros((32, 64), np.float32),
              "head.mlp.0.bias": np.zeros((32,), np.float32),
              "head.mlp.2.weight": np.zeros((16, 32), np.float32),
              "head.last_layer.weight_g": np.ones((64, 1), np.float32),
              "head.last_layer.weight_v": np.zeros((64, 16), np.float32)})
  return out


def test_dino_teacher_checkpoint_drops_head_and_says_so(mu_encoder, caplog):
  sd = torch_export.encoder_state_dict(mu_encoder)
  plain = torch_import.encoder_params_from_state_dict(sd)
  with caplog.at_level(logging.INFO, logger="terrafm_jax.export.torch_import"):
    got = torch_import.encoder_params_from_state_dict(_dino_teacher_sd(sd), where="teacher.pth")
  fa, fb = flax.traverse_util.flatten_dict(got), flax.traverse_util.flatten_dict(plain)
  assert set(fa) == set(fb)
  for k in fa:
    np.testing.assert_array_equal(fa[k], fb[k])
  text = caplog.text
  assert "teacher.pth" in text and "5 DINO-head keys" in text and "backbone." in text


def test_dino_checkpoint_file_with_student_and_teacher(tmp_path, mu_encoder, caplog):
  torch = pytest.importorskip("torch")
  sd = torch_export.encoder_state_dict(mu_encoder)
  teacher = {k: torch.tensor(v) for k, v in _dino_teacher_sd(sd).items()}
  student = {f"module.{k}": v + 1 for k, v in teacher.items()}
  path = tmp_path / "checkpoint.pth"
  torch.save({"student": student, "teacher": teacher, "epoch": 3}, path)
  with caplog.at_level(logging.INFO, logger="terrafm_jax.export.torch_import"):
    params, cfg = torch_import.load_pretrained(str(path))
  assert cfg.variant == "Mu/8" and cfg.img_size == 32
  np.testing.assert_array_equal(params["cls_token"], np.asarray(mu_encoder["cls_token"]))
  assert "5 DINO-head keys" in caplog.text


def test_backbone_prefix_with_other_extra_keys_is_listed_not_dropped(mu_encoder):
  sd = _dino_teacher_sd(torch_export.encoder_state_dict(mu_encoder))
  sd["optimizer.lr"] = np.zeros(1, np.float32)
  msg = import_error(sd)
  assert "unexpected key: optimizer.lr" in msg


def test_pth_export_raises_no_warning(tmp_path, mu_encoder, monkeypatch):
  torch = pytest.importorskip("torch")
  # PyTorch warns about a non-writable array only once per process, so also check every array
  # handed to torch.from_numpy directly.
  read_only = []
  from_numpy = torch.from_numpy

  def checked_from_numpy(a):
    if not a.flags.writeable:
      read_only.append(a.shape)
    return from_numpy(a)

  monkeypatch.setattr(torch, "from_numpy", checked_from_numpy)
  # Arrays from device memory are read-only views; setup.cfg filters the resulting PyTorch
  # UserWarning in pytest, so record every warning explicitly here.
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    torch_export.export_released(mu_encoder, "Mu/8", 32, str(tmp_path / "w.pth"))
    torch_export.save_state_dict(
        torch_export.training_bundle({"encoder": mu_encoder, "head": {
            "last_layer": jnp.zeros((16, 64))}}), str(tmp_path / "b.pth"))
  assert not read_only, f"{len(read_only)} read-only arrays passed to torch.from_numpy"
  msgs = [f"{w.category.__name__}: {w.message}" for w in caught]
  assert not [m for m in msgs if "writable" in m], msgs
  assert not [m for m in msgs if m.startswith("UserWarning")], msgs
