"""Training metrics: the TensorBoard writer, FLOP accounting, host-side summaries.

Writer: tensorboardX event files (tb_writer.py), written by process 0 only.

FLOP accounting (model FLOPs, for MFU; counts a multiply-add as 2 FLOPs, ignores norms, softmax,
GELU, crops and the optimizer). It counts what the compiled step runs, not the minimal model. With
modality groups (config.data.modality_groups, the default) a view of a single-modality group runs
one stem + proj1-3, a view of the fused group the masked path; the step's counts per group are the
static quotas of data/modality_groups.py. Without groups every view runs the masked path (all
M = 3 stems, the case-1 projection and the fusion, then a per-sample select). Per image, encoder forward
with N patch tokens (+1 CLS), width d, depth L, MLP m, A = 3d, N_q fusion queries:
    stems         2 * N * (p^2 * C_m) * A        for each of the M stems
    case 1        2 * N * A^2                    proj1 of the selected modality's tokens
    fusion        2 * N * (2 M A^2               proj1 (values) and key of every modality
                           + 2 N_q M A + N_q A)  attention logits and values, query scores
    output        2 * N * A d                    proj3(proj2(.)) as one product of the weights
    blocks        L * [2 * (N+1) * (4 d^2 + 2 d m) + 4 * (N+1)^2 * d]
    head          2 * (d h + (nlayers-2) h^2 + h b + b K)
The released single-modality path (`fused=False`) has one stem, proj1-3 and no fusion.
  step = 3 x student forward (forward + backward = 3 forwards) on all crops
       + 1 x teacher forward on the global crops
       + the weight products W2 W3 (2 A^2 d each; they do not grow with the batch): one in the
         teacher's forward, one in the student's (its calls on global and local crops compute
         the same product, which XLA merges) and two in the backward of each student call.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import ml_collections
import numpy as np
from absl import logging

from clu import parameter_overview

from terrafm_jax.data.contract import MODALITIES
from terrafm_jax.models import variants
from terrafm_jax.train import tb_writer

CATEGORIES = MODALITIES + ("fused",)
# WorldCover classes in index order (DATA.md 3), for the sampler-exposure metric names.
WORLDCOVER = ("tree", "shrub", "grass", "crop", "built", "bare", "snow", "water", "wetland",
              "mangrove", "moss")
# Dense bf16 peak FLOP/s per chip, for MFU; unknown devices report achieved FLOP/s only.
PEAK_FLOPS = {"TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12,
              "TPU v6 lite": 918e12, "TPU v6e": 918e12, "NVIDIA H100": 989e12,
              "NVIDIA H200": 989e12, "NVIDIA A100": 312e12}


def create_writer(workdir: str) -> tb_writer.EventWriter:
  """TensorBoard event files on process 0 (written from tensorboardX's thread), nothing elsewhere.
  The console gets one progress line per interval (train/console.py), not every metric."""
  return tb_writer.EventWriter(workdir if jax.process_index() == 0 else None)


def encoder_forward_flops(model_cfg: ml_collections.ConfigDict, img_size: int,
                          fused: bool = True, channels: int = 12) -> float:
  """Forward FLOPs of one image (module docstring); `fused` = all three stems + the fusion (the
  masked path, and the fused modality group), else one stem of `channels` input channels."""
  dims = variants.decode_variant(model_cfg.variant)
  d, depth, m, p = dims["width"], dims["depth"], dims["mlp_dim"], dims["patch_size"]
  a = 3 * d
  n = (img_size // p) ** 2
  nq = model_cfg.fusion_queries
  channels = (2, 12, 12) if fused else (channels,)
  stems = sum(2 * n * p * p * c * a for c in channels)
  mods = len(channels)
  proj = 2 * n * (a * a) + 2 * n * (a * d)  # proj1; proj2 and proj3 as one (A, d) product
  fusion = 2 * n * (2 * mods * a * a + 2 * nq * mods * a + nq * a) if fused else 0
  t = n + 1
  blocks = depth * (2 * t * (4 * d * d + 2 * d * m) + 4 * t * t * d)
  return float(stems + proj + fusion + blocks)


def output_weight_flops(model_cfg: ml_collections.ConfigDict) -> float:
  """One TokenProjection.output_weights call (W2 W3 and b2 W3): per encoder call, not per image."""
  d = variants.decode_variant(model_cfg.variant)["width"]
  a = 3 * d
  return float(2 * a * a * d + 2 * a * d)


def head_flops(model_cfg: ml_collections.ConfigDict) -> float:
  h = model_cfg.head
  d = variants.decode_variant(model_cfg.variant)["width"]
  return 2.0 * (d * h.hidden_dim + max(h.nlayers - 2, 0) * h.hidden_dim ** 2
                + h.hidden_dim * h.bottleneck_dim + h.bottleneck_dim * h.out_dim)


def _family_flops(config, img_size: int, views: int, sizes, block: int) -> float:
  """Forward FLOPs of one sample's `views` views of a family, as the step runs them: with
  modality groups each group's own path (`sizes`: the family's group sizes of one block), else
  the masked path (every stem and the fusion) for every view."""
  mc = config.model
  head = head_flops(mc)
  if not block or sizes is None:
    return views * (encoder_forward_flops(mc, img_size) + head)
  channels = (2, 12, 12)
  per = [encoder_forward_flops(mc, img_size, fused=False, channels=c) for c in channels]
  per.append(encoder_forward_flops(mc, img_size, fused=True))
  return sum(n * (f + head) for n, f in zip(sizes, per)) / block


def step_flops(config: ml_collections.ConfigDict, quotas, block: int) -> float:
  """Model FLOPs of one train step over the global batch (see the module docstring): what the
  step runs, so the logged MFU counts no work that is skipped and skips none that runs.
  `quotas` / `block`: the run plan's group sizes per view family and group block."""
  dc = config.data
  teacher = _family_flops(config, dc.global_size, dc.n_global, quotas["teacher"], block)
  student = (_family_flops(config, dc.global_size, dc.n_global, quotas["student_global"], block)
             + _family_flops(config, dc.local_size, dc.n_local, quotas["student_local"], block))
  student_calls = 2 if dc.n_local else 1
  products = 1 + 1 + 2 * student_calls  # teacher, student forward, student backward per call
  return float(config.global_batch_size * (3 * student + teacher)
               + products * output_weight_flops(config.model))


def peak_flops_per_device(config: ml_collections.ConfigDict) -> float | None:
  if config.get("peak_flops_per_device"):
    return float(config.peak_flops_per_device)
  kind = jax.devices()[0].device_kind
  for name, flops in PEAK_FLOPS.items():
    if kind.startswith(name):
      return flops
  return None


def log_parameter_overview(params: Any, name: str, full_table: bool = False) -> None:
  """One summary line (counts by module) on the console; the per-parameter table in the log
  file, and on the console too with `full_table` (config.log_parameter_table)."""
  from terrafm_jax.train import console  # pylint: disable=g-import-not-at-top
  if jax.process_index() == 0:
    table = parameter_overview.get_parameter_overview(params, include_stats=False)
    logging.info("%s parameters:\n%s", name, table)
    console.say(console.parameter_summary(params, name))
    if full_table:
      print(table, flush=True)


def log_memory_analysis(compiled: Any) -> dict[str, float]:
  """compile().memory_analysis() in GiB per device (None on backends that do not report it)."""
  try:
    mem = compiled.memory_analysis()
  except Exception as e:  # pylint: disable=broad-except
    logging.info("memory_analysis unavailable: %s", e)
    return {}
  if mem is None:
    return {}
  fields = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
            "alias_size_in_bytes", "generated_code_size_in_bytes")
  out = {f.replace("_in_bytes", "_gib"): getattr(mem, f, 0) / 2**30 for f in fields}
  if jax.process_index() == 0:
    logging.info("train step memory per device (GiB): %s",
                 ", ".join(f"{k}={v:.3f}" for k, v in out.items()))
  return out


def summarize(raw: Mapping[str, np.ndarray]) -> dict[str, float]:
  """Device metrics (already fetched) -> flat scalars, e.g. loss/teacher_s1-student_fused."""
  out = {}
  for k, v in raw.items():
    if k in ("pair_loss_sums", "pair_loss_counts"):
      continue
    out[k] = float(np.asarray(v))
  sums, counts = np.asarray(raw["pair_loss_sums"]), np.asarray(raw["pair_loss_counts"])
  for i, ti in enumerate(CATEGORIES):
    for j, sj in enumerate(CATEGORIES):
      if counts[i, j] > 0:  # pairs absent from this batch are not logged (no fake zeros)
        out[f"pair_loss/teacher_{ti}-student_{sj}"] = float(sums[i, j] / counts[i, j])
  return out


class ClassExposure:
  """Cumulative per-class share of the samples the sampler fed to this process."""

  def __init__(self, num_classes: int = len(WORLDCOVER)):
    self.counts = np.zeros(num_classes, np.int64)

  def update(self, labels: np.ndarray) -> None:
    labels = np.asarray(labels).reshape(-1)
    labels = labels[(labels >= 0) & (labels < len(self.counts))]
    self.counts += np.bincount(labels, minlength=len(self.counts))

  def scalars(self) -> dict[str, float]:
    total = max(int(self.counts.sum()), 1)
    names = WORLDCOVER if len(self.counts) == len(WORLDCOVER) else range(len(self.counts))
    return {f"exposure/{n}": c / total for n, c in zip(names, self.counts)}
