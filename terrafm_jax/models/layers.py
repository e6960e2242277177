"""Small building blocks shared by the encoder and the heads: initialisers, Dense, LayerNorm, GELU,
the patchify stem (a stride-p p x p convolution computed as a matmul)."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

# DINO's trunc_normal_(std=.02) truncates at +-2 *absolute*, i.e. at 100 sigma: a plain normal.
trunc_normal_02 = nn.initializers.normal(stddev=0.02)


def torch_default_conv_init(fan_in: int) -> tuple[Callable, Callable]:
  """PyTorch's default Conv2d init, kaiming_uniform(a=sqrt(5)): weight and bias ~ U(+-1/sqrt(fan_in))."""
  bound = fan_in ** -0.5

  def bias_init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"), bias_init


class Dense(nn.Module):
  """nn.Dense's parameters (`kernel` (in, out) created first, then `bias` (out,); identical init
  draws), dtype promotion and precision, computed on a 2-D (rows, in) view of the input.

  Why: XLA:CPU picks slower matmul layouts and transposing copies for the weight gradient of a
  (B, N, in) x (in, out) contraction than for the same (B * N, in) one; one pre-norm ViT-B block
  forward + backward (batch 16 x 197 tokens) takes 1.19x less time with the 2-D form (issue #9)."""
  features: int
  use_bias: bool = True
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32
  precision: Any = None
  kernel_init: Callable = nn.initializers.lecun_normal()
  bias_init: Callable = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features), self.param_dtype)
    bias = (self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias else None)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    lead = x.shape[:-1]
    y = jnp.dot(x.reshape(-1, x.shape[-1]), kernel, precision=self.precision)
    if bias is not None:
      y = y + bias
    return y.reshape(lead + (self.features,))


def dense(features: int, names: tuple[str | None, str | None], *, use_bias: bool = True,
          dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
          kernel_init: Callable = trunc_normal_02, name: str | None = None) -> Dense:
  """Dense (nn.Dense's layout) with logically partitioned kernel (in, out) and bias (out,)."""
  return Dense(
      features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
      kernel_init=nn.with_logical_partitioning(kernel_init, names),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (names[1],)),
      name=name)


class DenseParams(nn.Module):
  """A Dense's parameters (same names, shapes, init draws and order: `kernel` (in, out), then
  `bias` (out,)), returned rather than applied, for callers that combine two linear maps before
  touching the activations (TokenProjection's proj2 -> proj3)."""
  in_features: int
  features: int
  use_bias: bool = True
  param_dtype: Dtype = jnp.float32
  kernel_init: Callable = nn.initializers.lecun_normal()
  bias_init: Callable = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self) -> tuple[jnp.ndarray, jnp.ndarray | None]:
    kernel = self.param("kernel", self.kernel_init, (self.in_features, self.features),
                        self.param_dtype)
    bias = (self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias else None)
    return kernel, bias


def dense_params(in_features: int, features: int, names: tuple[str | None, str | None], *,
                 param_dtype: Dtype = jnp.float32, kernel_init: Callable = trunc_normal_02,
                 name: str | None = None) -> DenseParams:
  """DenseParams with `dense`'s initialisers and logical partitioning (kernel and bias)."""
  return DenseParams(
      in_features, features, param_dtype=param_dtype,
      kernel_init=nn.with_logical_partitioning(kernel_init, names),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (names[1],)),
      name=name)


def layer_norm(axis_name: str, *, epsilon: float, dtype: Dtype = jnp.float32,
               param_dtype: Dtype = jnp.float32, name: str | None = None) -> nn.LayerNorm:
  """LayerNorm with two-pass variance (as PyTorch) and named scale/bias."""
  return nn.LayerNorm(
      epsilon=epsilon, dtype=dtype, param_dtype=param_dtype, use_fast_variance=False,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), (axis_name,)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (axis_name,)),
      name=name)


def patch_conv(x: jnp.ndarray, kernel: jnp.ndarray, bias: jnp.ndarray | None = None, *,
               precision=None) -> jnp.ndarray:
  """A p x p convolution with stride p and VALID padding, computed as patchify + matmul.

  x: (B, H, W, C) NHWC; kernel: (p, p, C, A) HWIO (nn.Conv's layout); bias: (A,) or None.
  Returns (B, H // p, W // p, A), the same maths as `lax.conv_general_dilated(x, kernel, (p, p),
  "VALID", ("NHWC", "HWIO", "NHWC"))` (+ bias). Trailing rows/columns beyond a multiple of p are
  dropped, as VALID does. The patches are flattened in the kernel's (kh, kw, c) order, so the
  kernel is used as `kernel.reshape(p * p * C, A)` without a transpose. On XLA:CPU this is several
  times faster than the convolution, mostly in the backward pass (issue #9).
  """
  ph, pw, c, a = kernel.shape
  if ph != pw:
    raise ValueError(f"patch_conv: kernel must be square (p, p, C, A), got {kernel.shape}")
  b, h, w, cx = x.shape
  if cx != c:
    raise ValueError(f"patch_conv: input has {cx} channels, kernel expects {c}")
  p = ph
  gh, gw = h // p, w // p
  if gh == 0 or gw == 0:
    raise ValueError(f"patch_conv: input {h}x{w} is smaller than the patch size {p}")
  x = x[:, :gh * p, :gw * p]
  # (B, gh, p, gw, p, C) -> (B, gh, gw, p, p, C): each patch in (kh, kw, c) order.
  t = x.reshape(b, gh, p, gw, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, gh, gw, p * p * c)
  y = jnp.dot(t, kernel.reshape(p * p * c, a), precision=precision)
  if bias is not None:
    y = y + bias
  return y


class PatchConv(nn.Module):
  """Drop-in for `nn.Conv(features, (p, p), strides=(p, p), padding="VALID")` on NHWC inputs:
  same parameters (`kernel` (p, p, C, A) created first, then `bias` (A,); identical init draws),
  dtype promotion and precision, computed with `patch_conv`."""
  features: int
  patch_size: int
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32
  precision: Any = None
  kernel_init: Callable = nn.initializers.lecun_normal()
  bias_init: Callable = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    p = self.patch_size
    kernel = self.param("kernel", self.kernel_init, (p, p, x.shape[-1], self.features),
                        self.param_dtype)
    bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    return patch_conv(x, kernel, bias, precision=self.precision)


@jax.custom_vjp
def grad_barrier(x: jnp.ndarray) -> jnp.ndarray:
  """Identity whose cotangent is materialised (an optimization barrier in the backward pass).

  Why: in the backward pass of a stack of pre-norm residual blocks, XLA:CPU fuses the elementwise
  residual/LayerNorm-backward chain into the transposing copy that feeds each weight-gradient dot,
  and so recomputes the chain of every later block inside every copy (cost grows with depth;
  issue #9). A barrier on the residual stream's cotangent at each block boundary stops the chain
  there. The forward pass and the values are unchanged.
  """
  return x


def _grad_barrier_fwd(x):
  return x, None


def _materialize(g):
  # XLA:CPU drops `optimization_barrier` before fusion, but does not fuse across a conditional:
  # its operand and result are buffers. The predicate is always true but data-dependent (so not
  # constant-folded); the false branch is never taken.
  g0 = g.reshape(-1)[0]
  pred = jnp.isnan(g0) | ~jnp.isnan(g0)
  return jax.lax.cond(pred, lambda t: t, jnp.zeros_like, g)


def _grad_barrier_bwd(_, g):
  return (_materialize(g),)


grad_barrier.defvjp(_grad_barrier_fwd, _grad_barrier_bwd)


_INV_SQRT2 = 0.7071067811865476


def gelu(x: jnp.ndarray) -> jnp.ndarray:
  """Exact (erf) GELU, x/2 (1 + erf(x / sqrt 2)), the formula of torch.nn.GELU().

  Not jax.nn.gelu(approximate=False): that uses erfc, which XLA:CPU lowers to a branchy
  piecewise kernel (2.6x slower forward, 2x forward+backward on a (4928, 1536) activation;
  issue #9). The erf form differs from float64 by ~1e-6 absolute at |x| ~ 8, and matches PyTorch's.
  """
  return x * 0.5 * (1.0 + jax.lax.erf(x * jnp.asarray(_INV_SQRT2, x.dtype)))


def canonical_dtype(name: str | Dtype) -> Dtype:
  if not isinstance(name, str):
    return name
  table = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
  if name not in table:
    raise ValueError(f"unknown dtype {name!r}; expected one of {sorted(table)}")
  return table[name]


def check_axes(x: jnp.ndarray, ndim: int, what: str, shape_hint: Sequence[str]) -> None:
  if x.ndim != ndim:
    raise ValueError(f"{what} must have shape ({', '.join(shape_hint)}), got {tuple(x.shape)}")
