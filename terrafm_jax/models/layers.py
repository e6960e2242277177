"""Small building blocks shared by the encoder and the heads: initialisers, Dense, LayerNorm, GELU."""
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


def dense(features: int, names: tuple[str | None, str | None], *, use_bias: bool = True,
          dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
          kernel_init: Callable = trunc_normal_02, name: str | None = None) -> nn.Dense:
  """nn.Dense with logically partitioned kernel (in, out) and bias (out,)."""
  return nn.Dense(
      features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
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


def gelu(x: jnp.ndarray) -> jnp.ndarray:
  """Exact (erf) GELU, as torch.nn.GELU(); jax.nn.gelu defaults to the tanh approximation."""
  return jax.nn.gelu(x, approximate=False)


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
