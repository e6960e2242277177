"""Behaviour of the Flax encoder: layout, fusion reduction, dtype policy, bad input."""
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from terrafm_jax.data.contract import MODALITIES
from terrafm_jax.models import axes, variants
from terrafm_jax.models.config import get_model_config
from terrafm_jax.models.terrafm import build_dino, build_encoder

CHANNELS = {"s1": 2, "s2_l1c": 12, "s2_l2a": 12}


def tiny_cfg(**kw):
  cfg = get_model_config("Mu/8")
  cfg.img_size = 32
  cfg.head.out_dim = 128
  cfg.head.hidden_dim = 32
  cfg.head.bottleneck_dim = 16
  for k, v in kw.items():
    setattr(cfg, k, v)
  return cfg


def images(batch=3, size=32, seed=0, mods=MODALITIES):
  rng = np.random.default_rng(seed)
  return {m: rng.standard_normal((batch, size, size, CHANNELS[m])).astype(np.float32)
          for m in mods}


class Jitted:
  """A module whose init/apply are jitted (eager Flax on CPU is dispatch-bound)."""

  def __init__(self, module):
    self.module = module
    self.init = jax.jit(module.init)
    self.apply = jax.jit(module.apply, static_argnames=("train", "out_indices"))


@pytest.fixture(scope="module")
def tiny():
  enc = Jitted(build_encoder(tiny_cfg()))
  variables = enc.init(jax.random.key(0), images(1, mods=("s2_l2a",)))
  return enc, flax.linen.meta.unbox(variables["params"]), variables


def test_decode_variant_table_and_errors():
  assert variants.decode_variant("B/16") == dict(width=768, depth=12, num_heads=12, mlp_dim=3072,
                                                 patch_size=16)
  assert variants.decode_variant("L/16") == dict(width=1024, depth=24, num_heads=16, mlp_dim=4096,
                                                 patch_size=16)
  assert variants.decode_variant("S/8")["patch_size"] == 8
  for bad in ("X/16", "B", "B/", "b/16", "B/16/2", ""):
    with pytest.raises(ValueError, match="unknown model variant"):
      variants.decode_variant(bad)


def test_base_parameter_count_matches_released_shapes():
  # METHOD.md 1.1: 112.95 M = 85.21 M ViT + 27.74 M stems/TokenProjection (released B).
  enc = build_encoder(get_model_config("B/16"))
  shapes = jax.eval_shape(enc.init, jax.random.key(0),
                          {"s2_l2a": jax.ShapeDtypeStruct((1, 224, 224, 12), jnp.float32)})
  flat = flax.traverse_util.flatten_dict(flax.linen.meta.unbox(shapes["params"]))
  released = sum(int(np.prod(v.shape)) for k, v in flat.items() if "fusion" not in k)
  fusion = sum(int(np.prod(v.shape)) for k, v in flat.items() if "fusion" in k)
  assert round(released / 1e6, 2) == 112.95
  assert fusion == 5 * 2304 + 2304 * 2304 + 2304  # queries, key, score


def test_every_parameter_has_logical_axis_names(tiny):
  _, _, variables = tiny
  leaves = jax.tree.leaves(variables["params"],
                           is_leaf=lambda x: isinstance(x, flax.linen.LogicallyPartitioned))
  assert leaves
  known = {v for k, v in vars(axes).items() if k.isupper() and isinstance(v, str)}
  for leaf in leaves:
    assert isinstance(leaf, flax.linen.LogicallyPartitioned)
    assert len(leaf.names) == leaf.value.ndim
    assert set(leaf.names) - {None} <= known


def test_init_creates_full_tree_from_any_single_modality(tiny):
  enc, params, _ = tiny
  for mod in MODALITIES:
    other = jax.eval_shape(enc.init, jax.random.key(0), images(1, mods=(mod,)))["params"]
    other = flax.linen.meta.unbox(other)
    assert jax.tree.structure(other) == jax.tree.structure(params)


def test_single_modality_mask_reduces_exactly_to_single_path(tiny):
  enc, params, _ = tiny
  x = images(6)
  # Each sample selects exactly one modality: every modality appears twice.
  mask = np.zeros((6, 3), bool)
  mask[np.arange(6), np.arange(6) % 3] = True
  fused = enc.apply({"params": params}, x, jnp.asarray(mask))
  # Same batch shape through the released single-modality path: bit-identical per sample.
  single = {m: enc.apply({"params": params}, {m: x[m]}) for m in MODALITIES}
  for i in range(6):
    mod = MODALITIES[i % 3]
    np.testing.assert_array_equal(np.asarray(fused["cls"][i]), np.asarray(single[mod]["cls"][i]))
    np.testing.assert_array_equal(np.asarray(fused["patch_tokens"][i]),
                                  np.asarray(single[mod]["patch_tokens"][i]))


def test_fusion_uses_only_available_modalities(tiny):
  enc, params, _ = tiny
  x = images(2)
  mask = jnp.asarray([[True, True, False], [True, True, False]])
  out = enc.apply({"params": params}, x, mask)
  x2 = dict(x, s2_l2a=x["s2_l2a"] * 5.0 + 3.0)  # change a modality the mask excludes
  out2 = enc.apply({"params": params}, x2, mask)
  np.testing.assert_array_equal(np.asarray(out["cls"]), np.asarray(out2["cls"]))
  # A fused view differs from either single modality and depends on both.
  s1 = enc.apply({"params": params}, {"s1": x["s1"]})
  assert np.abs(np.asarray(out["cls"]) - np.asarray(s1["cls"])).max() > 1e-4
  x3 = dict(x, s1=x["s1"] * 2.0)
  assert np.abs(np.asarray(enc.apply({"params": params}, x3, mask)["cls"])
                - np.asarray(out["cls"])).max() > 1e-4


def test_mixed_batch_single_and_fused_samples_are_independent(tiny):
  enc, params, _ = tiny
  x = images(3)
  mask = jnp.asarray([[False, False, True], [True, True, True], [True, False, True]])
  out = enc.apply({"params": params}, x, mask)
  for i in range(3):
    alone = enc.apply({"params": params}, {m: v[i:i + 1] for m, v in x.items()}, mask[i:i + 1])
    np.testing.assert_allclose(np.asarray(out["cls"][i]), np.asarray(alone["cls"][0]),
                               atol=1e-5, rtol=0)  # batch-size float noise only


def test_outputs_and_intermediate_features(tiny):
  enc, params, _ = tiny
  x = images(2, size=48, mods=("s2_l1c",))
  out = enc.apply({"params": params}, x, out_indices=(1, 3))
  assert out["cls"].shape == (2, 64)
  assert out["patch_tokens"].shape == (2, 36, 64)
  assert [f.shape for f in out["features"]] == [(2, 6, 6, 64)] * 2
  # The last block's feature map is the final normed patch tokens.
  np.testing.assert_allclose(np.asarray(out["features"][1]).reshape(2, 36, 64),
                             np.asarray(out["patch_tokens"]), atol=1e-6)


def test_drop_path_linear_rule_and_rng(tiny):
  enc = Jitted(build_encoder(tiny_cfg(drop_path_rate=0.5)))
  _, params, _ = tiny
  x = images(8, mods=("s1",))
  eval_out = enc.apply({"params": params}, x)["cls"]
  a = enc.apply({"params": params}, x, train=True, rngs={"drop_path": jax.random.key(1)})["cls"]
  b = enc.apply({"params": params}, x, train=True, rngs={"drop_path": jax.random.key(1)})["cls"]
  c = enc.apply({"params": params}, x, train=True, rngs={"drop_path": jax.random.key(2)})["cls"]
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert np.abs(np.asarray(a) - np.asarray(c)).max() > 0
  assert np.abs(np.asarray(a) - np.asarray(eval_out)).max() > 0
  with pytest.raises(Exception, match="drop_path"):
    enc.apply({"params": params}, x, train=True)  # needs the "drop_path" rng


def test_bfloat16_compute_keeps_float32_params(tiny):
  enc16 = Jitted(build_encoder(tiny_cfg(dtype="bfloat16")))
  _, params, _ = tiny
  x = images(2, mods=("s2_l2a",))
  out16 = enc16.apply({"params": params}, x)
  out32 = Jitted(build_encoder(tiny_cfg())).apply({"params": params}, x)
  assert out16["cls"].dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out16["cls"], np.float32), np.asarray(out32["cls"]),
                             atol=0.1)
  fresh = enc16.init(jax.random.key(0), x)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(flax.linen.meta.unbox(fresh)))


def test_remat_gives_identical_outputs_and_gradients(tiny):
  _, params, _ = tiny
  x = images(2, mods=("s1",))
  plain, remat = build_encoder(tiny_cfg()), build_encoder(tiny_cfg(remat=True))
  loss = lambda m: (lambda p: jnp.sum(m.apply({"params": p}, x)["cls"] ** 2))
  g1 = jax.jit(jax.grad(loss(plain)))(params)
  g2 = jax.jit(jax.grad(loss(remat)))(params)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("remat,policy", [(False, "full"), (True, "full"), (True, "dots")])
def test_scanned_blocks_match_the_unrolled_loop(tiny, remat, policy):
  # model.scan_layers runs the same parameter tree (blocks_{i}) as one lax.scan: the forward,
  # the intermediate layers and the gradients equal the unrolled loop's (to float rounding: XLA
  # fuses the scan body apart from its neighbours).
  _, params, _ = tiny
  x = images(2, mods=("s2_l1c", "s1"))
  loop = build_encoder(tiny_cfg(remat=remat, remat_policy=policy))
  scan = build_encoder(tiny_cfg(remat=remat, remat_policy=policy, scan_layers=True))
  jaxpr = str(jax.make_jaxpr(lambda p: scan.apply({"params": p}, x))(params))
  assert jaxpr.count("scan[") == 1 and str(jax.make_jaxpr(
      lambda p: loop.apply({"params": p}, x))(params)).count("scan[") == 0
  a = loop.apply({"params": params}, x, out_indices=(3, 1))
  b = scan.apply({"params": params}, x, out_indices=(3, 1))
  np.testing.assert_allclose(np.asarray(a["cls"]), np.asarray(b["cls"]), atol=1e-6, rtol=1e-6)
  assert len(b["features"]) == 2
  for fa, fb in zip(a["features"], b["features"]):
    np.testing.assert_allclose(np.asarray(fa), np.asarray(fb), atol=1e-6, rtol=1e-6)
  loss = lambda m: (lambda p: jnp.sum(m.apply({"params": p}, x, train=True)["cls"] ** 2))
  g1 = jax.jit(jax.grad(loss(loop)))(params)
  g2 = jax.jit(jax.grad(loss(scan)))(params)
  assert jax.tree.structure(g1) == jax.tree.structure(g2)
  for u, v in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(np.asarray(u), np.asarray(v), atol=1e-6, rtol=1e-5)


def test_scanned_blocks_draw_drop_path_per_layer(tiny):
  # With drop path on, each layer draws its own per-sample mask from its own key: the output
  # depends on the key, and layer 0 (rate 0 under the linear rule) drops nothing.
  _, params, _ = tiny
  x = images(8, mods=("s2_l2a",))
  enc = build_encoder(tiny_cfg(scan_layers=True, drop_path_rate=0.5))
  run = lambda k: np.asarray(enc.apply({"params": params}, x, train=True,
                                       rngs={"drop_path": jax.random.key(k)})["cls"])
  np.testing.assert_array_equal(run(1), run(1))
  assert not np.allclose(run(1), run(2))
  np.testing.assert_allclose(np.asarray(enc.apply({"params": params}, x)["cls"]),
                             np.asarray(build_encoder(tiny_cfg()).apply({"params": params},
                                                                        x)["cls"]),
                             atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("bad,match", [
    ({"s2_l2a": np.zeros((1, 32, 32, 13), np.float32)}, "has 13 channels; the s2_l2a stem expects 12"),
    ({"s1": np.zeros((1, 32, 32, 12), np.float32)}, "has 12 channels; the s1 stem expects 2"),
    ({"s1": np.zeros((1, 32, 32, 2), np.uint16)}, "dtype uint16; expected normalised floating"),
    ({"s1": np.zeros((1, 36, 32, 2), np.float32)}, "36x32 px, not divisible by the patch size 8"),
    ({"s1": np.zeros((1, 2, 32, 32), np.float32)}, "has 32 channels; the s1 stem expects 2"),
    ({"s3": np.zeros((1, 32, 32, 2), np.float32)}, "unknown modality key"),
    ({"s1": np.zeros((32, 32, 2), np.float32)}, r"must be \(B, H, W, C\)"),
    ({"s1": np.zeros((1, 32, 32, 2), np.float32), "s2_l1c": np.zeros((1, 16, 16, 12), np.float32)},
     "must share batch and spatial size"),
])
def test_bad_inputs_raise_clear_errors(tiny, bad, match):
  enc, params, _ = tiny
  with pytest.raises(ValueError, match=match):
    enc.apply({"params": params}, bad)


def test_bad_mask_shape(tiny):
  enc, params, _ = tiny
  with pytest.raises(ValueError, match=r"modality_mask must have shape \(B, 3\)"):
    enc.apply({"params": params}, images(2), jnp.ones((2, 2), bool))


def test_bad_config_values():
  with pytest.raises(ValueError, match="fusion_heads=7 does not divide"):
    build_encoder(tiny_cfg(fusion_heads=7))
  with pytest.raises(ValueError, match="drop_path_rate"):
    build_encoder(tiny_cfg(drop_path_rate=1.5))
  with pytest.raises(ValueError, match="unknown dtype"):
    build_encoder(tiny_cfg(dtype="float8"))


def test_dino_head_weight_norm_and_logits(tiny):
  cfg = tiny_cfg()
  model = Jitted(build_dino(cfg))
  x = images(2)
  mask = jnp.asarray([[True, False, False], [False, True, True]])
  variables = model.init(jax.random.key(0), x, mask)
  params = flax.linen.meta.unbox(variables["params"])
  assert set(params) == {"encoder", "head"}
  out = model.apply({"params": params}, x, mask)
  assert out["logits"].shape == (2, 128) and out["logits"].dtype == jnp.float32
  # g is fixed to 1: rescaling the prototype directions changes nothing; logits are cosines.
  scaled = jax.tree.map(lambda a: a, params)
  scaled["head"]["last_layer"] = params["head"]["last_layer"] * 7.0
  np.testing.assert_allclose(np.asarray(model.apply({"params": scaled}, x, mask)["logits"]),
                             np.asarray(out["logits"]), atol=1e-6)
  assert np.abs(np.asarray(out["logits"])).max() <= 1.0 + 1e-5
