"""Command line of the evaluation harness (absl flags, as the trainer).

  python -m terrafm_jax.eval --task=geobench/m-eurosat --protocol=knn \
      --weights=workdirs/smoke --data_root=$GEO_BENCH_DIR [--partition=0.01x_train]
  python -m terrafm_jax.eval --config=configs/eval.py:paper --weights=terrafm_b.pth \
      --config.data_roots.geobench=$GEO_BENCH_DIR --config.data_roots.copernicus=/data/cobench
  python -m terrafm_jax.eval --config=configs/eval.py:eosamples --weights=random:Mu/8
  python -m terrafm_jax.eval --config=configs/eval.py:products \
      --config.products.sources=ours=embeddings/terrafm,theirs=embeddings/ssl4eo \
      --config.products.labels=labels.csv --config.products.join=grid_cell

Prints the results table (for suites also the paper's tables with the published TerraFM-B numbers
beside ours) and writes results.json and PNGs into --out_dir. Exit code 2 for a bad flag or config,
1 for bad data or weights (one line naming the file).
"""
from __future__ import annotations

import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

from terrafm_jax import console
from terrafm_jax import platforms
from terrafm_jax.eval import results as results_lib
from terrafm_jax.eval import suite as suite_lib
from terrafm_jax.eval import tasks as tasks_lib
from terrafm_jax.eval.config import get_eval_config
from terrafm_jax.eval.dataset import EvalDataError

_CONFIG = config_flags.DEFINE_config_file("config", None, "eval config file (configs/eval.py)",
                                          lock_config=False)
_TASK = flags.DEFINE_string("task", None, f"task name, one of {sorted(tasks_lib.TASKS)}")
_PROTOCOL = flags.DEFINE_string("protocol", None, f"one of {tasks_lib.PROTOCOLS}")
_WEIGHTS = flags.DEFINE_string("weights", None,
                               "training workdir, released-layout .pth/.safetensors, or "
                               "random:<variant>")
_PARTITION = flags.DEFINE_string("partition", None, "training partition, e.g. 0.01x_train")
_DATA_ROOT = flags.DEFINE_string("data_root", None, "the task's data folder")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "where results.json and the PNGs go")
_STEP = flags.DEFINE_integer("step", None, "workdir checkpoint step (default: latest)")
_MAX = flags.DEFINE_integer("max_samples", None, "cap on samples per split (quick looks)")


class UsageError(ValueError):
  pass


def resolve_config():
  cfg = _CONFIG.value if _CONFIG.value is not None else get_eval_config()
  if _TASK.value:
    cfg.tasks = (_TASK.value,)
  if _PROTOCOL.value:
    cfg.protocols = (_PROTOCOL.value,)
  if _PARTITION.value:
    cfg.partitions = (_PARTITION.value,)
  for flag, key in ((_WEIGHTS, "weights"), (_OUT_DIR, "out_dir"), (_STEP, "step"),
                    (_MAX, "max_samples")):
    if flag.value is not None:
      cfg[key] = flag.value
  if cfg.products.sources:
    return cfg
  if not cfg.weights:
    raise UsageError("--weights is required: a workdir, a .pth/.safetensors file or "
                     "random:<variant>")
  if not cfg.tasks:
    raise UsageError("no task: give --task=... or a suite config (configs/eval.py:paper)")
  for name in cfg.tasks:
    if name not in tasks_lib.TASKS:
      raise UsageError(f"unknown task {name!r}; known tasks: {', '.join(sorted(tasks_lib.TASKS))}")
  for p in cfg.protocols:
    if p not in tasks_lib.PROTOCOLS:
      raise UsageError(f"unknown protocol {p!r}; expected one of {tasks_lib.PROTOCOLS}")
  return cfg


def plan(cfg) -> list[tuple[tasks_lib.Task, str, str, str]]:
  """(task, protocol, partition, data root) to run; tasks without a data folder are skipped."""
  single = len(cfg.tasks) == 1
  out = []
  for name in cfg.tasks:
    task = tasks_lib.get_task(name)
    root = _DATA_ROOT.value if (_DATA_ROOT.value and single) else cfg.data_roots.get(
        task.benchmark, "")
    if not root and task.benchmark == "eosamples":
      from terrafm_jax.eval.readers import eosamples
      root = eosamples.default_root()
    if not root:
      if single:
        raise UsageError(f"{name}: give its data folder with --data_root=... (or "
                         f"--config.data_roots.{task.benchmark}=...)")
      logging.warning("%s: no data folder (config.data_roots.%s); skipped", name, task.benchmark)
      continue
    protocols = [p for p in (cfg.protocols or task.protocols)
                 if (p in tasks_lib.SEGMENTATION_PROTOCOLS) == (task.metric == "miou")]
    if cfg.protocols and not protocols:
      raise UsageError(f"{name}: none of the protocols {tuple(cfg.protocols)} applies to a "
                       f"{'segmentation' if task.metric == 'miou' else 'classification'} task")
    for p in protocols:
      for i, part in enumerate(cfg.partitions):
        # The paper's reduced-data column is k-NN only; other protocols use the first partition.
        if i == 0 or p == "knn":
          out.append((task, p, part, root))
  return out


def run_products(cfg) -> int:
  """Embedding products (Major-TOM parquet) as features, joined to cfg.products.labels."""
  from terrafm_jax.eval import product_probes
  from terrafm_jax.eval import products as products_lib
  pc = cfg.products
  if not pc.labels:
    raise UsageError("--config.products.labels is required with --config.products.sources")
  if pc.join not in products_lib.JOINS:
    raise UsageError(f"--config.products.join must be one of {products_lib.JOINS}, got "
                     f"{pc.join!r}")
  protocols = tuple(cfg.protocols) or product_probes.PROTOCOLS
  bad = [p for p in protocols if p not in product_probes.PROTOCOLS]
  if bad:
    raise UsageError(f"embedding products take the protocols {product_probes.PROTOCOLS}, "
                     f"not {bad}")
  try:
    sources = products_lib.parse_sources(pc.sources)
  except ValueError as e:
    raise UsageError(f"--config.products.sources: {e}") from e
  settings = product_probes.ProbeSettings(
      ks=tuple(int(k) for k in pc.ks), temperature=cfg.knn.temperature, folds=pc.folds,
      lrs=tuple(cfg.linear.lrs), epochs=cfg.linear.epochs, batch_size=cfg.linear.batch_size,
      weight_decay=cfg.linear.weight_decay, num_bootstrap=pc.num_bootstrap, seed=cfg.seed)
  rows, summary = product_probes.evaluate(sources, pc.labels, join=pc.join,
                                          label_column=pc.label_column, protocols=protocols,
                                          settings=settings)
  print(product_probes.format_summary(rows, summary))
  paths = results_lib.write(rows, cfg.out_dir) if cfg.plots else None
  if paths:
    print(f"wrote {paths['json']} and {len(paths['plots'])} plot(s)")
  return 0


def main(argv) -> int:
  del argv
  platforms.quiet_libtpu_without_tpu()
  cfg = resolve_config()
  log_file = console.configure(cfg.out_dir, "eval")
  if log_file:
    console.say(f"full log: {log_file} (TERRAFM_VERBOSE=1 shows it here)")
  from terrafm_jax.eval import runner
  from terrafm_jax.eval import weights as weights_lib
  if cfg.products.sources:
    return run_products(cfg)
  todo = plan(cfg)
  if not todo:
    raise UsageError("nothing to run: no task has a data folder")
  weights = weights_lib.load_weights(cfg.weights, step=None if cfg.step < 0 else cfg.step,
                                     seed=cfg.seed)
  logging.info("weights: %s", weights.provenance)
  console.say(f"weights: {cfg.weights} ({weights.provenance.get('kind', '?')}); "
              f"{len(todo)} task x protocol run(s)")
  rows = []
  for i, (task, protocol, partition, root) in enumerate(todo):
    logging.info("== %s %s (%s) ==", task.name, protocol, partition)
    t0 = time.time()
    rows.append(runner.run(task, protocol, weights, root, cfg, partition=partition))
    console.say(f"[{i + 1}/{len(todo)}] {task.name} {protocol} {partition}: {task.metric} "
                f"{rows[-1].value:.2f} ({time.time() - t0:.0f} s)")
  print(results_lib.format_table(rows))
  if len(todo) > 1 and any(t.benchmark != "eosamples" for t, *_ in todo):
    print()
    print(suite_lib.paper_tables(rows))
  paths = results_lib.write(rows, cfg.out_dir) if cfg.plots else None
  if paths:
    print(f"wrote {paths['json']} and {len(paths['plots'])} plot(s)")
  return 0


def run() -> None:
  def _main(argv):
    try:
      sys.exit(main(argv))
    except UsageError as e:
      console.error(str(e))
      sys.exit(2)
    except (EvalDataError, FileNotFoundError, ValueError) as e:
      logging.info("evaluation stopped", exc_info=True)  # the traceback: log file only
      console.error(str(e))
      sys.exit(1)
  app.run(_main)
