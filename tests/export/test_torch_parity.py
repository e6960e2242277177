"""Flax <-> PyTorch (released layout) conversion: strict loading and forward parity (fp32)."""
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from terrafm_jax.export import torch_export, torch_import
from terrafm_jax.models.config import get_model_config
from terrafm_jax.models.terrafm import build_encoder

torch = pytest.importorskip("torch")
from terrafm_jax.export.torch_model import TerraFMTorch  # noqa: E402  (needs torch)

CHANNELS = {"s1": 2, "s2_l1c": 12, "s2_l2a": 12}
TOL = 1e-5


def flax_encoder(variant, img_size=224):
  cfg = get_model_config(variant)
  cfg.img_size = img_size
  enc = build_encoder(cfg)
  x = {"s2_l2a": jnp.zeros((1, img_size, img_size, 12), jnp.float32)}
  params = jax.jit(lambda k: flax.linen.meta.unbox(enc.init(k, x)["params"]))(jax.random.key(3))
  return enc, jax.jit(lambda p, x: enc.apply({"params": p}, x)), params


def torch_forward(model, x_nhwc, mod, dtype=torch.float32):
  with torch.no_grad():
    out = model(torch.from_numpy(x_nhwc.transpose(0, 3, 1, 2).copy()).to(dtype), mod)
  return {k: v.double().numpy() for k, v in out.items()}


def max_diff(a, b):
  return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


@pytest.fixture(scope="module")
def ti():
  enc, fwd, params = flax_encoder("Ti/16")
  sd = torch_export.encoder_state_dict(params)
  model = TerraFMTorch("Ti/16").eval()
  model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in sd.items()}, strict=True)
  return fwd, params, model


@pytest.mark.parametrize("size", [224, 96])
@pytest.mark.parametrize("mod", ["s1", "s2_l1c", "s2_l2a"])
def test_flax_to_torch_parity(ti, mod, size):
  fwd, params, model = ti
  x = np.random.default_rng(size + len(mod)).standard_normal(
      (2, size, size, CHANNELS[mod])).astype(np.float32)
  ours = fwd(params, {mod: x})
  ref = torch_forward(model, x, mod)
  assert ours["patch_tokens"].shape == (2, (size // 16) ** 2, 192)
  assert max_diff(ours["cls"], ref["cls"]) <= TOL
  assert max_diff(ours["patch_tokens"], ref["patch_tokens"]) <= TOL


@pytest.mark.parametrize("size", [224, 96])
def test_torch_to_flax_parity(size):
  torch.manual_seed(size)
  model = TerraFMTorch("Ti/16").eval()
  sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  params = torch_import.encoder_params_from_state_dict(sd)
  cfg = get_model_config("Ti/16")
  fwd = jax.jit(lambda p, x: build_encoder(cfg).apply({"params": p}, x))
  for mod in ("s1", "s2_l1c", "s2_l2a"):
    x = np.random.default_rng(7).standard_normal((2, size, size, CHANNELS[mod])).astype(np.float32)
    ours, ref = fwd(params, {mod: x}), torch_forward(model, x, mod)
    assert max_diff(ours["cls"], ref["cls"]) <= TOL
    assert max_diff(ours["patch_tokens"], ref["patch_tokens"]) <= TOL


def test_base_released_layout_parity_against_float64():
  """TerraFM-B: the export loads strictly into the released layout, and both frameworks' fp32
  forwards agree with a float64 evaluation of the same weights to 1e-5."""
  _, fwd, params = flax_encoder("B/16")
  sd = torch_export.encoder_state_dict(params)
  model = TerraFMTorch("B/16")
  expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
  assert {k: v.shape for k, v in sd.items()} == expected  # exactly the released keys and shapes
  model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in sd.items()}, strict=True)
  model64 = TerraFMTorch("B/16").double().eval()
  model64.load_state_dict({k: torch.from_numpy(v.astype(np.float64)) for k, v in sd.items()})
  model.eval()
  for size, mod in ((224, "s2_l2a"), (96, "s1")):
    x = np.random.default_rng(size).standard_normal((1, size, size, CHANNELS[mod])).astype(
        np.float32)
    ours, ref32 = fwd(params, {mod: x}), torch_forward(model, x, mod)
    ref64 = torch_forward(model64, x, mod, torch.float64)
    for key in ("cls", "patch_tokens"):
      assert max_diff(ours[key], ref64[key]) <= TOL
      assert max_diff(ref32[key], ref64[key]) <= TOL
