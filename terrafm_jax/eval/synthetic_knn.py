"""End-of-run learning check: kNN on held-out labelled synthetic tiles, pretrained vs random init.

The held-out tiles come from `terrafm_jax.data.synthetic.make_labelled_set` with a seed the
training set never used; labels are the dominant WorldCover class. Features are the CLS token of
the teacher encoder (the model that is evaluated and exported) on the whole tile resized to the
global-crop size, one modality at a time (single-modality path). Half the tiles are the kNN
memory, half the queries. The same architecture at its random initialisation (the very start of
this run) is the baseline; the margin must be clearly positive for a run that learned.

Two readings, both pretrained vs random init:
  within-modality: memory and queries in the same modality (3 numbers);
  cross-modal: memory in one modality, queries in another (6 ordered pairs). TerraFM's claim is one
    representation for S1, L1C and L2A; at random init the stems are unrelated, so this sits near
    chance, and it rises only if pretraining aligned the modalities.
The headline (`config.knn.modality`) is one modality's within-modality accuracy, or "all": the mean
of the three within-modality accuracies.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from terrafm_jax.data.contract import DEFAULT_CONTRACT, MODALITIES, InputContract
from terrafm_jax.eval import knn
from terrafm_jax.train import device_crops


def make_encoder(model, modality: str, size: int, contract: InputContract = DEFAULT_CONTRACT):
  """jit(params, raw tiles) -> CLS features of whole tiles resized to `size`, one modality,
  normalised with the run's input contract.

  Built once per modality and reused for both parameter sets, so each compiles once.
  """
  @jax.jit
  def encode(p, raw):
    x = device_crops.normalize_tiles(raw, contract)
    t = x[modality].shape[1]
    n = x[modality].shape[0]
    boxes = jnp.broadcast_to(jnp.asarray([0.0, 0.0, t, t], jnp.float32), (n, 1, 4))
    flip = jnp.zeros((n, 1), bool)
    img = device_crops.crop_views({modality: jnp.nan_to_num(x[modality])}, boxes, flip,
                                  size)[modality][:, 0]
    return model.apply({"params": p}, {modality: img}, None, train=False)["cls"]
  return encode


def features(encode, params, tiles: dict[str, np.ndarray], batch_size: int) -> np.ndarray:
  """(N, D) features of all N tiles; the last batch is padded so every call has one shape."""
  n = len(tiles["label"])
  feats = []
  for lo in range(0, n, batch_size):
    raw = {m: tiles[m][lo:lo + batch_size] for m in MODALITIES}
    got = len(raw[MODALITIES[0]])
    if got < batch_size:
      raw = {m: np.concatenate([v, np.repeat(v[-1:], batch_size - got, axis=0)])
             for m, v in raw.items()}
    feats.append(np.asarray(encode(params, raw))[:got])
  return np.concatenate(feats)


def knn_matrix(features: dict[str, np.ndarray], labels: np.ndarray, memory: np.ndarray,
               queries: np.ndarray, *, k: int, temperature: float,
               num_classes: int = 11) -> dict[tuple[str, str], float]:
  """kNN accuracy for every (memory modality, query modality) pair.

  features[m] is (N, D) for the same N tiles in every modality; `memory` and `queries` index them.
  """
  return {(a, b): knn.knn_accuracy(features[a][memory], labels[memory], features[b][queries],
                                   labels[queries], num_classes=num_classes, k=k,
                                   temperature=temperature)
          for a in features for b in features}


def headline(within: dict[str, float], which: str) -> float:
  if which == "all":
    return float(np.mean(list(within.values())))
  return within[which]


def summarize(random_acc: dict[tuple[str, str], float],
              trained_acc: dict[tuple[str, str], float], which: str) -> dict[str, Any]:
  """The result dict from two `knn_matrix` outputs (random init and pretrained)."""
  mods = sorted({a for a, _ in random_acc}, key=MODALITIES.index)
  per_mod = {m: {"random_init": random_acc[(m, m)], "pretrained": trained_acc[(m, m)]}
             for m in mods}
  cross = {f"{a}->{b}": {"random_init": random_acc[(a, b)], "pretrained": trained_acc[(a, b)]}
           for a in mods for b in mods if a != b}
  rnd = headline({m: d["random_init"] for m, d in per_mod.items()}, which)
  pre = headline({m: d["pretrained"] for m, d in per_mod.items()}, which)
  cross_mean = {w: float(np.mean([d[w] for d in cross.values()])) if cross else float("nan")
                for w in ("random_init", "pretrained")}
  return {"random_init": rnd, "pretrained": pre, "margin": pre - rnd, "modality": which,
          "per_modality": per_mod, "cross_modal": cross, "cross_modal_mean": cross_mean}


def run(config: ml_collections.ConfigDict, model, teacher: Any, random_params: Any, writer,
        step: int, contract: InputContract = DEFAULT_CONTRACT) -> dict[str, Any] | None:
  """Returns `summarize(...)` plus "k" and "num_test"; None on processes other than 0.

  `random_params`: the run's parameters at its random init (the baseline)."""
  kc = config.knn
  # Gather the (possibly sharded, multi-host) teacher to every host, then evaluate on process 0.
  if jax.process_count() > 1:
    teacher = multihost_utils.process_allgather(teacher, tiled=True)
  if jax.process_index() != 0:
    return None
  from terrafm_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  tile = config.data.builtin.tile_size
  held_out = synthetic.make_labelled_set(kc.num_cells, tile_size=tile, seed=kc.seed)
  keep = held_out["label"] >= 0
  held_out = {k: v[keep] for k, v in held_out.items()}
  labels = held_out["label"]
  n = len(labels)
  size = kc.img_size if kc.img_size > 0 else config.data.global_size
  random_params = jax.device_get(random_params)
  teacher = jax.device_get(teacher)
  order = np.random.default_rng(kc.seed).permutation(n)
  tr, te = order[: n // 2], order[n // 2:]
  encoders = {m: make_encoder(model, m, size, contract) for m in MODALITIES}
  accs = []
  for params in (random_params, teacher):
    feats = {m: features(encoders[m], params, held_out, kc.batch_size) for m in MODALITIES}
    accs.append(knn_matrix(feats, labels, tr, te, k=kc.k, temperature=kc.temperature))
  result = summarize(*accs, kc.modality)
  result.update(k=kc.k, num_test=len(te))
  scalars = {f"knn/{m}/{w}": v for m, d in result["per_modality"].items() for w, v in d.items()}
  # TensorBoard tag names allow no ">": "s1->s2_l2a" is logged as "s1_to_s2_l2a".
  scalars.update({f"knn/cross/{p.replace('->', '_to_')}/{w}": v
                  for p, d in result["cross_modal"].items() for w, v in d.items()})
  scalars.update({f"knn/cross_mean/{w}": v for w, v in result["cross_modal_mean"].items()})
  scalars["knn/margin"] = result["margin"]
  writer.write_scalars(step, scalars)
  logging.info("kNN learning check: %s", result)
  return result
