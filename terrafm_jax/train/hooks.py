"""What the trainer runs beside the steps, handed in by the entry point (as big_vision's evaluators).

The trainer knows nothing of evaluation: the entry point (train/cli.py) passes hook factories, the
in-loop benchmark evaluation, the real-pixel learning check and the synthetic kNN check
(eval/run_hooks.py). A factory checks its part of the config before anything starts, then makes
its hook from the run's context once the step is compiled (or declines: None).

A hook is called on every process (its evaluations may be collectives); only process 0 writes.
Each call is optional (Hook's defaults do nothing):
  before_step(step, batch) -> batch: the host batch that feeds `step` (1-based), before it is
    sharded; a hook may read it or hand back a changed one;
  after_step(step, teacher_encoder) -> (scalars, console line) or None, after every step;
  after_save(step, manager): once the checkpoint of `step` was handed to the manager (the step's
    metrics are written by then); tests inject crashes here (tests/train/fault_train.py);
  at_end(step, teacher) -> entries for the run's result (and report.png), once the last step ran.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Protocol, Sequence

import jax
import ml_collections
from etils import epath

from terrafm_jax.data.contract import InputContract
from terrafm_jax.errors import ConfigError
from terrafm_jax.train import console
from terrafm_jax.train import sharding as sharding_lib
from terrafm_jax.train import workdir as workdir_lib


@dataclasses.dataclass
class RunContext:
  """The run as hooks see it."""
  config: ml_collections.ConfigDict
  workdir: epath.Path
  contract: InputContract
  model: Any                 # the DINO module (parts.model)
  param_init: Any            # key -> boxed parameters (the run's own initialiser)
  mesh: Any
  rules: Any
  writer: Any                # metric writer (process 0 writes)
  total_steps: int

  @property
  def is_main(self) -> bool:
    return jax.process_index() == 0

  def random_params(self) -> Any:
    """The parameters this run started from (its own init key), unboxed; computed again on each
    call rather than held on the devices for the whole run."""
    k_params = jax.random.split(jax.random.PRNGKey(self.config.seed))[0]
    return sharding_lib.unbox(jax.jit(self.param_init)(k_params))

  def log(self, step: int, scalars: dict[str, float], line: str | None = None) -> None:
    """Scalars to TensorBoard and metrics.jsonl, and a console line; process 0 only."""
    if not self.is_main:
      return
    self.writer.write_scalars(step, scalars)
    workdir_lib.append_jsonl(self.workdir / "metrics.jsonl", {"step": step, **scalars})
    if line:
      console.say(line)


class Hook:
  """Base of the hooks: every call is optional and does nothing here."""

  def before_step(self, step: int, batch: dict[str, Any]) -> dict[str, Any]:
    del step
    return batch

  def after_step(self, step: int, teacher_encoder: Any) -> tuple[dict[str, float], str] | None:
    del step, teacher_encoder

  def after_save(self, step: int, manager: Any) -> None:
    del step, manager

  def at_end(self, step: int, teacher: Any) -> dict[str, Any]:
    del step, teacher
    return {}


def overrides(hook: Any, name: str) -> bool:
  """Whether `hook` does something in `name` (the trainer skips the calls that do nothing, e.g.
  so that no batch is handed around when no hook reads it)."""
  fn = getattr(type(hook), name, None)
  return fn is not None and fn is not getattr(Hook, name)


class HookFactory(Protocol):
  def check(self, config: ml_collections.ConfigDict) -> None:
    """ValueError naming the config field that cannot work."""

  def __call__(self, ctx: RunContext) -> Hook | None:
    ...


def check_all(factories: Sequence[HookFactory], config: ml_collections.ConfigDict) -> None:
  for f in factories:
    try:
      f.check(config)
    except ConfigError:
      raise
    except ValueError as e:
      raise ConfigError(str(e)) from None
