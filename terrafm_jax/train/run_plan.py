"""The run plan: everything a run derives from its config, resolved and validated once.

After the data is open (its size sets the steps), `resolve()` derives the steps, the mesh shape,
the modality-group block and the static group sizes of each view family, the modalities the step
runs, the parameters it never runs, the crop plan and the model FLOPs of a step. The pipeline,
the step, the optimizer and the metrics take the plan; none of them derives these again.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections

from terrafm_jax.data import crops as crops_lib
from terrafm_jax.data import modality_groups
from terrafm_jax.data.contract import MODALITIES
from terrafm_jax.errors import ConfigError
from terrafm_jax.train import sharding as sharding_lib

FAMILIES = ("teacher", "student_global", "student_local")


@dataclasses.dataclass(frozen=True)
class RunPlan:
  config: ml_collections.ConfigDict   # locked; steps_per_epoch and total_steps filled in
  num_examples: int
  mesh_shape: dict[str, int]
  per_shard_batch: int
  crops: crops_lib.CropConfig
  group_block: int                    # samples per modality-group block; 0: grouping off
  quotas: dict[str, Any]              # per view family: static group sizes of a block, or None
  modalities_run: tuple[str, ...]     # the modalities the step crops and encodes
  idle_stems: tuple[str, ...]         # stems the step never runs (their parameters stay put)
  idle_fusion: bool                   # the step never runs the fusion
  step_flops: float                   # model FLOPs of one step over the global batch

  @property
  def steps_per_epoch(self) -> int:
    return self.config.steps_per_epoch

  @property
  def total_steps(self) -> int:
    return self.config.total_steps

  @property
  def idle(self) -> tuple[tuple[str, ...], bool]:
    return self.idle_stems, self.idle_fusion


def crop_config(config: ml_collections.ConfigDict) -> crops_lib.CropConfig:
  """config.data -> the host's crop plan and modality draws (every CropConfig field is a field of
  config.data with the same name; lists from the command line become tuples)."""
  d = config.data
  return crops_lib.CropConfig(**{
      f.name: tuple(d[f.name]) if isinstance(d[f.name], (list, tuple)) else d[f.name]
      for f in dataclasses.fields(crops_lib.CropConfig)})


def _group_block(config: ml_collections.ConfigDict, per_shard: int) -> int:
  """Samples per modality-group block (data/modality_groups.py); 0 = grouping off.

  The block is a config value, not derived from the device count, so the modality plan of a
  global batch is the same on any topology (exact resume onto other device or process counts).
  It must divide the per-shard batch, so that no block spans two devices and the step's
  per-group gathers stay on each device."""
  d = config.data
  if not d.modality_groups:
    return 0
  if d.granularity != "sample":
    raise ConfigError("config.data.modality_groups=True needs config.data.granularity='sample' "
                      f"(got {d.granularity!r}); set modality_groups=False for per-batch draws")
  block = int(d.group_block)
  if block <= 0 or per_shard % block:
    raise ConfigError(f"config.data.group_block={block} must be a positive divisor of the "
                      f"per-shard batch of {per_shard} samples (global_batch_size "
                      f"{config.global_batch_size} / mesh data x fsdp "
                      f"{config.global_batch_size // per_shard}); or set "
                      "config.data.modality_groups=False")
  return block


def needed_modalities(quotas) -> tuple[str, ...]:
  """The modalities some view of some family needs (all of them with groups off, or when any
  family has a fused group): a modality whose single group and the fused group are empty in
  every family is never read, so its tiles are neither normalised nor cropped."""
  if any(q is None for q in quotas.values()):
    return MODALITIES
  if any(q[len(MODALITIES)] for q in quotas.values()):
    return MODALITIES
  return tuple(m for i, m in enumerate(MODALITIES) if any(q[i] for q in quotas.values()))


def _steps(config: ml_collections.ConfigDict, num_examples: int) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict(config.to_dict())
  if c.steps_per_epoch <= 0:
    c.steps_per_epoch = max(num_examples // c.global_batch_size, 1)
  if c.total_steps <= 0:
    c.total_steps = int(round(c.num_epochs * c.steps_per_epoch))
  c.lock()
  return c


def resolve(config: ml_collections.ConfigDict, num_examples: int,
            device_count: int | None = None) -> RunPlan:
  """The plan of `config` on `device_count` devices (default: this job's) for a data set of
  `num_examples`; ConfigError naming the field that cannot work."""
  import jax  # pylint: disable=g-import-not-at-top
  from terrafm_jax.train import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  n_dev = device_count or jax.device_count()
  shape = dict(zip(sharding_lib.MESH_AXES, sharding_lib.mesh_shape(config.mesh, n_dev)))
  shards = shape["data"] * shape["fsdp"]
  if config.global_batch_size % shards:
    raise ConfigError(f"config.global_batch_size={config.global_batch_size} is not divisible by "
                      f"the {shards} batch shards of mesh {shape}")
  per_shard = config.global_batch_size // shards
  crops = crop_config(config)
  block = _group_block(config, per_shard)
  quotas = (modality_groups.family_quotas(crops, block) if block
            else {f: None for f in FAMILIES})
  needed = needed_modalities(quotas)
  if any(q is None for q in quotas.values()):
    idle_stems, idle_fusion = (), False  # groups off: every stem and the fusion run (masked)
  else:
    idle_stems = tuple(m for m in MODALITIES if m not in needed)
    idle_fusion = not any(q[len(MODALITIES)] for q in quotas.values())
  resolved = _steps(config, num_examples)
  return RunPlan(config=resolved, num_examples=num_examples, mesh_shape=shape,
                 per_shard_batch=per_shard, crops=crops, group_block=block, quotas=quotas,
                 modalities_run=needed, idle_stems=idle_stems, idle_fusion=idle_fusion,
                 step_flops=metrics_lib.step_flops(resolved, quotas, block))
