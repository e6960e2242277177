"""The CPU kernels (terrafm_jax/ops) under an 8-device mesh. The fused attention (through
models/attention.py): with the mesh and logical rules in scope it runs per device inside
shard_map, moves no activations between devices and gives the same bits as one device (each
(sample, head) pair is computed alone); jitted on sharded arrays with no mesh in scope, it is
still correct. The crop resampling (train/device_crops.py): per device, no gathers, the same
values as one device."""
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

from terrafm_jax.train import device_crops
tiles = {"s2_l1c": jax.random.normal(keys[0], (16, 40, 40, 3))}
boxes = jnp.tile(jnp.array([2.5, 4.0, 30.0, 27.0]), (16, 3, 1)) + jnp.arange(3.0)[:, None]
flip = jnp.tile(jnp.array([True, False, True]), (16, 1))
crop = lambda t, b, f: device_crops.crop_views(t, b, f, 24)["s2_l1c"]
one = jax.jit(crop)(tiles, boxes, flip)
put = lambda t: jax.device_put(t, NamedSharding(mesh, P(("data", "fsdp"))))
args = (jax.tree.map(put, tiles), put(boxes), put(flip))
with jax.set_mesh(mesh), nn.logical_axis_rules(axes.DEFAULT_RULES):
  crop_hlo = jax.jit(crop).lower(*args).compile().as_text()
  per_device = jax.jit(crop)(*args)
report["crop_custom_calls"] = crop_hlo.count("custom-call(")
report["crop_gathers"] = len(re.findall(r" (all-gather|all-to-all|collective-permute)(-start)?\(",
                                        crop_hlo))
report["crop_close"] = bool(np.allclose(per_device, one, rtol=1e-5, atol=1e-5))
print(json.dumps(report))
"""


def test_kernels_run_per_device_under_the_mesh(run_py):
  report = json.loads(run_py(CODE, num_devices=8).strip().splitlines()[-1])
  assert report["custom_calls"] >= 2, report  # forward and backward kernels
  assert report["gathers"] == 0, report
  assert report["meshed_equal"] and report["no_mesh_close"], report
  assert report["crop_custom_calls"] == 1 and report["crop_gathers"] == 0, report
  assert report["crop_close"], report
