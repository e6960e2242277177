"""The padded Pallas (splash) attention equals attention_core, and compiles for TPU at N = 197.

Parity runs the kernel in Pallas interpret mode on CPU; the TPU check is an AOT compile for a
v5e topology on this host (libtpu, no TPU needed)."""
from __future__ import annotations

import importlib.util
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from terrafm_jax.models.attention import attention_core
from terrafm_jax.models.attention_pallas import padded_length, pallas_attention


def _rel_err(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def _inputs(shape, dtype=jnp.float32, seed=0):
  ks = jax.random.split(jax.random.PRNGKey(seed), 4)
  return tuple(jax.random.normal(k, shape, jnp.float32).astype(dtype) for k in ks)


def _fwd_and_grads(fn, q, k, v, g):
  out, vjp = jax.vjp(fn, q, k, v)
  return out, vjp(g)


def test_padded_length():
  assert [padded_length(n, 128) for n in (1, 17, 37, 128, 129, 197)] == [
      128, 128, 128, 128, 256, 256]
  assert padded_length(197, 256) == 256


@pytest.mark.parametrize("n", [37, 128])  # padded to one block; already one block
def test_parity_with_attention_core_float32(n):
  b, h, d = 2, 2, 64
  q, k, v, g = _inputs((b, n, h, d))
  scale = d ** -0.5
  pallas = jax.jit(lambda q, k, v, g: _fwd_and_grads(
      lambda *a: pallas_attention(*a, scale, interpret=True), q, k, v, g))
  ref = jax.jit(lambda q, k, v, g: _fwd_and_grads(
      lambda *a: attention_core(*a, scale), q, k, v, g))
  (out, grads), (out_ref, grads_ref) = pallas(q, k, v, g), ref(q, k, v, g)
  assert out.shape == (b, n, h, d) and out.dtype == jnp.float32
  assert np.abs(np.asarray(out) - np.asarray(out_ref)).max() <= 1e-5
  for name, a, r in zip(("dq", "dk", "dv"), grads, grads_ref):
    assert np.isfinite(np.asarray(a)).all(), name
    assert _rel_err(a, r) <= 1e-5, (name, _rel_err(a, r))


def test_bfloat16_in_bfloat16_out():
  q, k, v, _ = _inputs((1, 17, 2, 32), jnp.bfloat16)
  out = pallas_attention(q, k, v, 32 ** -0.5, interpret=True)
  assert out.dtype == jnp.bfloat16 and out.shape == q.shape
  assert _rel_err(out, attention_core(q, k, v, 32 ** -0.5)) <= 2e-2


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                    reason="libtpu not installed: no TPU compiler for the AOT compile")
def test_tpu_aot_compile_at_vit_length(monkeypatch):
  from jax.experimental import topologies
  from jax.experimental.pallas.ops.tpu import splash_attention as splash

  b, n, h, d = 2, 197, 12, 64
  # The raw kernel refuses N = 197; the padded path is what makes it usable.
  with pytest.raises(ValueError, match="should divide"):
    splash.make_splash_mha_single_device(splash.MultiHeadMask([splash.FullMask((n, n))] * h))

  # libtpu locks /tmp/libtpu_lockfile per process even with no TPU attached; an AOT compile
  # needs no device, so let it load beside another process holding libtpu (an xdist worker, a run).
  monkeypatch.setenv("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  topo = topologies.get_topology_desc(topology_name="v5e:2x2", platform="tpu")
  sharding = jax.sharding.SingleDeviceSharding(topo.devices[0])
  spec = jax.ShapeDtypeStruct((b, n, h, d), jnp.bfloat16, sharding=sharding)

  def step(q, k, v, g):
    return _fwd_and_grads(lambda *a: pallas_attention(*a, d ** -0.5), q, k, v, g)

  start = time.perf_counter()
  compiled = jax.jit(step).lower(spec, spec, spec, spec).compile()
  seconds = time.perf_counter() - start
  print(f"TPU v5e AOT lower + compile of forward + backward at N={n}: {seconds:.2f} s")
  hlo = compiled.as_text()
  # One Mosaic custom call per kernel: the forward, and the backward's dq and dkv.
  assert hlo.count('custom_call_target="tpu_custom_call"') == 3
  for kernel in ("splash_mha_fwd_segmented", "splash_mha_dq_segmented",
                 "splash_mha_dkv_segmented"):
    assert kernel in hlo, kernel
  out_info, grads_info = compiled.out_info
  assert out_info.shape == (b, n, h, d) and out_info.dtype == jnp.bfloat16
  assert all(g.shape == (b, n, h, d) and g.dtype == jnp.bfloat16 for g in grads_info)
