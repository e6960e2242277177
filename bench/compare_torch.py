"""JAX vs eager PyTorch, same process: the project's DINO train step and the encoder forward.

  python bench/compare_torch.py                       # S/16 and B/16, batch 8, 3 timed steps
  python bench/compare_torch.py --variants=Ti/16 --steps=1 --skip_forward

Rows (median over --steps timed calls, after one warm-up call; JAX compiles before its warm-up):

* `train step` -- JAX: the project's real step, `jax.jit(step.make_train_step(...))` with the
  state donated, built exactly as bench/train_step.py builds it from configs/terrafm_b.py:<variant>
  with data.source="random", model.dtype="float32", global batch --batch, the paper crops
  (2 x 224 + 6 x 96), K = 65,536 prototypes, 256-px random tiles (data.builtin.tile_size) and
  model.drop_path_rate=--drop_path_rate (default 0: the PyTorch encoder has no drop path).
  data.modalities=("s2_l1c",) and every view's modality mask is set to S2 L1C only, so every
  sample takes the single-modality (case 1) path. The timed JAX call includes, on the device:
  normalisation of the raw tiles and the bicubic antialiased crops (for all three modalities: the
  step's graph is static, views carry every modality), the teacher and student forwards, the
  dual-centered loss, backward, per-tensor clipping, AdamW, EMA teacher, center updates, the
  non-finite guard and the step metrics. The static graph also runs all three stems and the
  fusion block on every view and selects the S2 L1C path with `where`; that is the project's step.
  The host -> device batch transfer is not timed (batches are device arrays made beforehand).
  PyTorch: bench/torch_dino_step.py, the same DINO step for the S2 L1C stem only, with
  `TerraFMTorch` student/teacher: normalisation of the raw S2 L1C tiles + one
  `F.interpolate(bicubic, antialias)` per view and sample, teacher/student forwards, the same loss,
  backward, per-tensor clipping, last-layer gradient dropped (both sides are in DINO's first epoch),
  AdamW, EMA teacher, center updates. Both sides start from the same numpy batch.
* `crops+normalise` -- the part of the step above that makes the views, timed alone: JAX jits
  `views.make_views` (three modalities, 26 channels, as inside the step); PyTorch times its own
  crop code inside each step (S2 L1C only, 12 channels). Included in `train step` on both sides.
* `encoder forward` (B/16 only) -- batch --batch, 224 px, 12 channels, S2 L1C stem, CLS output:
  JAX `jax.jit(build_encoder(...).apply)` on a single-modality input (the released path, no fusion),
  PyTorch `TerraFMTorch` under `torch.no_grad()`. Input transfer not timed.

ratio = PyTorch seconds / JAX seconds (> 1: JAX is faster). Thread counts are left at their
defaults on both sides (XLA's CPU pool and torch.get_num_threads()).
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [p for p in (_ROOT, os.path.join(_ROOT, "bench")) if p not in sys.path]

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from terrafm_jax.data.contract import DEFAULT_CONTRACT, MODALITIES  # noqa: E402
from terrafm_jax.models import terrafm  # noqa: E402
from terrafm_jax.train import data_source, optim, schedules, sharding  # noqa: E402
from terrafm_jax.train import state as state_lib  # noqa: E402
from terrafm_jax.train import step as step_lib  # noqa: E402
from terrafm_jax.train import trainer  # noqa: E402
from terrafm_jax.train import views as views_lib  # noqa: E402

MODALITY = "s2_l1c"


def load_config(variant: str, args):
  spec = importlib.util.spec_from_file_location("terrafm_b_config",
                                                os.path.join(_ROOT, "configs", "terrafm_b.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config(variant)
  c.unlock()
  c.data.source = "random"
  c.model.dtype = "float32"
  c.model.drop_path_rate = args.drop_path_rate
  c.global_batch_size = args.batch
  c.data.n_global, c.data.n_local = 2, 6
  c.data.global_size, c.data.local_size = 224, 96
  c.data.modalities = (MODALITY,)
  c.data.builtin.tile_size = args.tile_size
  return c


def single_modality(batch: dict) -> dict:
  """The random source draws masks over all three modalities; pin every view to S2 L1C."""
  out = dict(batch)
  col = MODALITIES.index(MODALITY)
  for k in ("student_masks", "teacher_masks"):
    m = np.zeros_like(batch[k])
    m[..., col] = True
    out[k] = m
  return out


def timed(fn, n: int) -> list[float]:
  ts = []
  for _ in range(n):
    t0 = time.perf_counter()
    fn()
    ts.append(time.perf_counter() - t0)
  return ts


def jax_train_step(config, host_batches, n_steps: int) -> dict:
  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.logical_rules(config)
  model = terrafm.build_dino(config.model)
  scheds = schedules.make_schedules(config)
  n_shards = mesh.shape["data"] * mesh.shape["fsdp"]
  param_init = state_lib.make_param_init_fn(model, config, n_shards, DEFAULT_CONTRACT.num_channels)
  rng = jax.random.PRNGKey(config.seed)
  tx = optim.make_optimizer(config, sharding.unbox(jax.eval_shape(param_init, rng)), scheds)
  init = state_lib.make_state_init_fn(param_init, tx, config.model.head.out_dim)
  sh = state_lib.state_shardings(param_init, tx, rng, mesh, rules)
  with jax.set_mesh(mesh):
    st = state_lib.create_sharded_state(init, sh, rng, rules)
  n_params = sum(x.size for x in jax.tree.leaves(st.student))
  batches = [sharding.global_batch({k: b[k] for k in data_source.STEP_KEYS}, mesh)
             for b in host_batches]
  fn = jax.jit(step_lib.make_train_step(model, tx, scheds, config, DEFAULT_CONTRACT),
               in_shardings=(sh, {k: v.sharding for k, v in batches[0].items()}),
               donate_argnums=(0,))
  views_fn = jax.jit(lambda b: views_lib.make_views(b, DEFAULT_CONTRACT, config.data,
                                                    jnp.dtype(config.model.dtype)))
  with jax.set_mesh(mesh), __import__("flax").linen.logical_axis_rules(rules):
    t0 = time.perf_counter()
    compiled = fn.lower(st, batches[0]).compile()
    compile_s = time.perf_counter() - t0
    views_c = views_fn.lower(batches[0]).compile()
  box = {"st": st, "i": 0}

  def one():
    s, m = compiled(box["st"], batches[box["i"] % len(batches)])
    box["st"], box["i"] = s, box["i"] + 1
    jax.block_until_ready((s, m))
    box["m"] = m

  one()  # warm-up
  step_ts = timed(one, n_steps)
  loss = float(box["m"]["loss"])
  finite = bool(box["m"]["finite"])
  del box, st
  vb = {"i": 0}

  def views_once():
    jax.block_until_ready(views_c(batches[vb["i"] % len(batches)]))
    vb["i"] += 1

  views_once()
  view_ts = timed(views_once, n_steps)
  del compiled, views_c, batches
  gc.collect()
  return dict(step=step_ts, crops=view_ts, compile_s=compile_s, loss=loss, finite=finite,
              n_params=int(n_params))


def torch_train_step(config, host_batches, n_steps: int) -> dict:
  from torch_dino_step import TorchDINOStep  # bench/ helper
  d, o, h = config.dino, config.optim, config.model.head
  mc = DEFAULT_CONTRACT[MODALITY]
  runner = TorchDINOStep(
      config.model.variant, out_dim=h.out_dim,
      head_kw=dict(hidden_dim=h.hidden_dim, bottleneck_dim=h.bottleneck_dim, nlayers=h.nlayers),
      modality=MODALITY, mean=mc.mean, std=mc.std, n_global=config.data.n_global,
      global_size=config.data.global_size, local_size=config.data.local_size,
      student_temp=d.student_temp, teacher_temp=d.warmup_teacher_temp, alpha=d.alpha,
      center_momentum=d.center_momentum, center_h_momentum=d.center_h_momentum,
      high_freq_classes=d.high_freq_classes, lr=schedules.scaled_peak_lr(config),
      weight_decay=o.weight_decay, clip_grad=o.clip_grad, momentum_teacher=d.momentum_teacher,
      freeze_last_layer=o.freeze_last_layer_epochs > 0, seed=config.seed)
  box = {"i": 0, "crops": []}

  def one():
    loss, t_crop = runner.step(host_batches[box["i"] % len(host_batches)])
    box["i"] += 1
    box["loss"] = loss
    box["crops"].append(t_crop)

  one()  # warm-up
  box["crops"].clear()
  step_ts = timed(one, n_steps)
  out = dict(step=step_ts, crops=list(box["crops"]), loss=box["loss"],
             n_params=runner.num_params())
  del runner
  gc.collect()
  return out


def forward(variant: str, batch: int, n_steps: int, args) -> dict:
  from terrafm_jax.export.torch_model import TerraFMTorch
  config = load_config(variant, args)
  enc = terrafm.build_encoder(config.model, drop_path_rate=0.0)
  x = np.random.default_rng(0).normal(size=(batch, 224, 224, 12)).astype(np.float32)
  xj = jnp.asarray(x)
  params = jax.jit(enc.init)(jax.random.PRNGKey(0), {MODALITY: xj})["params"]
  fwd = jax.jit(lambda p, im: enc.apply({"params": p}, {MODALITY: im})["cls"])
  t0 = time.perf_counter()
  fwd_c = fwd.lower(params, xj).compile()
  compile_s = time.perf_counter() - t0
  run_j = lambda: jax.block_until_ready(fwd_c(params, xj))  # noqa: E731
  run_j()
  jax_ts = timed(run_j, n_steps)
  del params, fwd_c
  gc.collect()
  torch.manual_seed(0)
  model = TerraFMTorch(variant).eval()
  xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()

  def run_t():
    with torch.no_grad():
      model(xt, MODALITY)["cls"]

  run_t()
  torch_ts = timed(run_t, n_steps)
  del model
  gc.collect()
  return dict(jax=jax_ts, torch=torch_ts, compile_s=compile_s)


def machine_info() -> dict:
  model = platform.processor() or ""
  try:
    for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=False
                               ).stdout.splitlines():
      if line.strip().startswith("Model name:"):
        model = line.split(":", 1)[1].strip()
        break
  except OSError:
    pass
  aff = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
  import flax
  import optax
  return dict(cpu_count=os.cpu_count(), cpus_usable=aff, cpu_model=model,
              platform=platform.platform(), python=platform.python_version(),
              jax=jax.__version__, jaxlib=getattr(__import__("jaxlib"), "__version__", "?"),
              flax=flax.__version__, optax=optax.__version__, torch=torch.__version__,
              torch_threads=torch.get_num_threads(), jax_devices=[str(d) for d in jax.devices()])


def row(variant, what, jax_ts, torch_ts, **extra):
  j, t = statistics.median(jax_ts), statistics.median(torch_ts)
  return dict(variant=variant, what=what, jax_s=j, torch_s=t, ratio=t / j if j > 0 else None,
              jax_all_s=jax_ts, torch_all_s=torch_ts, **extra)


def print_table(rows, info, args):
  print()
  print(f"machine: {info['cpu_count']} CPUs ({info['cpus_usable']} usable), {info['cpu_model']}; "
        f"{info['platform']}")
  print(f"jax {info['jax']} (jaxlib {info['jaxlib']}, flax {info['flax']}, optax "
        f"{info['optax']}), devices {info['jax_devices']}; torch {info['torch']} "
        f"({info['torch_threads']} threads)")
  print(f"batch {args.batch}, crops 2x224 + 6x96 from {args.tile_size}-px tiles, fp32, "
        f"K={rows[0].get('K', 65536) if rows else 65536}, stem {MODALITY}, median of "
        f"{args.steps} timed calls after 1 warm-up")
  hdr = f"{'variant':8s} {'what':32s} {'JAX s':>9s} {'PyTorch s':>10s} {'ratio':>7s}"
  print(hdr)
  print("-" * len(hdr))
  for r in rows:
    ratio = f"{r['ratio']:.2f}x" if r["ratio"] is not None else "-"
    print(f"{r['variant']:8s} {r['what']:32s} {r['jax_s']:9.3f} {r['torch_s']:10.3f} {ratio:>7s}")
  print("ratio = PyTorch s / JAX s (JAX speed / PyTorch speed; > 1 = JAX faster).")
  print("train step: JAX = whole jitted step incl. on-device normalise + crops of 3 modalities, "
        "3 stems + fusion (static graph), metrics; PyTorch = same DINO step, 1 modality/stem, "
        "crops by F.interpolate. crops+normalise: that part alone (included in train step). "
        "Host->device transfer not timed.")


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--variants", default="S/16,B/16")
  p.add_argument("--steps", type=int, default=3, help="timed calls (median reported)")
  p.add_argument("--batch", type=int, default=8, help="global batch (images)")
  p.add_argument("--tile_size", type=int, default=256, help="random tile size (px)")
  p.add_argument("--drop_path_rate", type=float, default=0.0,
                 help="JAX student drop path (the PyTorch encoder has none)")
  p.add_argument("--forward_variant", default="B/16")
  p.add_argument("--out", default=os.path.join(_ROOT, "bench", "results", "compare_torch.json"))
  p.add_argument("--skip_step", action="store_true")
  p.add_argument("--skip_forward", action="store_true")
  args = p.parse_args()
  info = machine_info()
  print(f"machine: {info}", flush=True)
  rows = []
  for variant in [v.strip() for v in args.variants.split(",") if v.strip()]:
    if args.skip_step:
      break
    config = load_config(variant, args)
    data = data_source.make_train_data(config, "/tmp/terrafm_bench")
    config = trainer.resolve_config(config, data.num_examples)
    host = [single_modality(next(data.iterator)) for _ in range(2)]
    print(f"[{variant}] JAX train step ...", flush=True)
    j = jax_train_step(config, host, args.steps)
    print(f"[{variant}] JAX: compile {j['compile_s']:.1f} s, steps {j['step']}, loss {j['loss']:.4f}"
          f" finite {j['finite']}, {j['n_params'] / 1e6:.2f} M student params", flush=True)
    print(f"[{variant}] PyTorch train step ...", flush=True)
    t = torch_train_step(config, host, args.steps)
    print(f"[{variant}] PyTorch: steps {t['step']}, loss {t['loss']:.4f}, "
          f"{t['n_params'] / 1e6:.2f} M student params", flush=True)
    rows.append(row(variant, "train step", j["step"], t["step"], K=config.model.head.out_dim,
                    jax_compile_s=j["compile_s"], jax_loss=j["loss"], torch_loss=t["loss"],
                    jax_student_params=j["n_params"], torch_student_params=t["n_params"]))
    rows.append(row(variant, "crops+normalise (in step)", j["crops"], t["crops"]))
  if not args.skip_forward:
    v = args.forward_variant
    print(f"[{v}] encoder forward ...", flush=True)
    f = forward(v, args.batch, args.steps, args)
    rows.append(row(v, f"encoder forward ({args.batch}x224)", f["jax"], f["torch"],
                    jax_compile_s=f["compile_s"]))
  print_table(rows, info, args)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w", encoding="utf-8") as fh:
    json.dump(dict(machine=info, settings=dict(
        variants=args.variants, steps=args.steps, batch=args.batch, tile_size=args.tile_size,
        crops="2x224 + 6x96", dtype="float32", modality=MODALITY,
        drop_path_rate=args.drop_path_rate, forward_variant=args.forward_variant),
        timed=__doc__, rows=rows, time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())),
        fh, indent=2)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
