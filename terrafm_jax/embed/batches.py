"""Fragments -> fixed-size batches -> CLS embeddings, with the evaluation stack's jitted forward.

The forward is `eval.features.make_forward` (jitted, memoised per model config, stems and input
size; resizes on the device when the fragment is not a multiple of the patch size), run data-
parallel over the local devices like `features.extract`. Every call gets a full batch (the last
one is padded by repeating its last fragment), so one compiled function serves a whole run.

Fragments are grouped by the set of modalities they feed (one set for a single modality; for
"fused", the modalities available in the fragment), since each set is its own forward: one set ->
the released single-modality path, two or more -> the fusion path (`TerraFMEncoder`).
"""
from __future__ import annotations

from typing import Any, Callable, Hashable

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from terrafm_jax.data.contract import MODALITIES
from terrafm_jax.eval import features as features_lib


class Encoder:
  """(stems, {stem: (n, F, F, C) normalised}) -> (n, d) float32 CLS embeddings."""

  def __init__(self, model, fragment_size: int, input_size: int = 0, batch_size: int = 32):
    self.model = model
    self.patch = model.patch_size
    self.input_size = features_lib.input_size_for(fragment_size, self.patch, input_size or None)
    devices = jax.local_devices()
    self.batch_size = -(-batch_size // len(devices)) * len(devices)
    mesh = jax.sharding.Mesh(np.asarray(devices), ("data",))
    self._data = NamedSharding(mesh, P("data"))
    self._params = jax.device_put(model.params, NamedSharding(mesh, P()))
    self.dim = int(model.weights.encoder().dims["width"])

  def __call__(self, stems: tuple[str, ...], inputs: dict[str, np.ndarray]) -> np.ndarray:
    stems = tuple(m for m in MODALITIES if m in stems)
    n = len(inputs[stems[0]])
    b = self.batch_size
    if n > b:
      raise ValueError(f"batch of {n} fragments exceeds the batch size {b}")
    batch = {}
    for m in stems:
      x = np.asarray(inputs[m], np.float32)
      if n < b:
        x = np.concatenate([x, np.repeat(x[-1:], b - n, 0)])
      batch[m] = x
    forward = features_lib.make_forward(self.model.weights, stems, self.input_size, ("cls",))
    out = forward(self._params, jax.device_put(batch, self._data))
    return np.asarray(out["cls"], np.float32)[:n]


class FragmentBatcher:
  """Collects fragments per modality set and embeds each set whenever it holds a full batch."""

  def __init__(self, encoder: Encoder, on_batch: Callable[[int], None] | None = None):
    self._encoder = encoder
    self._pending: dict[tuple[str, ...], list[tuple[Hashable, dict[str, Any],
                                                    dict[str, np.ndarray]]]] = {}
    self._on_batch = on_batch
    self.rows: list[tuple[Hashable, dict[str, Any], np.ndarray]] = []

  def add(self, stems: tuple[str, ...], key: Hashable, meta: dict[str, Any],
          arrays: dict[str, np.ndarray]) -> None:
    items = self._pending.setdefault(stems, [])
    items.append((key, meta, arrays))
    if len(items) >= self._encoder.batch_size:
      self._flush(stems)

  def _flush(self, stems: tuple[str, ...]) -> None:
    items = self._pending.pop(stems, [])
    if not items:
      return
    inputs = {m: np.stack([a[m] for _, _, a in items]) for m in stems}
    emb = self._encoder(stems, inputs)
    for (key, meta, _), e in zip(items, emb):
      self.rows.append((key, meta, e))
    if self._on_batch is not None:
      self._on_batch(len(items))

  def flush(self) -> None:
    for stems in list(self._pending):
      self._flush(stems)

  def take_sorted(self) -> list[tuple[Hashable, dict[str, Any], np.ndarray]]:
    """The embedded rows in key order (cell ordinal, fragment index), and forget them."""
    rows = sorted(self.rows, key=lambda r: r[0])
    self.rows = []
    return rows
