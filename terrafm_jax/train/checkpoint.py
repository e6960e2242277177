"""Orbax checkpoints holding everything needed to continue exactly (DESIGN.md decision 6).

One CheckpointManager step = Composite items:
  state   : TrainState (student, teacher, optimizer, centers, step, rng, bad_step), sharded arrays
  data    : the Grain iterator state (one JSON file per process)
  config  : the run's config (JSON, for the record; the command line config wins on resume)
  contract: the input contract (JSON; checked on resume)

Orbax writes a step into a temporary directory and renames it only once every item of every
process is committed, so a step half-written when the process died is invisible to
`latest_step()` and is never restored. Restores take abstract targets carrying the *current*
shardings, so a checkpoint saved on one mesh restores onto any other (8 -> 4 -> 1 devices).
"""
from __future__ import annotations

import json
from typing import Any

import grain
from etils import epath
import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging

from terrafm_jax.data.contract import InputContract
from terrafm_jax.train import workdir as workdir_lib

STATE, DATA, CONFIG, CONTRACT = "state", "data", "config", "contract"


# Replica-parallel saving splits each replicated shard between its replicas with jitted slices:
# one small XLA compilation per array and shape, ~12 s of the first save of an 8-device CPU run
# (the tiny model's 86 tensors). Below this size a shard is written whole by one replica.
MIN_SLICE_BYTES_FOR_REPLICA_PARALLEL = 64 * 2**20


_registered = False


def _register_array_handler() -> None:
  global _registered
  if _registered:
    return
  _registered = True
  ocp.type_handlers.register_type_handler(
      jax.Array, ocp.type_handlers.ArrayHandler(
          min_slice_bytes_for_replica_parallel=MIN_SLICE_BYTES_FOR_REPLICA_PARALLEL),
      override=True)


def make_manager(workdir: str, ckpt_cfg: ml_collections.ConfigDict) -> ocp.CheckpointManager:
  _register_array_handler()
  directory = workdir_lib.resolve(workdir) / "checkpoints"
  options = ocp.CheckpointManagerOptions(
      max_to_keep=ckpt_cfg.keep,
      save_interval_steps=1,  # the trainer decides (every_steps, last step, preemption)
      enable_async_checkpointing=ckpt_cfg.use_async,
      # Leftover temporary directories of a killed save are deleted at start-up.
      cleanup_tmp_directories=True,
      create=True,
  )
  return ocp.CheckpointManager(directory, options=options,
                               item_names=(STATE, DATA, CONFIG, CONTRACT))


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_iter: Any,
         config: ml_collections.ConfigDict, contract: InputContract, *, force: bool = False) -> bool:
  """Start an (async) save of `step`; returns whether a save was started."""
  items = {STATE: ocp.args.StandardSave(state),
           CONFIG: ocp.args.JsonSave(json.loads(config.to_json_best_effort())),
           CONTRACT: ocp.args.JsonSave(contract.to_dict())}
  if data_iter is not None and hasattr(data_iter, "get_state"):
    items[DATA] = grain.checkpoint.CheckpointSave(data_iter)
  return manager.save(step, args=ocp.args.Composite(**items), force=force)


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: Any, data_iter: Any,
            contract: InputContract | None = None) -> Any:
  """Restore the state (onto the shardings in `abstract_state`) and the iterator in place.

  Grain stores one iterator state per process. When the process count changed, this process
  has no file of its own; the trainer's iterators hold a *global* stream position (see
  terrafm_jax.data.resumable), so any process' state fast-forwards this one exactly.
  """
  items = {STATE: ocp.args.StandardRestore(abstract_state)}
  data_dir = epath.Path(manager.directory) / str(step) / DATA
  fallback_state = None
  if data_iter is not None and hasattr(data_iter, "set_state"):
    name = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    if (data_dir / name).exists():
      items[DATA] = grain.checkpoint.CheckpointRestore(data_iter)
    else:
      saved = sorted(data_dir.glob("process_*-of-*.json")) if data_dir.exists() else []
      if saved and getattr(data_iter, "process_count_independent", False):
        fallback_state = saved[0].read_text()
        logging.warning("checkpoint step %d was saved by another process count (%s); the input "
                        "stream continues from the same global position", step, saved[0].name)
      else:
        logging.warning("checkpoint step %d has no data-iterator state usable by %d processes; "
                        "the input stream restarts from its beginning (the model state is "
                        "restored exactly)", step, jax.process_count())
  if contract is not None:
    items[CONTRACT] = ocp.args.JsonRestore()
  out = manager.restore(step, args=ocp.args.Composite(**items))
  if contract is not None and out[CONTRACT] is not None:
    contract.check_compatible(InputContract.from_dict(out[CONTRACT]),
                              what=f"checkpoint step {step}")
  if fallback_state is not None:
    data_iter.set_state(fallback_state.encode())
  logging.info("restored checkpoint step %d from %s", step, manager.directory)
  return out[STATE]


def _restore_json(ckpt_dir: str, item: str, step: int | None) -> tuple[Any, int]:
  directory = workdir_lib.resolve(ckpt_dir)
  with ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True),
                             item_handlers={item: ocp.JsonCheckpointHandler()}) as mngr:
    step = mngr.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no complete checkpoint in {ckpt_dir}")
    out = mngr.restore(step, args=ocp.args.Composite(**{item: ocp.args.JsonRestore()}))
  if out[item] is None:
    raise ValueError(f"{ckpt_dir}: checkpoint step {step} holds no {item}")
  return out[item], step


def restore_contract(ckpt_dir: str, step: int | None = None) -> InputContract:
  """The input contract a run trained with, from `<workdir>/checkpoints`."""
  d, step = _restore_json(ckpt_dir, CONTRACT, step)
  return InputContract.from_dict(d, where=f"{ckpt_dir} step {step}")


def restore_config(ckpt_dir: str, step: int | None = None) -> tuple[dict[str, Any], int]:
  """(the run's config as saved in the checkpoint (a dict), the step it came from)."""
  return _restore_json(ckpt_dir, CONFIG, step)


def restore_subtree(ckpt_dir: str, key: str = "teacher", step: int | None = None,
                    abstract: Any | None = None) -> Any:
  """One subtree of the saved TrainState ("teacher", "student", "centers", ...), read alone.

  `ckpt_dir` is `<workdir>/checkpoints`. Partial restore: the rest of the state (optimizer, the
  other network) is never read. With `abstract` (ShapeDtypeStructs with shardings) the arrays land
  sharded on the current mesh, whatever mesh saved them; otherwise on the first local device.
  """
  with ocp.CheckpointManager(workdir_lib.resolve(ckpt_dir),
                             options=ocp.CheckpointManagerOptions(read_only=True),
                             item_handlers={STATE: ocp.PyTreeCheckpointHandler()}) as mngr:
    step = mngr.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no complete checkpoint in {ckpt_dir}")
    if abstract is None:
      meta = mngr.item_metadata(step)[STATE]
      meta = meta.tree if hasattr(meta, "tree") else meta
      dev = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
      abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=dev),
                              meta[key])
    target = {key: abstract}
    out = mngr.restore(step, args=ocp.args.Composite(**{STATE: ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=True)}))
  return out[STATE][key]


def restore_teacher(ckpt_dir: str, step: int | None = None, *, encoder_only: bool = True) -> Any:
  """The teacher (the network to evaluate and export) from `<workdir>/checkpoints`: the encoder
  (backbone) params, or {"encoder", "head"} with encoder_only=False."""
  teacher = restore_subtree(ckpt_dir, "teacher", step)
  return teacher["encoder"] if encoder_only else teacher
