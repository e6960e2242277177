"""Multi-crop views on the device: raw tiles + boxes -> normalised, sample-major model inputs.

Runs inside the jitted step (DESIGN.md decision 5): the host ships raw tiles and crop boxes only.
Every view carries all three modalities (same crop box, co-registered) and a (3,) mask, so the
graph is static whatever the modality draw.

Layout: sample-major, (B, V, ...) -> (B * V, ...) with the sample outermost. The batch axis is the
sharded one, so each device keeps its own samples' views from the crops through the encoder to the
loss; a view-major layout (V outermost) would reshuffle activations between devices (all-gathers
and collective permutes in the compiled step; tests/train/test_step_sharding_hlo.py).
"""
from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from terrafm_jax.data.contract import MODALITIES, InputContract

from terrafm_jax.train import device_crops


class Views(NamedTuple):
  global_images: dict[str, jax.Array]     # modality -> (B * n_global, G, G, C), sample-major
  local_images: dict[str, jax.Array] | None  # modality -> (B * n_local, L, L, C) or None
  student_global_mask: jax.Array           # (B * n_global, 3) bool
  student_local_mask: jax.Array | None     # (B * n_local, 3) bool
  teacher_mask: jax.Array                  # (B * n_global, 3) bool
  # Modality groups (data/modality_groups.py), sample-major like the masks; None when off.
  student_global_groups: jax.Array | None = None   # (B * n_global,) int8
  student_local_groups: jax.Array | None = None    # (B * n_local,) int8
  teacher_groups: jax.Array | None = None          # (B * n_global,) int8


def sample_major(x: jax.Array) -> jax.Array:
  """(B, V, ...) -> (B * V, ...); a reshape to (B, V, ...) recovers the views."""
  return x.reshape((-1,) + x.shape[2:])


def per_view(x: jax.Array, batch: int) -> jax.Array:
  """Sample-major (B * V, ...) -> (V, B, ...), the loss's view-indexed layout. The sharded batch
  axis only moves position (no data leaves its device)."""
  return jnp.swapaxes(x.reshape((batch, -1) + x.shape[1:]), 0, 1)


def spectral_jitter(views: dict[str, jax.Array], key: jax.Array, contract: InputContract,
                    band_sigma: float, view_sigma: float) -> dict[str, jax.Array]:
  """Random gains on the optical views, drawn per (sample, view): log-normal per band (sigma
  `band_sigma`) times a log-normal brightness shared by the bands (`view_sigma`). One draw serves
  L1C and L2A (the same bands of the same view). The gain applies to reflectance, so a normalised
  x becomes g x + (g - 1) mean / std; exact zeros (nodata) stay 0. S1 is left as it is."""
  optical = [m for m in views if m != "s1"]
  if not optical:
    return views
  b, v = views[optical[0]].shape[:2]
  kb, kv = jax.random.split(key)
  c = views[optical[0]].shape[-1]
  log_g = (band_sigma * jax.random.normal(kb, (b, v, 1, 1, c))
           + view_sigma * jax.random.normal(kv, (b, v, 1, 1, 1)))
  g = jnp.exp(log_g)
  out = dict(views)
  for m in optical:
    ratio = jnp.asarray(contract[m].mean, jnp.float32) / jnp.asarray(contract[m].std, jnp.float32)
    x = views[m]
    out[m] = jnp.where(x == 0, 0.0, g * x + (g - 1.0) * ratio)
  return out


def make_views(batch: Mapping[str, jax.Array], contract: InputContract,
               data_cfg: ml_collections.ConfigDict, compute_dtype: Any,
               modalities: tuple[str, ...] = MODALITIES, key: jax.Array | None = None) -> Views:
  """`modalities`: the ones to crop (needed_modalities); the others are absent from the views.
  `key`: the step's randomness for data.spectral_jitter (unused when it is off)."""
  n_g = data_cfg.n_global
  tiles = device_crops.normalize_tiles({m: batch[m] for m in MODALITIES}, contract,
                                       modalities=modalities)
  jitter = data_cfg.get("spectral_jitter", (0.0, 0.0))
  jitter_on = key is not None and (jitter[0] > 0 or jitter[1] > 0)

  def crops(lo, hi, size):
    out = device_crops.crop_views(tiles, batch["boxes"][:, lo:hi], batch["flip"][:, lo:hi],
                                  out_size=size, use_kernel=data_cfg.get("crop_kernel", True))
    if jitter_on:
      out = spectral_jitter(out, jax.random.fold_in(key, lo), contract, *jitter)
    return {m: sample_major(out[m]).astype(compute_dtype) for m in modalities}

  n_views = batch["boxes"].shape[1]
  smask = batch["student_masks"]
  sgrp, tgrp = batch.get("student_groups"), batch.get("teacher_groups")
  local, local_mask, local_groups = None, None, None
  if n_views > n_g:
    local = crops(n_g, n_views, data_cfg.local_size)
    local_mask = sample_major(smask[:, n_g:])
    local_groups = None if sgrp is None else sample_major(sgrp[:, n_g:])
  return Views(global_images=crops(0, n_g, data_cfg.global_size), local_images=local,
               student_global_mask=sample_major(smask[:, :n_g]), student_local_mask=local_mask,
               teacher_mask=sample_major(batch["teacher_masks"]),
               student_global_groups=None if sgrp is None else sample_major(sgrp[:, :n_g]),
               student_local_groups=local_groups,
               teacher_groups=None if tgrp is None else sample_major(tgrp))
