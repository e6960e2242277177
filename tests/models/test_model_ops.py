"""The fast DINO-head last layer and the patchify stem equal the formulas they replace (issue #9)."""
from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from terrafm_jax.models import axes
from terrafm_jax.models.heads import DINOHead, column_sq_norms, weight_norm_logits
from terrafm_jax.models.layers import PatchConv, patch_conv, torch_default_conv_init

RTOL = 1e-5


def _close(a, b, rtol=RTOL):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  scale = max(np.abs(b).max(), 1e-30)
  err = np.abs(a - b).max() / scale
  assert err <= rtol, f"max |a - b| / max |b| = {err:.3g} > {rtol}"


# ---------------------------------------------------------------------------------------------
# DINO head: (x @ v) / ||v||_col == x @ (v / ||v||_col)


def _weight_norm_reference(x, v):
  w = v / jnp.linalg.norm(v, axis=0, keepdims=True)
  return jnp.dot(x, w, precision="highest")


def _head_inputs(b, d, k, seed=0):
  kx, kv, kt = jax.random.split(jax.random.PRNGKey(seed), 3)
  x = jax.random.normal(kx, (b, d))
  x = x / jnp.linalg.norm(x, axis=-1, keepdims=True)
  v = jax.random.normal(kv, (d, k)) * 0.02
  target = jax.nn.softmax(jax.random.normal(kt, (b, k)) * 3.0, axis=-1)
  return x, v, target


@pytest.mark.parametrize("b,d,k", [(4, 32, 512), (3, 30, 257), (16, 256, 4096)])
def test_head_values_and_grads_match_weight_norm(b, d, k):
  x, v, target = _head_inputs(b, d, k)
  _close(jax.jit(weight_norm_logits)(x, v), _weight_norm_reference(x, v))

  def loss(f):  # DINO-style cross-entropy, so the gradient is a realistic dense (B, K) cotangent
    return lambda x, v: -jnp.sum(target * jax.nn.log_softmax(f(x, v) / 0.1, axis=-1))

  g_new = jax.jit(jax.grad(loss(weight_norm_logits), (0, 1)))(x, v)
  g_ref = jax.grad(loss(_weight_norm_reference), (0, 1))(x, v)
  _close(g_new[0], g_ref[0])
  _close(g_new[1], g_ref[1])


def test_head_forward_mode_matches_weight_norm():
  x, v, _ = _head_inputs(4, 32, 256)
  dx, dv = jax.random.normal(jax.random.PRNGKey(5), x.shape), jax.random.normal(
      jax.random.PRNGKey(6), v.shape) * 0.02
  y_new, t_new = jax.jvp(weight_norm_logits, (x, v), (dx, dv))
  y_ref, t_ref = jax.jvp(_weight_norm_reference, (x, v), (dx, dv))
  _close(y_new, y_ref)
  _close(t_new, t_ref)


def test_column_sq_norms_both_paths():
  v = jax.random.normal(jax.random.PRNGKey(1), (37, 300))
  ref = np.sum(np.asarray(v, np.float64) ** 2, axis=0)
  _close(jax.jit(column_sq_norms)(v), ref)
  from terrafm_jax.models import heads
  _close(heads._sum_sq_reduce(v), ref)
  _close(heads._sum_sq_loop(v), ref)


def test_dino_head_module_uses_weight_norm():
  head = DINOHead(out_dim=512, hidden_dim=64, bottleneck_dim=32, nlayers=3)
  x = jax.random.normal(jax.random.PRNGKey(2), (4, 48))
  params = head.init(jax.random.PRNGKey(3), x)
  out = head.apply(params, x)
  p = nn.unbox(params)["params"]
  v = p["last_layer"]
  assert v.shape == (32, 512)
  h = x
  for i in range(3):
    h = h @ p[f"mlp_{i}"]["kernel"] + p[f"mlp_{i}"]["bias"]
    if i < 2:
      h = jax.nn.gelu(h, approximate=False)
  h = h / jnp.linalg.norm(h, axis=-1, keepdims=True)
  _close(out, _weight_norm_reference(h, v))


def _computations(hlo_text: str) -> list[str]:
  return [c for c in re.split(r"\n\s*\n", hlo_text) if c.strip()]


def test_head_hlo_dot_not_fused_with_norm():
  """On XLA:CPU the weight-normalised form fused the column norm into the dot (recomputing it);
  in the compiled new form no computation holding the dot also holds a reduction."""
  if jax.default_backend() != "cpu":
    pytest.skip("XLA:CPU fusion check")
  x, v, _ = _head_inputs(16, 256, 8192)
  txt = jax.jit(weight_norm_logits).lower(x, v).compile().as_text()
  dots = [c for c in _computations(txt) if re.search(r"\bdot\(", c)]
  assert dots, txt
  for c in dots:
    assert not re.search(r"\breduce\(", c), c


# ---------------------------------------------------------------------------------------------
# Patchify stem == stride-p p x p VALID convolution


def _conv_reference(x, kernel, bias):
  p = kernel.shape[0]
  y = jax.lax.conv_general_dilated(x, kernel, (p, p), "VALID",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                   precision="highest")
  return y + bias


@pytest.mark.parametrize("p,h,w,c,a", [(16, 48, 32, 12, 24), (8, 40, 24, 2, 20), (16, 32, 32, 12, 16),
                                       (8, 27, 43, 3, 8)])  # last: not a multiple of p (cropped)
def test_patch_conv_matches_conv_values_and_grads(p, h, w, c, a):
  kx, kk, kb, kg = jax.random.split(jax.random.PRNGKey(p + h), 4)
  x = jax.random.normal(kx, (2, h, w, c))
  kernel = jax.random.normal(kk, (p, p, c, a)) * (c * p * p) ** -0.5
  bias = jax.random.normal(kb, (a,)) * 0.1
  new = lambda x, k, b: patch_conv(x, k, b, precision="highest")
  y_new, y_ref = jax.jit(new)(x, kernel, bias), _conv_reference(x, kernel, bias)
  assert y_new.shape == y_ref.shape == (2, h // p, w // p, a)
  _close(y_new, y_ref)

  g = jax.random.normal(kg, y_ref.shape)
  loss = lambda f: (lambda x, k, b: jnp.sum(f(x, k, b) * g) + 0.5 * jnp.sum(f(x, k, b) ** 2))
  g_new = jax.jit(jax.grad(loss(new), (0, 1, 2)))(x, kernel, bias)
  g_ref = jax.grad(loss(_conv_reference), (0, 1, 2))(x, kernel, bias)
  for gn, gr in zip(g_new, g_ref):
    _close(gn, gr)


def test_patch_conv_flatten_order_is_kernel_order():
  """A one-hot kernel picks exactly pixel (kh, kw) channel c of each patch."""
  p, c = 4, 3
  x = jnp.arange(2 * 8 * 12 * c, dtype=jnp.float32).reshape(2, 8, 12, c)
  for kh, kw, ch in [(0, 0, 0), (1, 3, 2), (3, 2, 1)]:
    kernel = jnp.zeros((p, p, c, 1)).at[kh, kw, ch, 0].set(1.0)
    y = patch_conv(x, kernel, precision="highest")
    np.testing.assert_array_equal(y[..., 0], x[:, kh::p, kw::p, ch])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_patch_conv_module_is_drop_in_for_nn_conv(dtype):
  """Same parameter tree, names, shapes, logical axes and init draws as the nn.Conv it replaces."""
  p, c, a = 16, 12, 32
  kernel_init, bias_init = torch_default_conv_init(c * p * p)
  kw = dict(kernel_init=nn.with_logical_partitioning(
      kernel_init, (None, None, axes.PATCH_IN, axes.ATTN_DIM)),
      bias_init=nn.with_logical_partitioning(bias_init, (axes.ATTN_DIM,)))
  conv = nn.Conv(a, (p, p), strides=(p, p), padding="VALID", dtype=dtype, **kw)
  fast = PatchConv(a, p, dtype=dtype, **kw)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 64, 48, c))
  pc, pf = conv.init(jax.random.PRNGKey(7), x), fast.init(jax.random.PRNGKey(7), x)
  assert jax.tree.structure(pc) == jax.tree.structure(pf)
  for lc, lf in zip(jax.tree.leaves(pc, is_leaf=lambda l: isinstance(l, nn.Partitioned)),
                    jax.tree.leaves(pf, is_leaf=lambda l: isinstance(l, nn.Partitioned))):
    assert lc.names == lf.names
    np.testing.assert_array_equal(lc.value, lf.value)
  assert pf["params"]["kernel"].value.shape == (p, p, c, a)
  assert pf["params"]["bias"].value.shape == (a,)
  yc, yf = conv.apply(pc, x), fast.apply(pc, x)
  assert yc.dtype == yf.dtype and yc.shape == yf.shape
  _close(yf.astype(jnp.float32), yc.astype(jnp.float32), rtol=RTOL if dtype == jnp.float32 else 2e-2)


# ---------------------------------------------------------------------------------------------
# Gradient barrier at each block input: same values and gradients, a real buffer in the backward


def _stack(barrier: bool, depth: int = 3):
  from terrafm_jax.models.vit import Block

  class Stack(nn.Module):
    @nn.compact
    def __call__(self, x):
      for i in range(depth):
        x = Block(4, 64, grad_barrier=barrier, name=f"blocks_{i}")(x)
      return x
  return Stack()


def test_grad_barrier_is_identity_with_same_gradients():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 7, 32))
  with_b, without = _stack(True), _stack(False)
  params = without.init(jax.random.PRNGKey(1), x)
  np.testing.assert_array_equal(with_b.apply(params, x), without.apply(params, x))
  g = jax.random.normal(jax.random.PRNGKey(2), x.shape)
  loss = lambda m: (lambda p, x: jnp.sum(jnp.tanh(m.apply(p, x)) * g))  # noqa: E731
  gb = jax.jit(jax.grad(loss(with_b), (0, 1)))(params, x)
  gn = jax.jit(jax.grad(loss(without), (0, 1)))(params, x)
  for a, b in zip(jax.tree.leaves(gb), jax.tree.leaves(gn)):
    _close(a, b, rtol=1e-6)


def test_grad_barrier_survives_compilation():
  """optimization_barrier is dropped by XLA:CPU before fusion; the barrier must be a conditional
  in the compiled backward pass (one per block), or the residual chain fuses again (issue #9)."""
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 7, 32))
  m = _stack(True)
  params = m.init(jax.random.PRNGKey(1), x)
  txt = jax.jit(jax.grad(lambda p, x: jnp.sum(m.apply(p, x) ** 2), 1)).lower(
      params, x).compile().as_text()
  assert len(re.findall(r"\bconditional\(", txt)) >= 3, "no gradient barrier in the compiled HLO"
  # The NaN case takes the identity branch too (the barrier never zeroes a gradient).
  from terrafm_jax.models.layers import grad_barrier
  nan_g = jax.vjp(grad_barrier, jnp.ones(3))[1](jnp.asarray([jnp.nan, 1.0, 2.0]))[0]
  assert np.isnan(nan_g[0]) and np.array_equal(nan_g[1:], [1.0, 2.0])


# ---------------------------------------------------------------------------------------------
# 2-D Dense, attention core and erf GELU == the library forms they replace


@pytest.mark.parametrize("shape", [(2, 7, 24), (5, 24), (2, 3, 4, 24)])
def test_dense_is_drop_in_for_nn_dense(shape):
  from terrafm_jax.models.layers import Dense
  kw = dict(kernel_init=nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                     (axes.EMBED, axes.MLP)),
            bias_init=nn.with_logical_partitioning(nn.initializers.normal(0.1), (axes.MLP,)))
  ref, new = nn.Dense(40, **kw), Dense(40, **kw)
  x = jax.random.normal(jax.random.PRNGKey(0), shape)
  pr, pn = ref.init(jax.random.PRNGKey(4), x), new.init(jax.random.PRNGKey(4), x)
  assert jax.tree.structure(pr) == jax.tree.structure(pn)
  for a, b in zip(jax.tree.leaves(pr, is_leaf=lambda l: isinstance(l, nn.Partitioned)),
                  jax.tree.leaves(pn, is_leaf=lambda l: isinstance(l, nn.Partitioned))):
    assert a.names == b.names
    np.testing.assert_array_equal(a.value, b.value)
  _close(new.apply(pr, x), ref.apply(pr, x))
  assert new.apply(pr, x).shape == shape[:-1] + (40,)
  no_bias = Dense(8, use_bias=False).init(jax.random.PRNGKey(0), x)
  assert set(no_bias["params"]) == {"kernel"}


def test_attention_core_matches_dot_product_attention():
  from terrafm_jax.models.attention import attention_core
  kq, kk, kv, kg = jax.random.split(jax.random.PRNGKey(0), 4)
  q, k, v = (jax.random.normal(key, (2, 13, 4, 8)) for key in (kq, kk, kv))
  ref = jax.nn.dot_product_attention(q, k, v, scale=8 ** -0.5)
  _close(jax.jit(attention_core, static_argnums=3)(q, k, v, 8 ** -0.5), ref)
  g = jax.random.normal(kg, ref.shape)
  g_new = jax.grad(lambda *a: jnp.sum(attention_core(*a, 8 ** -0.5) * g), (0, 1, 2))(q, k, v)
  g_ref = jax.grad(lambda *a: jnp.sum(jax.nn.dot_product_attention(*a, scale=8 ** -0.5) * g),
                   (0, 1, 2))(q, k, v)
  for a, b in zip(g_new, g_ref):
    _close(a, b)


def test_attention_core_vjp_under_remat_and_bfloat16():
  """The hand-written VJP (models/attention.py) inside jax.checkpoint, and in bfloat16: the
  gradients follow float32 autodiff of jax.nn.dot_product_attention to bfloat16 rounding."""
  from terrafm_jax.models.attention import attention_core
  kq, kk, kv, kg = jax.random.split(jax.random.PRNGKey(1), 4)
  q, k, v = (jax.random.normal(key, (3, 17, 2, 16)) for key in (kq, kk, kv))
  g = jax.random.normal(kg, q.shape)
  scale = 16 ** -0.5
  ref = jax.grad(lambda *a: jnp.sum(jax.nn.dot_product_attention(*a, scale=scale) * g),
                 (0, 1, 2))(q, k, v)
  remat = jax.jit(jax.grad(jax.checkpoint(lambda *a: jnp.sum(attention_core(*a, scale) * g)),
                           (0, 1, 2)))(q, k, v)
  for a, b in zip(remat, ref):
    _close(a, b)
  bf = [t.astype(jnp.bfloat16) for t in (q, k, v)]
  out = attention_core(*bf, scale)
  assert out.dtype == jnp.bfloat16
  g_bf = jax.grad(lambda *a: jnp.sum(attention_core(*a, scale).astype(jnp.float32) * g),
                  (0, 1, 2))(*bf)
  for a, b in zip(g_bf, ref):
    assert a.dtype == jnp.bfloat16
    _close(a, b, rtol=3e-2)


def test_gelu_is_exact_erf_gelu():
  from scipy.special import erf
  from terrafm_jax.models.layers import gelu
  x = jnp.linspace(-10.0, 10.0, 4001)
  xd = np.asarray(x, np.float64)
  ref = xd * 0.5 * (1.0 + erf(xd / np.sqrt(2.0)))
  assert np.abs(np.asarray(jax.jit(gelu)(x)) - ref).max() < 3e-6
  dref = 0.5 * (1.0 + erf(xd / np.sqrt(2.0))) + xd * np.exp(-xd ** 2 / 2) / np.sqrt(2 * np.pi)
  assert np.abs(np.asarray(jax.vmap(jax.grad(gelu))(x)) - dref).max() < 3e-6
