"""The CPU kernels are chosen by the platform being compiled for, at lowering time (issue #23):
one jitted function lowers with the kernels' custom calls for CPU and without them for TPU and
CUDA, and lowering for TPU / CUDA never builds or loads a kernel library."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

from terrafm_jax.train import device_crops  # noqa: E402
from terrafm_jax.models import attention as attention_lib  # noqa: E402
from terrafm_jax.ops import attention_kernel, resample_kernel  # noqa: E402


def _step(q, tiles, boxes, flip):
  """Attention forward + backward and a crop, as one jitted program (the step's two kernels)."""
  crops = device_crops.crop_views(tiles, boxes, flip, 8)["s2_l2a"]
  grads = jax.grad(lambda q: jnp.sum(attention_lib.attention(q, q, q, 0.3) ** 2))(q)
  return grads, crops


def _args():
  q = jnp.ones((2, 9, 2, 8), jnp.float32)
  tiles = {"s2_l2a": jnp.ones((2, 16, 16, 3), jnp.float32)}
  boxes = jnp.zeros((2, 2, 4)) + jnp.array([0, 0, 12, 12.0])
  return q, tiles, boxes, jnp.zeros((2, 2), bool)


def _lowered(platform):
  return jax.jit(_step).trace(*_args()).lower(lowering_platforms=(platform,)).as_text()


def test_kernels_lower_for_cpu_only(monkeypatch):
  cpu = _lowered("cpu")
  for target in (attention_kernel.FORWARD, attention_kernel.BACKWARD, resample_kernel.TARGET):
    assert f"custom_call @{target}(" in cpu
  # Lowering for another platform must not build, load or register any CPU library.
  def forbidden():
    raise AssertionError("a TPU / GPU lowering asked for the CPU kernel library")
  for call in (attention_kernel._FORWARD_CALL, attention_kernel._BACKWARD_CALL,
               resample_kernel._CALL):
    monkeypatch.setattr(call, "available", forbidden)
  for platform in ("tpu", "cuda"):
    text = _lowered(platform)
    assert "terrafm_" not in text, platform
    assert "stablehlo.dot_general" in text


def test_cpu_lowering_without_a_library_falls_back_to_the_same_maths(monkeypatch):
  q, tiles, boxes, flip = _args()
  q = q * jnp.linspace(0.5, 1.5, q.size).reshape(q.shape)
  tiles = {"s2_l2a": tiles["s2_l2a"] * jnp.arange(16.0)[None, :, None, None]}
  want = jax.jit(_step)(q, tiles, boxes, flip)
  for call in (attention_kernel._FORWARD_CALL, attention_kernel._BACKWARD_CALL,
               resample_kernel._CALL):
    monkeypatch.setattr(call, "available", lambda: False)
  fn = jax.jit(lambda *a: _step(*a))  # a new function: not served from the jit cache
  assert "terrafm_" not in fn.trace(q, tiles, boxes, flip).lower().as_text()
  got = fn(q, tiles, boxes, flip)
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_pallas_impl_is_the_core_off_tpu():
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.standard_normal((2, 13, 2, 8)), jnp.float32) for _ in range(3))
  text = jax.jit(lambda *a: attention_lib.attention(*a, 0.3, impl="pallas")).trace(
      q, k, v).lower().as_text()
  assert "tpu_custom_call" not in text
  np.testing.assert_allclose(attention_lib.attention(q, k, v, 0.3, impl="pallas"),
                             attention_lib.attention_core(q, k, v, 0.3), rtol=1e-6, atol=1e-6)


def test_libtpu_without_a_tpu_stays_quiet():
  """With libtpu installed and no TPU attached, an entry point's JAX start prints nothing."""
  code = ("import os; os.environ.pop('JAX_PLATFORMS', None)\n"
          "from terrafm_jax import platforms\n"
          "chosen = platforms.quiet_libtpu_without_tpu()\n"
          "import jax; print(chosen, jax.devices()[0].platform)\n")
  env = {k: v for k, v in __import__("os").environ.items() if k != "JAX_PLATFORMS"}
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=120, check=True)
  import importlib.util  # noqa: PLC0415
  if importlib.util.find_spec("libtpu") is not None:
    assert out.stdout.split() == ["cpu", "cpu"]
  assert "TPU_ACCELERATOR_TYPE" not in out.stderr and "libtpu" not in out.stderr.lower()
