"""TokenProjection applies proj3(proj2(.)) as one product of the two weights (issue #9): the same
parameters, init draws, values and gradients as the released two-layer chain, at a quarter of the
per-token FLOPs."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from terrafm_jax.models import axes
from terrafm_jax.models.layers import dense, layer_norm
from terrafm_jax.models.patch_embed import NORM_INPUT_EPS, TokenProjection

D = 16          # embed dim; A = 3 D
TOKENS = (3, 10)


class ChainProjection(nn.Module):
  """The released layout applied layer by layer: proj3(proj2(norm_input(proj1(t))))."""
  embed_dim: int

  def setup(self):
    a = 3 * self.embed_dim
    self.proj1 = dense(a, (axes.ATTN_IN, axes.ATTN_DIM), use_bias=False)
    self.norm_input = layer_norm(axes.ATTN_DIM, epsilon=NORM_INPUT_EPS)
    self.proj2 = dense(a, (axes.ATTN_IN, axes.ATTN_DIM))
    self.proj3 = dense(self.embed_dim, (axes.ATTN_IN, axes.EMBED))

  def __call__(self, t):
    return self.proj3(self.proj2(self.norm_input(self.proj1(t))))


def _setup(seed=0):
  t = jax.random.normal(jax.random.key(seed + 1), TOKENS + (3 * D,))
  ours, chain = TokenProjection(D), ChainProjection(D)
  params = nn.unbox(ours.init(jax.random.key(seed), t))["params"]
  ref_params = nn.unbox(chain.init(jax.random.key(seed), t))["params"]
  # Non-zero biases, so that b2 W3 + b3 is exercised (the init has zero biases).
  for i, name in enumerate(("proj2", "proj3")):
    for p in (params, ref_params):
      p[name]["bias"] = 0.1 * jax.random.normal(jax.random.key(50 + i), p[name]["bias"].shape)
  return ours, chain, params, ref_params, t


def test_same_parameters_and_init_as_the_released_chain():
  ours, chain, params, ref_params, t = _setup()
  shapes = jax.tree.map(jnp.shape, params)
  assert shapes == jax.tree.map(jnp.shape, ref_params)
  assert shapes["proj2"] == {"kernel": (3 * D, 3 * D), "bias": (3 * D,)}
  assert shapes["proj3"] == {"kernel": (3 * D, D), "bias": (D,)}
  fresh = nn.unbox(ours.init(jax.random.key(0), t))["params"]
  fresh_ref = nn.unbox(chain.init(jax.random.key(0), t))["params"]
  for a, b in zip(jax.tree.leaves(fresh), jax.tree.leaves(fresh_ref)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # Logical axes of the released chain survive (FSDP rules shard them the same way).
  boxed = ours.init(jax.random.key(0), t)["params"]
  assert boxed["proj2"]["kernel"].names == (axes.ATTN_IN, axes.ATTN_DIM)
  assert boxed["proj3"]["kernel"].names == (axes.ATTN_IN, axes.EMBED)
  assert boxed["proj3"]["bias"].names == (axes.EMBED,)


def test_values_and_gradients_match_the_chain():
  ours, chain, params, ref_params, t = _setup()
  out = ours.apply({"params": params}, t)
  ref = chain.apply({"params": ref_params}, t)
  assert out.shape == TOKENS + (D,)
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-5, atol=1e-5)

  def loss(module, p):
    return jnp.sum(jnp.sin(module.apply({"params": p}, t)))

  g = jax.grad(lambda p: loss(ours, p))(params)
  g_ref = jax.grad(lambda p: loss(chain, p))(ref_params)
  for name in ("proj1", "proj2", "proj3", "norm_input"):
    for leaf in g[name]:
      np.testing.assert_allclose(np.asarray(g[name][leaf]), np.asarray(g_ref[name][leaf]),
                                 rtol=2e-5, atol=2e-5, err_msg=f"{name}/{leaf}")


def test_shared_weights_give_the_same_bits():
  ours, _, params, _, t = _setup()
  z = ours.apply({"params": params}, t, method=lambda m, x: m.norm(m.value(x)))
  own = ours.apply({"params": params}, z, method=lambda m, x: m.output(x))
  shared = ours.apply({"params": params}, z,
                      method=lambda m, x: m.output(x, m.output_weights()))
  np.testing.assert_array_equal(np.asarray(own), np.asarray(shared))


@pytest.mark.parametrize("rows", [64, 256])
def test_compiled_cost_is_the_single_product(rows):
  """XLA's own FLOP count of the output projection on `rows` tokens: 2 A d per token plus the
  weight product once, not the chain's 2 (A^2 + A d) per token."""
  ours, chain, params, ref_params, _ = _setup()
  a = 3 * D
  z = jax.random.normal(jax.random.key(3), (rows, a))

  def flops(fn, *args):
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    return (cost[0] if isinstance(cost, list) else cost)["flops"]

  ours_flops = flops(lambda p, x: ours.apply({"params": p}, x, method=lambda m, y: m.output(y)),
                     params, z)
  chain_flops = flops(lambda p, x: chain.apply({"params": p}, x,
                                               method=lambda m, y: m.proj3(m.proj2(y))),
                      ref_params, z)
  expected = 2 * rows * a * D + 2 * a * a * D
  assert expected <= ours_flops <= 1.05 * expected, (ours_flops, expected)
  assert chain_flops >= 2 * rows * (a * a + a * D), chain_flops
