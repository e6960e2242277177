"""The fused XLA:CPU attention kernel (terrafm_jax/ops/attention.cc) against XLA's attention.

Values and gradients follow jax.nn.dot_product_attention to float32 rounding, on shapes with odd
token counts and several heads; results are the same bits whatever batch a (sample, head) pair
is computed in (what bit-identical resume on another device count needs); NaNs propagate (the
train step's non-finite guard relies on it); and the model really runs the kernel where it
applies and XLA's ops where it doesn't.
"""
from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

from terrafm_jax.models.attention import attention, attention_core  # noqa: E402
from terrafm_jax.ops import attention_kernel, cpu_build  # noqa: E402


def _qkv(shape, seed=0, spread=1.0):
  keys = jax.random.split(jax.random.PRNGKey(seed), 4)
  return [spread * jax.random.normal(k, shape, jnp.float32) for k in keys]


def _custom_calls(fn, *args) -> int:
  return jax.jit(fn).lower(*args).compile().as_text().count("custom-call(")


def test_kernel_builds_here():
  assert attention_kernel.kernel_available()
  assert list(cpu_build.cache_dir().glob("attention-*.so"))


@pytest.mark.parametrize("shape", [(2, 13, 4, 8), (3, 197, 3, 64)])
def test_values_and_gradients_match_xla(shape):
  q, k, v, g = _qkv(shape)
  scale = shape[-1] ** -0.5
  fused = lambda *a: attention_kernel.fused_attention(*a, scale)  # noqa: E731
  ref = lambda *a: jax.nn.dot_product_attention(*a, scale=scale)  # noqa: E731
  np.testing.assert_allclose(jax.jit(fused)(q, k, v), ref(q, k, v), rtol=1e-5, atol=2e-6)
  loss = lambda f: jax.jit(jax.grad(lambda *a: jnp.sum(f(*a) * g), (0, 1, 2)))  # noqa: E731
  for got, want in zip(loss(fused)(q, k, v), loss(ref)(q, k, v)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-5)


def _float64_attention_and_grads(q, k, v, g, scale):
  q, k, v, g = (np.asarray(t, np.float64).transpose(0, 2, 1, 3) for t in (q, k, v, g))
  s = scale * q @ k.swapaxes(-1, -2)
  p = np.exp(s - s.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  out = p @ v
  dp = g @ v.swapaxes(-1, -2)
  ds = p * (dp - (g * out).sum(-1, keepdims=True))
  grads = (scale * ds @ k, scale * ds.swapaxes(-1, -2) @ q, p.swapaxes(-1, -2) @ g)
  return [t.transpose(0, 2, 1, 3) for t in (out, *grads)]


def test_as_accurate_as_xla_on_peaked_softmax():
  """Large logits (near one-hot rows, where rounding matters most): the kernel's error against
  float64 is within a small factor of XLA's own float32 error."""
  q, k, v, g = _qkv((2, 50, 2, 16), seed=6, spread=6.0)
  exact = _float64_attention_and_grads(q, k, v, g, 0.25)
  def run(f):
    out, vjp = jax.vjp(f, q, k, v)
    return [np.asarray(t, np.float64) for t in (out, *vjp(g))]
  fused = run(jax.jit(lambda *a: attention_kernel.fused_attention(*a, 0.25)))
  xla = run(jax.jit(lambda *a: jax.nn.dot_product_attention(*a, scale=0.25)))
  for e, a, b in zip(exact, fused, xla):
    err_fused, err_xla = np.abs(a - e).max(), np.abs(b - e).max()
    assert err_fused <= 4 * err_xla + 1e-6, (err_fused, err_xla)


def test_each_pair_is_computed_alone():
  """A (sample, head) pair gives the same bits in a batch of 5 or of 2, and on a second call."""
  q, k, v, g = _qkv((5, 29, 3, 16), seed=1)
  step = jax.jit(jax.value_and_grad(
      lambda q, k, v, g: jnp.sum(attention_kernel.fused_attention(q, k, v, 0.25) * g), (0, 1, 2)))
  out_all = jax.jit(lambda *a: attention_kernel.fused_attention(*a, 0.25))(q, k, v)
  out_two = jax.jit(lambda *a: attention_kernel.fused_attention(*a, 0.25))(q[3:], k[3:], v[3:])
  np.testing.assert_array_equal(out_all[3:], out_two)
  _, grads_all = step(q, k, v, g)
  _, grads_two = step(q[3:], k[3:], v[3:], g[3:])
  _, again = step(q, k, v, g)
  for a, b, c in zip(grads_all, grads_two, again):
    np.testing.assert_array_equal(a[3:], b)
    np.testing.assert_array_equal(a, c)


def test_nan_propagates_to_its_sample_only():
  q, k, v, g = _qkv((2, 11, 2, 8), seed=2)
  q = q.at[1, 4, 0, 3].set(jnp.nan)
  out = jax.jit(lambda *a: attention_kernel.fused_attention(*a, 0.3))(q, k, v)
  assert np.isnan(np.asarray(out[1, 4, 0])).all() and np.isfinite(np.asarray(out[0])).all()
  grads = jax.jit(jax.grad(lambda *a: jnp.sum(attention_kernel.fused_attention(*a, 0.3) * g),
                           (0, 1, 2)))(q, k, v)
  assert all(np.isnan(np.asarray(d[1])).any() for d in grads)
  assert all(np.isfinite(np.asarray(d[0])).all() for d in grads)


def test_model_path_uses_the_kernel_only_where_it_applies():
  q, k, v, _ = _qkv((2, 13, 4, 8), seed=3)
  assert _custom_calls(lambda *a: attention(*a, 0.35), q, k, v) == 1
  assert _custom_calls(lambda *a: attention(*a, 0.35, impl="core"), q, k, v) == 0
  bf = [t.astype(jnp.bfloat16) for t in (q, k, v)]
  assert _custom_calls(lambda *a: attention(*a, 0.35), *bf) == 0  # float32 only
  np.testing.assert_allclose(jax.jit(lambda *a: attention(*a, 0.35))(q, k, v),
                             attention_core(q, k, v, 0.35), rtol=1e-5, atol=2e-6)
  # Under jax.checkpoint the backward pass still runs the kernel (forward recomputed + backward).
  g = jnp.ones_like(q)
  remat = jax.checkpoint(lambda *a: jnp.sum(attention(*a, 0.35) * g))
  assert _custom_calls(jax.grad(remat, (0, 1, 2)), q, k, v) >= 2


def test_vmap_runs_each_slice():
  q, k, v, _ = _qkv((3, 2, 9, 2, 8), seed=4)
  fused = jax.jit(jax.vmap(lambda *a: attention_kernel.fused_attention(*a, 0.3)))(q, k, v)
  ref = jax.vmap(lambda *a: jax.nn.dot_product_attention(*a, scale=0.3))(q, k, v)
  np.testing.assert_allclose(fused, ref, rtol=1e-5, atol=2e-6)


def test_shape_mismatch_is_a_clear_error():
  q, k, v, _ = _qkv((2, 13, 4, 8), seed=5)
  with pytest.raises(Exception, match="q, k and v shapes differ"):
    jax.jit(lambda *a: attention_kernel._forward(*a, 0.3))(q, k[:, :7], v[:, :7])


def test_build_failure_names_the_source_and_shows_the_compiler(tmp_path, monkeypatch):
  monkeypatch.setenv("TERRAFM_KERNEL_CACHE", str(tmp_path))
  broken = tmp_path / "cxx"
  broken.write_text("#!/bin/sh\necho 'cc1plus: fatal error: out of cheese' >&2\nexit 1\n")
  broken.chmod(0o755)
  monkeypatch.setenv("CXX", str(broken))
  with pytest.raises(cpu_build.KernelBuildError, match=r"attention\.cc failed(.|\n)*out of cheese"):
    cpu_build.load.__wrapped__("attention")
  assert not list(tmp_path.glob("*.so")) and not list(tmp_path.glob(".*"))  # no half-written file


def test_unwritable_cache_folder_is_a_build_error(tmp_path, monkeypatch):
  blocker = tmp_path / "not_a_folder"
  blocker.write_text("")
  monkeypatch.setenv("TERRAFM_KERNEL_CACHE", str(blocker / "kernels"))
  with pytest.raises(cpu_build.KernelBuildError, match="not_a_folder"):
    cpu_build.load.__wrapped__("attention")


def test_build_goes_to_the_cache_folder_once(tmp_path, monkeypatch):
  monkeypatch.setenv("TERRAFM_KERNEL_CACHE", str(tmp_path / "kernels"))
  cpu_build.load.__wrapped__("attention")
  built = list((tmp_path / "kernels").glob("attention-*.so"))
  assert len(built) == 1
  stamp = built[0].stat().st_mtime_ns
  cpu_build.load.__wrapped__("attention")  # found, not rebuilt
  assert built[0].stat().st_mtime_ns == stamp
  assert len(list((tmp_path / "kernels").iterdir())) == 1


def test_unknown_attention_impl_names_the_field():
  from terrafm_jax.models.config import get_model_config
  from terrafm_jax.models.terrafm import build_encoder
  cfg = get_model_config("Ti/16")
  cfg.attention_impl = "flash"
  with pytest.raises(ValueError, match="model.attention_impl='flash'"):
    build_encoder(cfg)


def test_without_a_compiler_the_model_falls_back_to_xla(tmp_path):
  """A machine where the kernels can't be built (here: a compiler that fails) still trains: one
  warning per kernel, and attention and crops run in their XLA forms."""
  import os
  import subprocess
  import sys
  import textwrap
  code = textwrap.dedent("""
      import jax, jax.numpy as jnp
      from terrafm_jax.train import device_crops
      from terrafm_jax.models.attention import attention
      q = jnp.ones((2, 5, 2, 4))
      hlo = jax.jit(lambda q: attention(q, q, q, 0.5)).lower(q).compile().as_text()
      crops = jax.jit(lambda t: device_crops.crop_views(
          {"s1": t}, jnp.array([[[0.0, 0.0, 8.0, 8.0]]] * 2), jnp.zeros((2, 1), bool), 4))
      chlo = crops.lower(jnp.ones((2, 8, 8, 2))).compile().as_text()
      print("CUSTOM_CALLS", hlo.count("custom-call(") + chlo.count("custom-call("))
  """)
  env = dict(os.environ, CXX="/bin/false", TERRAFM_KERNEL_CACHE=str(tmp_path / "kernels"))
  proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "CUSTOM_CALLS 0" in proc.stdout
  assert "CPU kernel attention unavailable" in proc.stderr
  assert "CPU kernel resample unavailable" in proc.stderr
