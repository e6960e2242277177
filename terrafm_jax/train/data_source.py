"""The trainer's view of the input pipeline: per-process numpy batches plus what the run needs to
know about them (`TrainData`: size, input contract, land-cover labels, global batch labels).

`config.data.source`:
  "pipeline": terrafm_jax.data (Grain over the prepared shards in `config.data.data_dir`, or the
              built-in set (data/builtin.py) when `config.data.builtin.enabled`, smoke only);
  "random"  : deterministic random tiles with the same keys, shapes and dtypes, for tests and
              benchmarks of the step alone (no learnable signal).
Both iterators have get_state/set_state, so checkpoints resume them exactly.

The input contract of a run (`config.data.contract`): "prepared" = the prepared data's
contract.json (its computed statistics; the pipeline fills S1 nodata with the same means, so
nodata normalises to 0), "default" = the built-in DEFAULT_CONTRACT, or a path to a contract JSON.
"""
from __future__ import annotations

import dataclasses
import fcntl
import json
import os
from typing import Any, Callable, Iterator

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from terrafm_jax.data import real_scenes
from terrafm_jax.data.contract import DEFAULT_CONTRACT, MODALITIES, InputContract
from terrafm_jax.train import run_plan
from terrafm_jax.train import workdir as workdir_lib

# Keys the train step consumes (tile_index stays on the host).
STEP_KEYS = MODALITIES + ("boxes", "flip", "student_masks", "teacher_masks", "label")
GROUP_KEYS = ("student_groups", "teacher_groups", "student_valid", "teacher_valid")


def step_keys(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  return STEP_KEYS + (GROUP_KEYS if config.data.modality_groups else ())


class RandomBatches(Iterator[dict[str, np.ndarray]]):
  """Batch i is a pure function of (seed, process, i): resumable by storing i."""

  def __init__(self, plan: run_plan.RunPlan, process_index: int, process_count: int):
    self.c = plan.config
    self.crops = plan.crops
    self.local_batch = self.c.global_batch_size // process_count
    self.process_index = process_index
    self.index = 0
    self.block = plan.group_block

  # Bytes, like grain.DataLoaderIterator, so Grain's Orbax handler stores it unchanged.
  def get_state(self) -> bytes:
    return json.dumps({"index": self.index}).encode()

  def set_state(self, state: bytes) -> None:
    self.index = int(json.loads(state)["index"])

  def start_prefetch(self) -> None:  # called by Grain's checkpoint handler after restore
    pass

  def __next__(self) -> dict[str, np.ndarray]:
    d = self.c.data
    rng = np.random.default_rng([self.c.seed, self.process_index, self.index])
    self.index += 1  # batch i feeds (1-based) step i
    b, t = self.local_batch, d.builtin.tile_size
    n_g, v = d.n_global, d.n_global + d.n_local
    boxes = np.zeros((b, v, 4), np.float32)
    for j in range(v):
      lo, hi = d.global_scale if j < n_g else d.local_scale
      side = t * np.sqrt(rng.uniform(lo, hi, size=b))
      boxes[:, j, 2] = boxes[:, j, 3] = side
      boxes[:, j, 0] = rng.uniform(0, 1, size=b) * (t - side)
      boxes[:, j, 1] = rng.uniform(0, 1, size=b) * (t - side)

    labels = _random_labels(self.c.seed, self.process_index, self.index, b)

    def masks(n):
      m = rng.random((b, n, 3)) < 0.5
      m[np.arange(b)[:, None], np.arange(n)[None], rng.integers(0, 3, (b, n))] = True
      return m

    out = {
        "s1": rng.normal(-12.0, 4.0, (b, t, t, 2)).astype(np.float16),
        "s2_l1c": rng.integers(1, 5000, (b, t, t, 12)).astype(np.uint16),
        "s2_l2a": rng.integers(1, 5000, (b, t, t, 12)).astype(np.uint16),
        "available": np.ones((b, 3), bool),
        "boxes": boxes, "flip": rng.random((b, v)) < 0.5,
        "student_masks": masks(v), "teacher_masks": masks(n_g),
        "label": labels,
        "tile_index": (np.arange(b) + self.index * b).astype(np.int64),
    }
    if self.block:
      from terrafm_jax.data import modality_groups  # pylint: disable=g-import-not-at-top
      first = (self.index - 1) * self.c.global_batch_size + self.process_index * b
      out = modality_groups.balance_batch(out, self.crops, self.block, self.c.seed, first)
    return out


def _random_labels(seed: int, process_index: int, index: int, n: int) -> np.ndarray:
  # A stream of its own, so the global labels of any step are computable without the tiles.
  return np.random.default_rng([seed, 3, process_index, index]).integers(0, 11, n).astype(np.int32)


@dataclasses.dataclass
class TrainData:
  # start(plan) -> the iterator: next() -> this process' batch; get_state / set_state. The run
  # plan needs the data's size, and the iterator the plan's crops and group block.
  start: Callable[[Any], Any]
  num_examples: int
  contract: InputContract          # the run's one contract (normalisation and S1 nodata fill)
  labelled_fraction: float         # share of tiles with a land-cover label (dual centering)
  # global_labels(start, stop): labels of the whole global batches [start, stop), all processes.
  global_labels: Callable[[int, int], np.ndarray]
  description: str
  # Share of each WorldCover class among the labelled tiles (the sampler's natural distribution).
  natural_distribution: np.ndarray | None = None


def builtin_root(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Local folder of the built-in synthetic set. It is written with local file APIs, so a remote
  workdir keeps it in a per-user cache (it is deterministic from its parameters)."""
  if config.data.builtin.root:
    root = config.data.builtin.root
  elif not workdir_lib.is_remote(workdir):
    root = os.path.join(str(workdir_lib.resolve(workdir)), "builtin_data")
  else:
    root = os.path.join(os.path.expanduser("~"), ".cache", "terrafm_jax", "builtin_data")
  if workdir_lib.is_remote(root):
    raise ValueError(f"config.data.builtin.root={root!r}: the built-in set is written to a local "
                     "(or shared, mounted) folder, not a URI")
  return root


def real_root(config: ml_collections.ConfigDict) -> str:
  """The eo_samples folder whose real scenes join the built-in set, or "" for none.

  `data.builtin.real_scenes`: "" none; "auto" the eo_samples folder beside the checkout, skipped
  with a warning where it is absent; any other value a folder that must exist.
  """
  choice = config.data.builtin.real_scenes
  if not choice:
    return ""
  if choice == "auto":
    root = real_scenes.eo_samples_root()
    if not os.path.isdir(os.path.join(root, "terramind_majortom")):
      logging.warning("built-in set: no real scenes (%s not found); synthetic cells only", root)
      return ""
    return root
  if not os.path.isdir(choice):
    raise FileNotFoundError(f"config.data.builtin.real_scenes={choice!r}: no such folder")
  return choice


def _ensure_builtin(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Prepare the built-in set once: process 0 first (the others wait at a barrier), then every
  other process opens it, building its own copy only if its host does not share the folder. A
  file lock serialises processes of one host."""
  from terrafm_jax.data import builtin  # pylint: disable=g-import-not-at-top
  b = config.data.builtin
  root = builtin_root(config, workdir)
  os.makedirs(root, exist_ok=True)

  def build():
    with open(os.path.join(root, ".lock"), "w", encoding="utf-8") as lock:
      fcntl.flock(lock, fcntl.LOCK_EX)
      try:
        return builtin.ensure_builtin_dataset(root, num_cells=b.num_cells,
                                                cell_size=b.cell_size, tile_size=b.tile_size,
                                                seed=b.seed, real_root=real_root(config),
                                                real_stride=b.real_stride)
      finally:
        fcntl.flock(lock, fcntl.LOCK_UN)

  from terrafm_jax.train import console  # pylint: disable=g-import-not-at-top
  console.say(f"built-in synthetic Major-TOM set ({b.num_cells} cells of {b.cell_size} px, "
              f"{b.tile_size} px tiles): written and prepared once under {root}")
  if jax.process_count() == 1:
    return build()
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  path = build() if jax.process_index() == 0 else None
  multihost_utils.sync_global_devices("terrafm_builtin_data_ready")
  return path if path is not None else build()


def resolve_contract(config: ml_collections.ConfigDict, prepared_contract: InputContract | None
                     ) -> InputContract:
  choice = config.data.contract
  if choice == "prepared":
    return prepared_contract or DEFAULT_CONTRACT
  if choice == "default":
    return DEFAULT_CONTRACT
  path = epath.Path(choice)
  if not path.exists():
    raise FileNotFoundError(f"config.data.contract={choice!r}: no such contract file (expected "
                            "'prepared', 'default' or a contract JSON path)")
  return InputContract.from_dict(json.loads(path.read_text()), where=choice)


def make_train_data(config: ml_collections.ConfigDict, workdir: str) -> TrainData:
  """This process' input stream and what the trainer needs to know about it."""
  pi, pc = jax.process_index(), jax.process_count()
  g = config.global_batch_size
  if g % pc:
    raise ValueError(f"config.global_batch_size={g} is not divisible by the {pc} processes")
  if config.data.source == "random":
    n = config.data.num_examples if config.data.num_examples > 0 else 64 * g
    local = g // pc

    def random_labels(start, stop):
      return np.concatenate([_random_labels(config.seed, p, i + 1, local)
                             for i in range(start, stop) for p in range(pc)] or [np.zeros(0)])

    return TrainData(lambda plan: RandomBatches(plan, pi, pc), n, resolve_contract(config, None),
                     1.0, random_labels, "random tiles (config.data.source='random')")
  if config.data.source != "pipeline":
    raise ValueError(f"config.data.source must be 'pipeline' or 'random', got "
                     f"{config.data.source!r}")
  from terrafm_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from terrafm_jax.data import sampling as sampling_lib  # pylint: disable=g-import-not-at-top
  d = config.data
  data_dir = d.data_dir or _ensure_builtin(config, workdir)
  prepared = pipeline.load_prepared(data_dir)
  contract = resolve_contract(config, prepared.contract)
  sampling = sampling_lib.SamplingConfig(**{
      k: tuple(v) if isinstance(v, list) else v for k, v in d.sampling.to_dict().items()})

  def start(plan: run_plan.RunPlan):
    return pipeline.make_train_iterator(
        data_dir, global_batch_size=g, seed=config.seed, crops=plan.crops, sampling=sampling,
        process_index=pi, process_count=pc, worker_count=d.worker_count, contract=contract,
        group_block=plan.group_block)

  sampler = pipeline.make_sampler(prepared, sampling, config.seed)
  labels = prepared.index["label"].to_numpy(np.int64)
  n = d.num_examples if d.num_examples > 0 else prepared.num_records
  known = labels[(labels >= 0) & (labels < 11)]
  natural = np.bincount(known, minlength=11) / max(len(known), 1) if len(known) else None
  return TrainData(
      start, n, contract, float((labels >= 0).mean()) if len(labels) else 0.0,
      lambda start, stop: pipeline.global_batch_labels(sampler, g, start, stop),
      f"{prepared.dataset_dir} ({prepared.num_records} tiles)", natural)


def describe(it: Any) -> str:
  try:
    state = it.get_state()
    return (state.decode() if isinstance(state, bytes) else json.dumps(state))[:200]
  except Exception:  # pylint: disable=broad-except
    return type(it).__name__


def open_run(config: ml_collections.ConfigDict, workdir: str,
             device_count: int | None = None) -> tuple[run_plan.RunPlan, TrainData, Any]:
  """Open the data, resolve the run plan on its size, start this process' iterator:
  (plan, data, iterator)."""
  data = make_train_data(config, workdir)
  plan = run_plan.resolve(config, data.num_examples, device_count)
  return plan, data, data.start(plan)
