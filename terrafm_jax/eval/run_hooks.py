"""The evaluations a pretraining run carries, as trainer hooks (train/hooks.py).

  InLoopEval     config.eval: a benchmark task and protocol every `every_steps` (eval/inloop.py)
  RealPixelCheck config.transfer: the EuroSAT learning check in the loop and at the end, with the
                 PCA pictures of a real scene (eval/transfer_check.py)
  SyntheticKnn   config.knn: kNN on held-out labelled synthetic tiles at the end
                 (eval/synthetic_knn.py)
`default_hooks()` is what `python -m terrafm_jax.train` runs; each is a no-op unless its config
section enables it.
"""
from __future__ import annotations

import json
from typing import Any

from terrafm_jax.train import console
from terrafm_jax.train import hooks as hooks_lib
from terrafm_jax.train.hooks import HookFactory, RunContext


class InLoopEval:
  """config.eval: check the task / protocol up front, score the teacher every N steps."""

  def check(self, config) -> None:
    from terrafm_jax.eval import inloop  # pylint: disable=g-import-not-at-top
    try:
      inloop.check_config(config)
    except ValueError as e:
      raise ValueError(f"config.eval: {e}") from None

  def __call__(self, ctx: RunContext):
    if ctx.config.eval.every_steps <= 0:
      return None
    from terrafm_jax.eval import inloop  # pylint: disable=g-import-not-at-top
    evaluator = inloop.maybe_create(ctx.config, ctx.contract)
    return None if evaluator is None else _InLoopHook(ctx, evaluator)


class _InLoopHook(hooks_lib.Hook):
  def __init__(self, ctx: RunContext, evaluator):
    self.ctx, self.evaluator = ctx, evaluator

  def after_step(self, step: int, teacher_encoder: Any):
    every = self.ctx.config.eval.every_steps
    if step % every and step != self.ctx.total_steps:
      return None
    scores = self.evaluator(step, teacher_encoder)  # before the next step donates it
    if not scores:
      return None
    return scores, f"step {step}: " + ", ".join(
        f"{k} {v:.1f}" for k, v in scores.items() if not k.endswith("_seconds"))

  def at_end(self, step: int, teacher: Any) -> dict[str, Any]:
    del step, teacher
    return {}


class RealPixelCheck:
  """config.transfer (validated with the rest of the training config)."""

  def check(self, config) -> None:
    del config

  def __call__(self, ctx: RunContext):
    if not ctx.config.transfer.enabled:
      return None
    from terrafm_jax.eval import transfer_check  # pylint: disable=g-import-not-at-top
    check = transfer_check.maybe_create(ctx.config, ctx.contract,
                                        ctx.random_params()["encoder"])
    return None if check is None else _RealPixelHook(ctx, check)


class _RealPixelHook(hooks_lib.Hook):
  def __init__(self, ctx: RunContext, check):
    self.ctx, self.check = ctx, check

  def after_step(self, step: int, teacher_encoder: Any):
    every = self.check.every_steps
    if every <= 0 or step % every or step >= self.ctx.total_steps:
      return None
    scores = self.check.in_loop(teacher_encoder)  # a collective on multi-host
    if not scores:
      return None
    return scores, f"step {step}: real-pixel check " + ", ".join(
        f"{k.rsplit('_', 1)[-1]} {v:.1f}" for k, v in scores.items())

  def at_end(self, step: int, teacher: Any) -> dict[str, Any]:
    from terrafm_jax.eval import transfer_check  # pylint: disable=g-import-not-at-top
    out: dict[str, Any] = {}
    final = self.check.final(teacher["encoder"])
    if final is not None and self.ctx.is_main:
      res, scalars = final
      out["transfer"] = res
      (self.ctx.workdir / "transfer_check.json").write_text(json.dumps(res, indent=2))
      self.ctx.log(step, scalars)
      for line in transfer_check.format_table(res).splitlines():
        console.say(line)
    out["pictures"] = self.check.pictures(teacher["encoder"])
    return out


class SyntheticKnn:
  """config.knn: the end-of-run kNN on held-out synthetic tiles."""

  def check(self, config) -> None:
    del config

  def __call__(self, ctx: RunContext):
    return _SyntheticKnnHook(ctx) if ctx.config.knn.enabled else None


class _SyntheticKnnHook(hooks_lib.Hook):
  def __init__(self, ctx: RunContext):
    self.ctx = ctx

  def after_step(self, step: int, teacher_encoder: Any):
    del step, teacher_encoder
    return None

  def at_end(self, step: int, teacher: Any) -> dict[str, Any]:
    from terrafm_jax.eval import synthetic_knn  # pylint: disable=g-import-not-at-top
    c = self.ctx
    return {"knn": synthetic_knn.run(c.config, c.model, teacher, c.random_params(), c.writer, step,
                                     contract=c.contract)}


def default_hooks() -> list[HookFactory]:
  # Order: the synthetic kNN first, then the real-pixel check, as report.png reads them.
  return [InLoopEval(), SyntheticKnn(), RealPixelCheck()]
