"""Compile the real train step for a TPU topology on any host, with nothing materialised.

  python -m terrafm_jax.train --config=configs/terrafm_b.py --workdir=/tmp/dry --dry_run=v5e:8x8

Why (issue #23): a pod user should learn about an out-of-memory step, a sharding mistake or the
wrong attention before the pod is up. With libtpu installed (the `tpu` / `test` extras),
`jax.experimental.topologies` gives the devices of a named topology and the TPU compiler runs on
this host. The dry run builds the job's own abstract state, batch shapes, mesh and step
(train/assemble.py, the code the trainer runs), compiles them for that topology and reports:
HBM per chip (arguments, temporaries, output, alias) against the chip's capacity, compile time,
model FLOPs per step, the collectives in the HLO (kind, count, bytes), the attention form in the
HLO and the dot operand dtypes. The HLO text is saved under <workdir>/dry_run/. A step that does
not fit raises DoesNotFit, whose message names what to change.
"""
from __future__ import annotations

import collections
import dataclasses
import os
import re
import time
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from etils import epath

from terrafm_jax.errors import ConfigError
from terrafm_jax.data import contract as contract_lib
from terrafm_jax.data.prepare import options as prepare_options
from terrafm_jax.train import assemble
from terrafm_jax.train import data_source
from terrafm_jax.train import random_batches
from terrafm_jax.train import config_checks
from terrafm_jax.train import run_plan
from terrafm_jax.train import sharding as sharding_lib

# HBM per chip in GiB, by the device kind libtpu reports (Cloud TPU documentation).
HBM_GIB = {"TPU v2": 8, "TPU v3": 16, "TPU v4": 32, "TPU v5 lite": 16, "TPU v5e": 16,
           "TPU v5": 95, "TPU v5p": 95, "TPU v6 lite": 32, "TPU v6e": 32}
# Pod-slice names (TensorCores for v4 / v5p, chips for v5e / v6e) -> topology.
SLICES = {"v4-32": "v4:2x2x4", "v4-128": "v4:4x4x4", "v5e-64": "v5e:8x8",
          "v5e-256": "v5e:16x16", "v5p-128": "v5p:4x4x4", "v6e-64": "v6e:8x8"}
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4,
                "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8}


class DoesNotFit(RuntimeError):
  """The step needs more HBM per chip than the chip has (the message says what to change)."""


@dataclasses.dataclass
class Report:
  topology: str
  device_kind: str
  num_chips: int
  mesh: dict[str, int]
  global_batch: int
  compile_s: float
  memory_gib: dict[str, float]
  hbm_gib: float | None
  model_flops: float
  compiled_flops_per_chip: float | None
  collectives: dict[str, tuple[int, int]]   # kind -> (count, bytes)
  attention: str
  dot_dtypes: dict[str, int]
  hlo_path: str | None

  @property
  def peak_gib(self) -> float:
    m = self.memory_gib
    return m["argument"] + m["output"] - m["alias"] + m["temp"]

  @property
  def fits(self) -> bool:
    return self.hbm_gib is None or self.peak_gib <= self.hbm_gib

  def lines(self) -> list[str]:
    m = self.memory_gib
    hbm = f"{self.hbm_gib:.0f} GiB" if self.hbm_gib else "unknown"
    flops = (f"; compiled {self.compiled_flops_per_chip / 1e12:.2f} TFLOP per chip"
             if self.compiled_flops_per_chip else "")
    out = [f"dry run: {self.topology} ({self.num_chips} x {self.device_kind}), mesh {self.mesh}, "
           f"global batch {self.global_batch} ({self.global_batch // self.num_chips} per chip)",
           f"  compiled in {self.compile_s:.1f} s; model FLOPs per step "
           f"{self.model_flops / 1e12:.2f} T{flops}",
           f"  HBM per chip: arguments {m['argument']:.2f} + temporaries {m['temp']:.2f} + output "
           f"{m['output']:.2f} - alias {m['alias']:.2f} = {self.peak_gib:.2f} GiB of {hbm}: "
           + ("fits" if self.fits else "DOES NOT FIT"),
           f"  attention in the HLO: {self.attention}",
           "  dot operands: " + (", ".join(f"{k} {v}" for k, v in sorted(self.dot_dtypes.items()))
                                 or "none"),
           "  collectives: " + (", ".join(f"{k} x{c} ({b / 2**20:.1f} MiB)"
                                          for k, (c, b) in sorted(self.collectives.items()))
                                or "none")]
    if self.hlo_path:
      out.append(f"  HLO: {self.hlo_path}")
    return out


def topology_devices(name: str) -> tuple[str, list[Any]]:
  """(topology, devices) for "v5e:2x2" or a slice name such as "v5e-64"."""
  topology = SLICES.get(name, name)
  if not re.fullmatch(r"v\d+[a-z]*:\d+(x\d+){1,2}", topology):
    raise ConfigError(
        f"--dry_run={name!r}: expected a topology such as v5e:2x2 or v4:2x2x4, or one of "
        f"{', '.join(SLICES)}")
  # A compile-only use of libtpu: another process (a test worker, a trainer) may hold its lock.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  # v4 and v5p chips have two TensorCores that JAX runs as one device ("megacore"), as on a pod.
  options = {"chip_config_name": "megacore"} if topology.split(":")[0] in ("v4", "v5p") else {}
  try:
    desc = topologies.get_topology_desc(topology_name=topology, platform="tpu", **options)
  except Exception as e:  # pylint: disable=broad-except  (libtpu missing, unknown topology)
    raise RuntimeError(f"--dry_run={name!r}: no TPU compiler for topology {topology!r} ({e}); "
                       "install the TPU extra: pip install -e '.[tpu]'") from e
  return topology, list(desc.devices)


def hbm_gib(device_kind: str) -> float | None:
  for kind in sorted(HBM_GIB, key=len, reverse=True):
    if device_kind.startswith(kind):
      return float(HBM_GIB[kind])
  return None


def abstract_batch(config: ml_collections.ConfigDict, mesh, tile_size: int) -> dict[str, Any]:
  """ShapeDtypeStructs of the global batch the step takes, sharded as the trainer shards it:
  the keys, dtypes and trailing shapes of one small random batch of this config."""
  probe = ml_collections.ConfigDict(config.to_dict())
  probe.data.builtin.tile_size = tile_size
  probe.global_batch_size = max(int(config.data.group_block), 1) * jax.device_count()
  probe.mesh.data, probe.mesh.fsdp, probe.mesh.model = -1, 1, 1
  probe_plan = run_plan.resolve(probe, probe.global_batch_size, jax.device_count())
  one = next(random_batches.RandomBatches(probe_plan, 0, 1))
  return {k: jax.ShapeDtypeStruct((config.global_batch_size,) + one[k].shape[1:], one[k].dtype,
                                  sharding=sharding_lib.batch_sharding(mesh, one[k].ndim))
          for k in data_source.step_keys(config)}


def collectives(hlo: str) -> dict[str, tuple[int, int]]:
  """kind -> (count, bytes of the results) of the collectives in optimised HLO text."""
  found: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
  pattern = re.compile(r"=\s*(.*?)\s(" + "|".join(COLLECTIVES) + r")(-start)?\(")
  for line in hlo.splitlines():
    m = pattern.search(line)
    if not m or "-done(" in line:
      continue
    size = sum(_DTYPE_BYTES.get(t, 4) * int(np.prod([int(d) for d in dims.split(",") if d] or [1]))
               for t, dims in re.findall(r"\b([a-z]+\d*)\[([\d,]*)\]", m.group(1)))
    found[m.group(2)][0] += 1
    found[m.group(2)][1] += size
  return {k: (c, b) for k, (c, b) in found.items()}


def attention_form(hlo: str) -> str:
  if "splash_mha" in hlo or "tpu_custom_call" in hlo:
    return "Pallas splash attention (tpu_custom_call)"
  if "__cudnn$fmha" in hlo:
    return "cuDNN fused attention"
  if "terrafm_attention" in hlo:
    return "terrafm CPU kernel"
  return "XLA (dot + softmax fusions)"


def dot_dtypes(hlo: str) -> dict[str, int]:
  """Result dtype of every dot / convolution in the HLO: the compute dtype policy, visible."""
  return dict(collections.Counter(
      re.findall(r"=\s*([a-z]+\d*)\[[\d,]*\]\{?[^ ]*\s+(?:dot|convolution)\(", hlo)))


def run(config: ml_collections.ConfigDict, topology_name: str, workdir: str | None = None,
        tile_size: int | None = None) -> Report:
  """Compile `config`'s train step for `topology_name`; DoesNotFit if it needs more HBM."""
  config = ml_collections.ConfigDict(config.to_dict())
  if config.data.source == "pipeline" and not config.data.data_dir:
    config.data.source = "random"  # the step's shapes come from the config, no data is read
  config_checks.validate(config)
  topology, devices = topology_devices(topology_name)
  mesh = sharding_lib.make_mesh(config.mesh, devices)
  if config.data.num_examples > 0:
    num_examples = config.data.num_examples
  else:  # schedules only need a length; the compiled step is the same for any
    num_examples = 1000 * config.global_batch_size
  try:  # the same plan the trainer resolves, on this topology's chips
    plan = run_plan.resolve(config, num_examples, len(devices))
  except ConfigError as e:
    raise ConfigError(f"{e} (on {topology})") from None
  config = plan.config
  if tile_size is None:
    tile_size = (config.data.builtin.tile_size if config.data.builtin.enabled
                 else prepare_options.PrepareOptions.tile_size)
  contract = contract_lib.DEFAULT_CONTRACT
  parts = assemble.build(plan, contract, mesh)
  batch = abstract_batch(config, mesh, tile_size)
  state = parts.abstract_state()
  rules = sharding_lib.logical_rules(config)
  t0 = time.time()
  try:
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      compiled = assemble.jit_step(parts, {k: v.sharding for k, v in batch.items()}, mesh).lower(
          state, batch).compile()
  except jax.errors.JaxRuntimeError as e:  # the TPU compiler itself may refuse: out of HBM
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    per_chip = config.global_batch_size // len(devices)
    raise DoesNotFit(f"{topology}: the TPU compiler ran out of HBM for {config.model.variant} at "
                     f"{per_chip} samples per chip ({str(e).strip().splitlines()[0]}). "
                     + _advice()) from None
  compile_s = time.time() - t0
  mem = compiled.memory_analysis()
  memory = {k: getattr(mem, f"{k}_size_in_bytes") / 2**30
            for k in ("argument", "output", "alias", "temp", "generated_code")}
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
  hlo = compiled.as_text()
  hlo_path = None
  if workdir:
    out = epath.Path(workdir) / "dry_run"
    out.mkdir(parents=True, exist_ok=True)
    hlo_path = str(out / f"{topology.replace(':', '_')}_b{config.global_batch_size}.hlo.txt")
    epath.Path(hlo_path).write_text(hlo)
  kind = devices[0].device_kind
  report = Report(topology=topology, device_kind=kind, num_chips=len(devices),
                  mesh=dict(mesh.shape), global_batch=config.global_batch_size,
                  compile_s=compile_s, memory_gib=memory, hbm_gib=hbm_gib(kind),
                  model_flops=plan.step_flops,
                  compiled_flops_per_chip=(cost or {}).get("flops"),
                  collectives=collectives(hlo), attention=attention_form(hlo),
                  dot_dtypes=dot_dtypes(hlo), hlo_path=hlo_path)
  check_fits(report, config)
  return report


def check_fits(report: Report, config: ml_collections.ConfigDict) -> None:
  """DoesNotFit, naming what to change, when the step needs more HBM per chip than there is."""
  if report.fits:
    return
  per_chip = report.global_batch // report.num_chips
  raise DoesNotFit(
      "\n".join(report.lines()) + f"\n{config.model.variant} at {per_chip} samples per chip needs "
      f"{report.peak_gib:.2f} GiB of {report.hbm_gib:.2f} GiB HBM per chip on {report.topology}. "
      + _advice())


def _advice() -> str:
  return ("Lower config.global_batch_size (fewer samples per chip), set config.model.remat=True "
          "(recompute each block in the backward pass), or shard the parameters and optimizer "
          "state with config.mesh.fsdp=-1, config.mesh.data=1.")
