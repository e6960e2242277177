"""The fused CPU attention kernel under an 8-device mesh (ops/attention_kernel.py through
models/attention.py): with the mesh and logical rules in scope it runs per device inside
shard_map, moves no activations between devices and gives the same bits as one device (each
(sample, head) pair is computed alone); jitted on sharded arrays with no mesh in scope, it is
still correct."""
from __future__ import annotations

import json

CODE = r"""
import json, re
import flax.linen as nn
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from terrafm_jax.models import axes
from terrafm_jax.models.attention import attention

keys = jax.random.split(jax.random.PRNGKey(0), 4)
q, k, v, g = (jax.random.normal(key, (16, 37, 4, 16)) for key in keys)
def loss(q, k, v, g):
  return jnp.sum(attention(q, k, v, 0.25) * g)
step = jax.value_and_grad(loss, (0, 1, 2))
single = jax.jit(step)(q, k, v, g)

mesh = jax.make_mesh((8, 1, 1), ("data", "fsdp", "model"),
                     axis_types=(jax.sharding.AxisType.Auto,) * 3)
sharded = [jax.device_put(t, NamedSharding(mesh, P(("data", "fsdp")))) for t in (q, k, v, g)]
with jax.set_mesh(mesh), nn.logical_axis_rules(axes.DEFAULT_RULES):
  fn = jax.jit(step)
  hlo = fn.lower(*sharded).compile().as_text()
  meshed = fn(*sharded)
no_mesh = jax.jit(step)(*sharded)  # no mesh in scope: the custom call on global arrays
report = {
    "custom_calls": hlo.count("custom-call("),
    "gathers": len(re.findall(r" (all-gather|all-to-all|collective-permute)(-start)?\(", hlo)),
    "meshed_equal": all(bool(np.array_equal(a, b)) for a, b in
                        zip(jax.tree.leaves(meshed), jax.tree.leaves(single))),
    "no_mesh_close": all(bool(np.allclose(a, b, rtol=1e-5, atol=1e-5)) for a, b in
                         zip(jax.tree.leaves(no_mesh), jax.tree.leaves(single))),
}
print(json.dumps(report))
"""


def test_kernel_runs_per_device_under_the_mesh(run_py):
  report = json.loads(run_py(CODE, num_devices=8).strip().splitlines()[-1])
  assert report["custom_calls"] >= 2, report  # forward and backward kernels
  assert report["gathers"] == 0, report
  assert report["meshed_equal"] and report["no_mesh_close"], report
