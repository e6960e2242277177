"""The trainer's view of the input pipeline: per-process numpy batches plus what the run needs to
know about them (`TrainData`: size, input contract, land-cover labels, global batch labels).

`config.data.source`:
  "pipeline": terrafm_jax.data (Grain over the prepared shards in `config.data.data_dir`, or the
              built-in set (train/builtin_source.py) when no data_dir is given, smoke only);
  "random"  : deterministic random tiles with the same keys, shapes and dtypes, for tests and
              benchmarks of the step alone (train/random_batches.py).
Both iterators have get_state/set_state, so checkpoints resume them exactly.

The input contract of a run (`config.data.contract`): "prepared" = the prepared data's
contract.json (its computed statistics; the pipeline fills S1 nodata with the same means, so
nodata normalises to 0), "default" = the built-in DEFAULT_CONTRACT, or a path to a contract JSON.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from etils import epath

from terrafm_jax.data.contract import DEFAULT_CONTRACT, MODALITIES, InputContract
from terrafm_jax.train import builtin_source
from terrafm_jax.train import random_batches
from terrafm_jax.train import run_plan

# Keys the train step consumes (tile_index stays on the host).
STEP_KEYS = MODALITIES + ("boxes", "flip", "student_masks", "teacher_masks", "label")
GROUP_KEYS = ("student_groups", "teacher_groups", "student_valid", "teacher_valid")


def step_keys(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  return STEP_KEYS + (GROUP_KEYS if config.data.modality_groups else ())


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
      return np.concatenate([random_batches.random_labels(config.seed, p, i + 1, local)
                             for i in range(start, stop) for p in range(pc)] or [np.zeros(0)])

    return TrainData(lambda plan: random_batches.RandomBatches(plan, pi, pc), n, resolve_contract(config, None),
                     1.0, random_labels, "random tiles (config.data.source='random')")
  if config.data.source != "pipeline":
    raise ValueError(f"config.data.source must be 'pipeline' or 'random', got "
                     f"{config.data.source!r}")
  from terrafm_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from terrafm_jax.data import prepared as prepared_lib  # pylint: disable=g-import-not-at-top
  from terrafm_jax.data import sampling as sampling_lib  # pylint: disable=g-import-not-at-top
  d = config.data
  data_dir = d.data_dir or builtin_source.ensure_builtin(config, workdir)
  prepared = prepared_lib.load_prepared(data_dir)
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
