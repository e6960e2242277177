"""Frozen-encoder features of one benchmark split: batched, jitted, sharded, cached on disk.

Samples stream through a Grain MapDataset (reader -> band mapping -> fixed-size batches, read by
threads), the encoder runs data-parallel over the local devices, and the outputs are written to
memory-mapped .npy files under

  <cache_dir>/<params digest>-<contract digest>/<task>/<split>-<partition>-<size>px/

one file per output ("cls" (N, d); "patch" (N, h, w, d); "layers" (N, L, h, w, d) float16) plus the
labels and a meta.json. The folder is built under a temporary name and renamed when complete, so a
killed extraction never leaves a half-written cache, and k-NN / linear runs on the same (weights,
task, split) never re-run the encoder.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from typing import Any, Sequence

import grain
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm.auto import tqdm

from terrafm_jax.data.contract import MODALITIES
from terrafm_jax.eval import bands as bands_lib
from terrafm_jax.eval.dataset import EvalSplit, check_label
from terrafm_jax.eval.weights import Weights

OUTPUTS = ("cls", "patch", "layers")
_DTYPES = {"cls": np.float32, "patch": np.float16, "layers": np.float16}


@dataclasses.dataclass
class Features:
  arrays: dict[str, np.ndarray]      # output name -> (N, ...) array (memory-mapped when cached)
  labels: np.ndarray
  meta: dict[str, Any]

  def __len__(self) -> int:
    return len(self.labels)


def input_size_for(native: int, patch: int, requested: int | None = None) -> int:
  """The encoder's input size: `requested`, else the native size rounded up to the patch size."""
  size = requested or native
  if size % patch:
    size = -(-size // patch) * patch
    if requested:
      raise ValueError(f"input size {requested} is not a multiple of the patch size {patch}")
  return size


class _Mapped(grain.transforms.Map):
  """reader sample -> ({stem: normalised (H, W, C)}, label)."""

  def __init__(self, split: EvalSplit, plans, contract):
    self._split, self._plans, self._contract = split, plans, contract

  def map(self, sample):
    where = f"{self._split.root}: {sample.get('id', '?')}"
    inputs = bands_lib.apply(self._plans, sample, self._contract, where)
    return inputs, check_label(self._split, sample["label"], where)


def model_batches(split: EvalSplit, plans, contract, batch_size: int, num_threads: int = 4):
  """Iterator of (inputs, labels, count) with every batch padded to `batch_size` (one compile)."""
  ds = grain.MapDataset.source(split).map(_Mapped(split, plans, contract))
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=
                                            2 * batch_size))
  buf: list[Any] = []

  def emit(items):
    n = len(items)
    pad = items + [items[-1]] * (batch_size - n)
    inputs = {k: np.stack([x[0][k] for x in pad]) for k in pad[0][0]}
    labels = np.stack([np.asarray(x[1]) for x in items])
    return inputs, labels, n

  for item in it:
    buf.append(item)
    if len(buf) == batch_size:
      yield emit(buf)
      buf = []
  if buf:
    yield emit(buf)


_FORWARDS: dict[tuple[Any, ...], Any] = {}


def make_forward(weights: Weights, stems: Sequence[str], input_size: int, what: Sequence[str],
                 out_indices: Sequence[int] = ()):
  """jit(params, inputs) -> {output: array}; inputs resized to `input_size` on the device.

  Memoised per (model config, stems, size, outputs), so repeated extractions (in-loop evaluation,
  every split of a task) reuse one compiled function.
  """
  key = (weights.provenance.get("kind") == "pixels", weights.model_config.to_json(), tuple(stems),
         input_size, tuple(what), tuple(out_indices))
  if key not in _FORWARDS:
    _FORWARDS[key] = _build_forward(weights, stems, input_size, what, out_indices)
  return _FORWARDS[key]


def _pixel_forward(stems, input_size):
  @jax.jit
  def forward(params, inputs):
    del params
    flat = []
    for m in stems:
      x = inputs[m]
      if x.shape[1] != input_size or x.shape[2] != input_size:
        x = jax.image.resize(x, (x.shape[0], input_size, input_size, x.shape[3]), "bilinear",
                             antialias=False)
      flat.append(x.reshape(x.shape[0], -1))
    return {"cls": jnp.concatenate(flat, axis=1)}
  return forward


def _build_forward(weights: Weights, stems, input_size, what, out_indices):
  if weights.provenance.get("kind") == "pixels":
    if tuple(what) != ("cls",):
      raise ValueError(f"the pixel baseline gives only 'cls' features (flattened pixels), not "
                       f"{tuple(what)}")
    return _pixel_forward(stems, input_size)
  model = weights.encoder()
  p = model.dims["patch_size"]
  layers = tuple(out_indices) if "layers" in what else ()

  @jax.jit
  def forward(params, inputs):
    images = {}
    for m in stems:
      x = inputs[m]
      if x.shape[1] != input_size or x.shape[2] != input_size:
        x = jax.image.resize(x, (x.shape[0], input_size, input_size, x.shape[3]), "bilinear",
                             antialias=False)
      images[m] = x
    out = model.apply({"params": params}, images, None, train=False, out_indices=layers)
    b, g = out["cls"].shape[0], input_size // p
    res = {"cls": out["cls"]}
    if "patch" in what:
      res["patch"] = out["patch_tokens"].reshape(b, g, g, -1)
    if "layers" in what:
      res["layers"] = jnp.stack(out["features"], axis=1)
    return res
  return forward


def _cache_dir(cache_dir: str, weights: Weights, split: EvalSplit, input_size: int,
               plans) -> str:
  """One folder per (weights, contract, task, split, partition, size, band table)."""
  tag = f"{weights.provenance['params_digest']}-{weights.provenance['contract_digest']}"
  task = split.task.replace("/", "__")
  table = hashlib.sha256(repr(plans).encode()).hexdigest()[:8]
  stems = "+".join(p.stem for p in plans)
  return os.path.join(cache_dir, tag, task,
                      f"{split.split}-{split.partition}-{input_size}px-{stems}-{table}")


def _load_cached(folder: str, what: Sequence[str]) -> Features | None:
  meta_file = os.path.join(folder, "meta.json")
  if not os.path.exists(meta_file):
    return None
  with open(meta_file, encoding="utf-8") as f:
    meta = json.load(f)
  if not set(what) <= set(meta["outputs"]):
    return None
  arrays = {k: np.load(os.path.join(folder, f"{k}.npy"), mmap_mode="r") for k in what}
  return Features(arrays, np.load(os.path.join(folder, "labels.npy")), meta)


def extract(weights: Weights, split: EvalSplit, mappings, *, input_size: int | None = None,
            what: Sequence[str] = ("cls",), batch_size: int = 32, cache_dir: str | None = None,
            progress: bool = True, out_indices: Sequence[int] | None = None) -> Features:
  """Features of every sample of `split` (see the module doc); `mappings` is the task's table."""
  unknown = set(what) - set(OUTPUTS)
  if unknown:
    raise ValueError(f"unknown feature output(s) {sorted(unknown)}; expected some of {OUTPUTS}")
  if len(split) == 0:
    raise ValueError(f"{split.describe()}: no samples")
  plans = bands_lib.plan(tuple(mappings), split.inputs, weights.contract, split.root)
  pixels = weights.provenance.get("kind") == "pixels"
  patch = 1 if pixels else weights.encoder().dims["patch_size"]
  first = split[0]
  native = first[plans[0].group].shape[0]
  input_size = input_size_for(native, patch, input_size)
  out_indices = tuple(out_indices if out_indices is not None else weights.model_config.out_indices)
  folder = _cache_dir(cache_dir, weights, split, input_size, plans) if cache_dir else None
  if folder:
    cached = _load_cached(folder, what)
    if cached is not None:
      logging.info("features of %s %s from the cache %s", split.task, split.split, folder)
      return cached

  devices = jax.local_devices()
  if batch_size % len(devices):
    batch_size = -(-batch_size // len(devices)) * len(devices)
  mesh = jax.sharding.Mesh(np.asarray(devices), ("data",))
  data_sharding = NamedSharding(mesh, P("data"))
  params = jax.device_put(weights.params, NamedSharding(mesh, P()))
  stems = tuple(m for m in MODALITIES if m in {pl.stem for pl in plans})
  forward = make_forward(weights, stems, input_size, what, out_indices)

  n = len(split)
  tmp = (folder + ".partial") if folder else None
  if tmp:
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
  arrays: dict[str, np.ndarray] = {}
  labels = []
  lo = 0
  bar = tqdm(total=n, desc=f"features {split.task} {split.split}", unit="img", disable=not progress)
  for inputs, y, count in model_batches(split, plans, weights.contract, batch_size):
    out = forward(params, jax.device_put(inputs, data_sharding))
    for k, v in out.items():
      v = np.asarray(v[:count]).astype(_DTYPES[k])
      if k not in arrays:
        shape = (n,) + v.shape[1:]
        arrays[k] = (np.lib.format.open_memmap(os.path.join(tmp, f"{k}.npy"), "w+", _DTYPES[k],
                                               shape) if tmp else np.zeros(shape, _DTYPES[k]))
      arrays[k][lo:lo + count] = v
    labels.append(y)
    lo += count
    bar.update(count)
  bar.close()
  labels_arr = np.concatenate(labels)
  meta = {"task": split.task, "split": split.split, "partition": split.partition,
          "num_samples": n, "input_size": input_size, "outputs": sorted(arrays),
          "out_indices": list(out_indices), "stems": list(stems),
          "filled_bands": {pl.stem: list(pl.filled) for pl in plans},
          "dropped_bands": {pl.stem: list(pl.dropped) for pl in plans},
          "provenance": weights.provenance}
  if tmp:
    for a in arrays.values():
      a.flush()
    np.save(os.path.join(tmp, "labels.npy"), labels_arr)
    with open(os.path.join(tmp, "meta.json"), "w", encoding="utf-8") as f:
      json.dump(meta, f, indent=2)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return _load_cached(folder, what)
  return Features(arrays, labels_arr, meta)
