"""Modality groups: a fixed number of views per stem group in every block of a batch (host side).

Why: the train step is one static graph. With free per-sample draws every view would have to run
all three stems and the fusion block (then select its own path), ~+27 % of the step's FLOPs for
nothing. Instead the host fixes, per *block* of samples and per view family, how many views go to
each group, and the step runs each stem only on the views of its group (models/patch_embed.py):

  group 0 "s1"      single modality S1        -> S1 stem, TokenProjection (released case-1 path)
  group 1 "s2_l1c"  single modality S2 L1C    -> L1C stem, TokenProjection
  group 2 "s2_l2a"  single modality S2 L2A    -> L2A stem, TokenProjection
  group 3 "fused"   two or more modalities    -> all three stems + cross-attention fusion

View families: the teacher's global views, the student's global views and the student's local
views (each drawn independently, METHOD.md 4). A block is `block` consecutive samples of the global
batch (default: the samples of one batch shard, so no view leaves its device).

The rule, per (block, family) of n = block x views-per-sample slots, with p_t the probability of
each mask type t (single s1 / single L1C / single L2A / two or more) under the configured draw
(reading "a": p_multi = 1 - single_p, each allowed modality single_p / k; reading "b": from
keep_p; one allowed modality: all single):
  1. mask-type counts k_t: n x p_t randomly rounded (systematic sampling of the fractional parts,
     so E[k_t] = n p_t exactly and sum k_t = n);
  2. every slot keeps its per-sample draw (crops.plan_crops) while its type has room, slots taken
     in a random order; the others are reassigned at random to a type with room that the tile's
     availability allows (single m: m available; multi: >= 2 available), with a fresh draw inside
     that type (multi: a uniform subset of >= 2 available modalities);
  3. compute groups: group m (single) takes floor(n p_m) of the single-m slots, chosen at random;
     the fused group takes the rest (all multi slots and the 0 or 1 leftover single slot of each
     modality: the fused path reproduces the case-1 value of a single-modality mask bit for bit).
     The group sizes depend on the config only, so the step's shapes are static.
  4. availability: a slot that fits no type with room keeps its own draw. If a block has fewer
     single-m views than group m needs, other views of tiles that have m are turned into
     single-m views; if no tile of the block has m at all, the group is filled with views that
     are computed but left out of the loss and the centers ("valid" False, logged as
     `dropped_views`). Nothing is refused: real data with patchy S1 coverage trains on.
By exchangeability each slot's mask type has marginal probability E[k_t] / n = p_t: METHOD.md 4's
draw probabilities hold exactly where every tile has every modality; rule 4 bends them only
where availability forces it.
"""
from __future__ import annotations

import itertools

import numpy as np

from terrafm_jax.data import contract as contract_lib
from terrafm_jax.data import crops as crops_lib

GROUPS = ("s1", "s2_l1c", "s2_l2a", "fused")
FUSED = 3
NUM_MODALITIES = len(contract_lib.MODALITIES)


def group_probabilities(cfg: crops_lib.CropConfig) -> np.ndarray:
  """(4,) probability of each group for one view of a tile with every allowed modality."""
  allowed = np.isin(contract_lib.MODALITIES, cfg.modalities)
  k = int(allowed.sum())
  p = np.zeros(len(GROUPS))
  if k == 1:
    p[:NUM_MODALITIES][allowed] = 1.0
    return p
  if cfg.modality_reading == "a":
    p[:NUM_MODALITIES][allowed] = cfg.single_p / k
    p[FUSED] = 1.0 - cfg.single_p
  else:
    q = cfg.keep_p
    nonempty = 1.0 - (1.0 - q) ** k
    p[:NUM_MODALITIES][allowed] = q * (1.0 - q) ** (k - 1) / nonempty
    p[FUSED] = 1.0 - p[:NUM_MODALITIES].sum()
  return p


def round_counts(rng: np.random.Generator, expected: np.ndarray) -> np.ndarray:
  """Integer counts with E[count] = expected and a fixed sum (systematic randomized rounding)."""
  expected = np.asarray(expected, np.float64)
  base = np.floor(expected + 1e-9).astype(int)
  frac = np.clip(expected - base, 0.0, None)
  extra = int(round(frac.sum()))
  if extra:
    edges = np.concatenate([[0.0], np.cumsum(frac)])
    points = rng.uniform() * frac.sum() / extra + np.arange(extra) * frac.sum() / extra
    for pt in points:
      base[min(int(np.searchsorted(edges, pt, side="right")) - 1, len(base) - 1)] += 1
  return base


def group_sizes(n: int, probs: np.ndarray) -> tuple[int, ...]:
  """Static compute-group sizes of n slots: floor(n p_m) per single modality, the rest fused."""
  single = [int(np.floor(n * p + 1e-9)) for p in probs[:NUM_MODALITIES]]
  return tuple(single) + (n - sum(single),)


def family_quotas(cfg: crops_lib.CropConfig, block: int) -> dict[str, tuple[int, ...]]:
  """Per view family, the compute-group sizes of one block (static for the run)."""
  probs = group_probabilities(cfg)
  return {"teacher": group_sizes(block * cfg.n_global, probs),
          "student_global": group_sizes(block * cfg.n_global, probs),
          "student_local": group_sizes(block * cfg.n_local, probs)}


def groups_of(masks: np.ndarray) -> np.ndarray:
  """(..., 3) bool masks -> (...,) group index (single modality m -> m, >= 2 -> fused)."""
  masks = np.asarray(masks, bool)
  return np.where(masks.sum(-1) == 1, masks.argmax(-1), FUSED).astype(np.int8)


def _fits(group: int, avail: np.ndarray) -> bool:
  return bool(avail.sum() >= 2) if group == FUSED else bool(avail[group])


def _draw_in_group(rng: np.random.Generator, group: int, avail: np.ndarray) -> np.ndarray:
  out = np.zeros(NUM_MODALITIES, bool)
  if group != FUSED:
    out[group] = True
    return out
  idx = np.flatnonzero(avail)
  subsets = [s for k in range(2, idx.size + 1) for s in itertools.combinations(idx, k)]
  out[list(subsets[rng.integers(len(subsets))])] = True
  return out


def balance_family(rng: np.random.Generator, masks: np.ndarray, available: np.ndarray,
                   probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """One (block, family): masks (b, v, 3) drawn per sample, available (b, 3) (already restricted
  to the allowed modalities), probs (4,) -> (masks, groups (b, v) int8, valid (b, v) bool) with
  exactly group_sizes(b * v, probs) slots per compute group (module docstring). `valid` is False
  only for a view that the block cannot serve (rule 4): it is computed, and left out of the loss."""
  b, v, _ = masks.shape
  n = b * v
  flat = masks.reshape(n, NUM_MODALITIES).copy()
  avail = np.repeat(np.asarray(available, bool), v, axis=0)          # slot -> its tile's modalities
  room = round_counts(rng, n * np.asarray(probs))                      # step 1: target type counts
  drawn = groups_of(flat)
  displaced = []
  for s in rng.permutation(n):                                         # step 2: keep
    t = drawn[s]
    if room[t] > 0:
      room[t] -= 1
    else:
      displaced.append(s)
  for s in displaced:                                                  # step 2: reassign
    options = [t for t in range(len(GROUPS)) if room[t] > 0 and _fits(t, avail[s])]
    if options:
      t = int(rng.choice(options, p=room[options] / room[options].sum()))
      room[t] -= 1
      flat[s] = _draw_in_group(rng, t, avail[s])
    # else: no target type with room fits this tile; it keeps its own draw (rule 4)
  sizes = group_sizes(n, probs)
  kind = groups_of(flat)
  group = np.full(n, FUSED, np.int8)                                   # step 3
  valid = np.ones(n, bool)
  taken = np.zeros(n, bool)
  for m in range(NUM_MODALITIES):
    idx = list(rng.permutation(np.flatnonzero((kind == m) & ~taken)))[:sizes[m]]
    if len(idx) < sizes[m]:  # rule 4: turn other views of tiles that have m into single-m views
      spare = rng.permutation(np.flatnonzero(~taken & avail[:, m] & (kind != m)))
      for s in spare[:sizes[m] - len(idx)]:
        flat[s] = _draw_in_group(rng, m, avail[s])
        idx.append(s)
    if len(idx) < sizes[m]:  # no tile of the block has m: fill with views left out of the loss
      rest = rng.permutation(np.flatnonzero(~taken & ~np.isin(np.arange(n), idx)))
      for s in rest[:sizes[m] - len(idx)]:
        valid[s] = False
        idx.append(s)
    idx = np.asarray(idx, int)
    group[idx] = m
    taken[idx] = True
  return (flat.reshape(b, v, NUM_MODALITIES), group.reshape(b, v), valid.reshape(b, v))


def balance_batch(batch: dict, cfg: crops_lib.CropConfig, block: int, seed: int,
                  first_position: int) -> dict:
  """Rewrite the masks of a process-local batch block by block; adds "student_groups" (B, V) and
  "teacher_groups" (B, G) int8, "student_valid" / "teacher_valid" bool (rule 4). `first_position` is the global sample position of the batch's
  first sample: each block's RNG is seeded by its own first position, so the result does not
  depend on how the global batch is split over processes."""
  b = batch["student_masks"].shape[0]
  if b % block:
    raise ValueError(f"modality groups: the local batch of {b} samples is not a multiple of the "
                     f"block of {block} samples (config.data.group_block)")
  probs = group_probabilities(cfg)
  allowed = np.isin(contract_lib.MODALITIES, cfg.modalities)
  avail = np.asarray(batch["available"], bool)
  avail = np.where((avail & allowed).any(-1, keepdims=True), avail & allowed, avail)
  out = dict(batch)
  smask, tmask = batch["student_masks"].copy(), batch["teacher_masks"].copy()
  sgrp = np.zeros(smask.shape[:2], np.int8)
  tgrp = np.zeros(tmask.shape[:2], np.int8)
  sval = np.ones(smask.shape[:2], bool)
  tval = np.ones(tmask.shape[:2], bool)
  n_g = cfg.n_global
  for lo in range(0, b, block):
    hi = lo + block
    pos = first_position + lo
    rng = np.random.default_rng([seed, 4, pos])
    tmask[lo:hi], tgrp[lo:hi], tval[lo:hi] = balance_family(
        rng, tmask[lo:hi], avail[lo:hi], probs)
    smask[lo:hi, :n_g], sgrp[lo:hi, :n_g], sval[lo:hi, :n_g] = balance_family(
        rng, smask[lo:hi, :n_g], avail[lo:hi], probs)
    if smask.shape[1] > n_g:
      smask[lo:hi, n_g:], sgrp[lo:hi, n_g:], sval[lo:hi, n_g:] = balance_family(
          rng, smask[lo:hi, n_g:], avail[lo:hi], probs)
  out.update(student_masks=smask, teacher_masks=tmask, student_groups=sgrp, teacher_groups=tgrp,
             student_valid=sval, teacher_valid=tval)
  return out
