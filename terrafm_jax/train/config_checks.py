"""The pretraining config's checks: an impossible combination is one ConfigError naming the field,
before anything runs (the entry point reports it as "invalid configuration", exit code 2).

The in-loop evaluation (config.eval) is checked by its hook when the run starts, and the values
that depend on the data (steps, group block) by the run plan (train/run_plan.py).
"""
from __future__ import annotations

import ml_collections

from terrafm_jax import protocol
from terrafm_jax.errors import ConfigError
from terrafm_jax.models import variants


def _positive(c, *names):
  for n in names:
    v = c
    for part in n.split("."):
      v = v[part]
    if not v > 0:
      raise ValueError(f"config.{n} must be positive, got {v!r}")


def validate(c: ml_collections.ConfigDict) -> None:
  """Raise ConfigError with the offending field for an impossible config."""
  try:
    _validate(c)
  except ConfigError:
    raise
  except (ValueError, KeyError, AttributeError) as e:
    raise ConfigError(str(e)) from None


def _validate(c: ml_collections.ConfigDict) -> None:
  variants.decode_variant(c.model.variant)
  if c.data.contract not in ("prepared", "default") and not str(c.data.contract).endswith(
      ".json"):
    raise ConfigError(f"config.data.contract={c.data.contract!r}: expected 'prepared', "
                      "'default' or a path to a contract .json file")
  _positive(c, "global_batch_size", "num_epochs", "data.n_global", "data.global_size",
            "data.local_size", "dino.student_temp", "dino.teacher_temp",
            "dino.warmup_teacher_temp", "optim.base_lr", "optim.lr_batch_reference",
            "log_every_steps", "checkpoint.every_steps", "checkpoint.keep")
  if c.data.n_local < 0:
    raise ValueError(f"config.data.n_local must be >= 0, got {c.data.n_local}")
  if c.stop_after_step < 0:
    raise ValueError(f"config.stop_after_step must be >= 0 (0 = off), got {c.stop_after_step}")
  for item in c.xla_cpu_options:
    if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str)):
      raise ValueError(f"config.xla_cpu_options must hold (name, value) pairs, got {item!r} in "
                       f"{c.xla_cpu_options!r}")
  p = variants.decode_variant(c.model.variant)["patch_size"]
  for f in ("global_size", "local_size"):
    if c.data[f] % p:
      raise ValueError(f"config.data.{f}={c.data[f]} is not a multiple of the patch size {p}")
  if not 0.0 <= c.dino.alpha <= 1.0:
    raise ValueError(f"config.dino.alpha must be in [0, 1], got {c.dino.alpha}")
  for f in ("center_momentum", "center_h_momentum", "momentum_teacher", "momentum_teacher_end"):
    if not 0.0 <= c.dino[f] <= 1.0:
      raise ValueError(f"config.dino.{f} must be in [0, 1], got {c.dino[f]}")
  if any(not 0 <= k <= 10 for k in c.dino.high_freq_classes):
    raise ValueError(f"config.dino.high_freq_classes must be WorldCover indices 0..10, got "
                     f"{c.dino.high_freq_classes}")
  if c.model.dtype not in ("float32", "bfloat16"):
    raise ValueError(f"config.model.dtype must be 'float32' or 'bfloat16', got {c.model.dtype!r}")
  if c.model.param_dtype != "float32":
    raise ValueError("config.model.param_dtype must be 'float32' (fp32 master weights and "
                     "optimizer state)")
  jit = tuple(c.data.spectral_jitter)
  if len(jit) != 2 or min(jit) < 0:
    raise ValueError(f"config.data.spectral_jitter must be two sigmas >= 0 (per band, per view), "
                     f"got {c.data.spectral_jitter}")
  for f in ("global_scale", "local_scale"):
    lo, hi = c.data[f]
    if not 0 < lo <= hi <= 1:
      raise ValueError(f"config.data.{f}={c.data[f]} must satisfy 0 < lo <= hi <= 1")
  if c.optim.min_lr < 0 or c.optim.weight_decay < 0 or c.optim.clip_grad < 0:
    raise ValueError("config.optim.min_lr, weight_decay and clip_grad must be >= 0")
  if c.knn.modality != "all" and c.knn.modality not in ("s1", "s2_l1c", "s2_l2a"):
    raise ValueError(f"config.knn.modality={c.knn.modality!r}: expected 'all', 's1', 's2_l1c' "
                     "or 's2_l2a'")
  if c.knn.enabled and (c.knn.k <= 0 or c.knn.num_cells < 4):
    raise ValueError(f"config.knn needs k > 0 and num_cells >= 4, got k={c.knn.k}, "
                     f"num_cells={c.knn.num_cells}")
  t = c.transfer
  if t.enabled:
    if not t.ks or any(int(k) <= 0 for k in t.ks) or t.every_steps < 0 or t.num_bootstrap < 100:
      raise ValueError(f"config.transfer needs positive ks, every_steps >= 0 and num_bootstrap "
                       f">= 100, got ks={t.ks}, every_steps={t.every_steps}, "
                       f"num_bootstrap={t.num_bootstrap}")
    for key, value in (("pooling", t.pooling),
                       *(("also_poolings", v) for v in t.also_poolings)):
      if value not in protocol.TRANSFER_POOLINGS:
        raise ValueError(f"config.transfer.{key}: {value!r} is not one of "
                         f"{', '.join(protocol.TRANSFER_POOLINGS)}")
    if t.pooling in t.also_poolings or len(set(t.also_poolings)) < len(t.also_poolings):
      raise ValueError(f"config.transfer.also_poolings={tuple(t.also_poolings)} repeats a "
                       f"pooling (config.transfer.pooling={t.pooling!r})")
    if t.input_size % p:
      raise ValueError(f"config.transfer.input_size={t.input_size} is not a multiple of the "
                       f"patch size {p}")
  # config.eval (task, protocol) is checked by its hook (eval/run_hooks.py) when the run starts.
  if c.global_batch_size % 1:
    raise ValueError("config.global_batch_size must be an integer")
  if c.data.source == "pipeline" and not c.data.data_dir and not c.data.builtin.enabled:
    raise ConfigError(
        "config.data.data_dir is required: the folder written by `python -m "
        "terrafm_jax.data.prepare` (only configs/smoke.py trains on the built-in synthetic set, "
        "config.data.builtin.enabled=True)")
