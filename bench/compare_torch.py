"""JAX vs eager PyTorch, same process: the project's DINO train step and the encoder forward.

  python bench/compare_torch.py                       # S/16 and B/16, batch 8, 3 timed steps
  python bench/compare_torch.py --variants=Ti/16 --steps=1 --skip_forward

Rows (median over --steps timed calls, after one warm-up call; JAX compiles before its warm-up;
each timed call follows an untimed call of the same side, see train_steps):

* `train step` -- JAX: the project's real step, `jax.jit(step.make_train_step(...))` with the
  state donated, built exactly as bench/train_step.py builds it from configs/terrafm_b.py:<variant>
  with data.source="random", model.dtype="float32", global batch --batch, the paper crops
  (2 x 224 + 6 x 96), K = 65,536 prototypes, 256-px random tiles (data.builtin.tile_size) and
  model.drop_path_rate=--drop_path_rate (default 0: the PyTorch encoder has no drop path).
  data.modalities=("s2_l1c",) and every view's modality mask is set to S2 L1C only, so every
  sample takes the single-modality (case 1) path. The timed JAX call includes, on the device:
  normalisation of the raw tiles and the bicubic antialiased crops (of the modalities some view
  can use: here S2 L1C only), the teacher and student forwards, the
  dual-centered loss, backward, per-tensor clipping, AdamW, EMA teacher, center updates, the
  non-finite guard and the step metrics. With modality groups (data.modality_groups, default)
  and data.modalities=("s2_l1c",) every view is in the single-L1C group, so the step runs the L1C
  stem only (no fusion), as the released path does; that is the project's step.
  The host -> device batch transfer is not timed (batches are device arrays made beforehand).
  PyTorch: bench/torch_dino_step.py, the same DINO step for the S2 L1C stem only, with
  `TerraFMTorch` student/teacher: normalisation of the raw S2 L1C tiles + one
  `F.interpolate(bicubic, antialias)` per view and sample, teacher/student forwards, the same loss,
  backward, per-tensor clipping, last-layer gradient dropped (both sides are in DINO's first epoch),
  AdamW, EMA teacher, center updates. Both sides start from the same numpy batch.
* `crops+normalise` -- the part of the step above that makes the views, timed alone: JAX jits
  `views.make_views` with the modalities the step crops (views.needed_modalities: with
  data.modalities=("s2_l1c",) and modality groups only S2 L1C, 12 channels); PyTorch times its own
  crop code inside each step (S2 L1C only, 12 channels). Included in `train step` on both sides.
* `encoder forward` (B/16 only) -- batch --batch, 224 px, 12 channels, S2 L1C stem, CLS output:
  JAX `jax.jit(build_encoder(...).apply)` on a single-modality input (the released path, no fusion),
  PyTorch `TerraFMTorch` under `torch.no_grad()`. Input transfer not timed.

ratio = PyTorch seconds / JAX seconds (> 1: JAX is faster). The JSON also holds each call's process
CPU seconds, XLA's cost-analysis FLOPs of the compiled JAX step, and the model FLOPs per step of
both sides (`metrics.step_flops`: what the JAX step runs, per modality group; for the PyTorch
side the released single-stem path with proj2 and proj3 as two layers, where the JAX
TokenProjection applies their product once); the table prints a per-FLOP ratio too. Thread counts are left at their
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
from terrafm_jax.models import terrafm, variants  # noqa: E402
from terrafm_jax.train import data_source, metrics, optim, schedules, sharding  # noqa: E402
from terrafm_jax.train import state as state_lib  # noqa: E402
from terrafm_jax.train import step as step_lib  # noqa: E402
from terrafm_jax.train import run_setup  # noqa: E402
from terrafm_jax.train import views as views_lib  # noqa: E402

MODALITY = "s2_l1c"


def add_step_args(p) -> None:
  """The flags load_config reads (shared by the bench scripts that build this step)."""
  p.add_argument("--batch", type=int, default=8, help="global batch (images)")
  p.add_argument("--tile_size", type=int, default=256, help="random tile size (px)")
  p.add_argument("--drop_path_rate", type=float, default=0.0,
                 help="JAX student drop path (the PyTorch encoder has none)")


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


def released_step_flops(config) -> float:
  """metrics.step_flops for the released single-stem path (one stem, no fusion): the PyTorch
  side's model FLOPs. metrics.step_flops itself counts the JAX step's masked path."""
  mc, dc = config.model, config.data
  dims = variants.decode_variant(mc.variant)
  a, p = 3 * dims["width"], dims["patch_size"]
  # + proj2 on every token: PyTorch runs proj2 and proj3 as two layers, which the JAX
  # TokenProjection folds into one product of the weights (metrics.encoder_forward_flops).
  one = lambda s: (metrics.encoder_forward_flops(mc, s, fused=False) + metrics.head_flops(mc)  # noqa: E731
                   + 2 * (s // p) ** 2 * a * a)
  student = dc.n_global * one(dc.global_size) + dc.n_local * one(dc.local_size)
  return float(config.global_batch_size * (3 * student + dc.n_global * one(dc.global_size)))


def timed(fn, n: int) -> tuple[list[float], list[float]]:
  """Wall and process-CPU seconds of n calls."""
  ts, cs = [], []
  for _ in range(n):
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    ts.append(time.perf_counter() - t0)
    cs.append(time.process_time() - c0)
  return ts, cs


def xla_flops(compiled) -> float | None:
  try:
    ca = compiled.cost_analysis()
    ca = ca[0] if isinstance(ca, (list, tuple)) else ca
    return float(ca["flops"])
  except Exception:  # pylint: disable=broad-except
    return None


class JaxStep:
  """The project's jitted, donated train step, built as bench/train_step.py builds it."""

  def __init__(self, plan, host_batches):
    config = self.config = plan.config
    mesh = sharding.make_mesh(config.mesh)
    rules = sharding.logical_rules(config)
    model = terrafm.build_dino(config.model)
    scheds = schedules.make_schedules(config)
    n_shards = mesh.shape["data"] * mesh.shape["fsdp"]
    param_init = state_lib.make_param_init_fn(model, config, n_shards,
                                              DEFAULT_CONTRACT.num_channels)
    rng = jax.random.PRNGKey(config.seed)
    tx = optim.make_optimizer(config, sharding.unbox(jax.eval_shape(param_init, rng)), scheds,
                              idle=plan.idle)
    init = state_lib.make_state_init_fn(param_init, tx, config.model.head.out_dim)
    sh = state_lib.state_shardings(param_init, tx, rng, mesh, rules)
    with jax.set_mesh(mesh):
      self.state = state_lib.create_sharded_state(init, sh, rng, rules)
    self.n_params = int(sum(x.size for x in jax.tree.leaves(self.state.student)))
    self.batches = [sharding.global_batch({k: b[k] for k in data_source.step_keys(config)}, mesh)
                    for b in host_batches]
    fn = jax.jit(step_lib.make_train_step(model, tx, scheds, plan, DEFAULT_CONTRACT),
                 in_shardings=(sh, {k: v.sharding for k, v in self.batches[0].items()}),
                 donate_argnums=(0,))
    mods = plan.modalities_run
    views_fn = jax.jit(lambda b: views_lib.make_views(b, DEFAULT_CONTRACT, config.data,
                                                      jnp.dtype(config.model.dtype), mods))
    with jax.set_mesh(mesh), __import__("flax").linen.logical_axis_rules(rules):
      t0 = time.perf_counter()
      self.lowered = fn.lower(self.state, self.batches[0])
      self.compiled = self.lowered.compile(compiler_options=run_setup.compiler_options(config, "cpu"))
      self.compile_s = time.perf_counter() - t0
      self.views_c = views_fn.lower(self.batches[0]).compile()
    self.flops = xla_flops(self.compiled)
    self.i, self.metrics = 0, None

  def step(self):
    self.state, self.metrics = self.compiled(self.state, self.batches[self.i % len(self.batches)])
    self.i += 1
    jax.block_until_ready((self.state, self.metrics))

  def views(self):
    jax.block_until_ready(self.views_c(self.batches[self.i % len(self.batches)]))
    self.i += 1


def make_torch_step(config):
  from torch_dino_step import TorchDINOStep  # bench/ helper
  d, o, h = config.dino, config.optim, config.model.head
  mc = DEFAULT_CONTRACT[MODALITY]
  return TorchDINOStep(
      config.model.variant, out_dim=h.out_dim,
      head_kw=dict(hidden_dim=h.hidden_dim, bottleneck_dim=h.bottleneck_dim, nlayers=h.nlayers),
      modality=MODALITY, mean=mc.mean, std=mc.std, n_global=config.data.n_global,
      global_size=config.data.global_size, local_size=config.data.local_size,
      student_temp=d.student_temp, teacher_temp=d.warmup_teacher_temp, alpha=d.alpha,
      center_momentum=d.center_momentum, center_h_momentum=d.center_h_momentum,
      high_freq_classes=d.high_freq_classes, lr=schedules.scaled_peak_lr(config),
      weight_decay=o.weight_decay, clip_grad=o.clip_grad, momentum_teacher=d.momentum_teacher,
      freeze_last_layer=o.freeze_last_layer_epochs > 0, seed=config.seed)


def train_steps(plan, host_batches, n_steps: int, warmup: int) -> dict:
  """JAX and PyTorch steps interleaved so that load from other processes on a shared machine hits
  both sides alike: each timed call is preceded by one untimed call of the same side (J', J, T',
  T, J', J, ...). Why the untimed call: the first call after a switch of framework runs ~20-40 %
  slower on this 2-core machine (the other runtime's worker threads are still spinning / the
  caches are cold), which a strict J, T, J, T alternation charges to both sides unevenly."""
  config = plan.config
  j = JaxStep(plan, host_batches)
  print(f"  JAX compile {j.compile_s:.1f} s; {j.n_params / 1e6:.2f} M student params; "
        f"XLA flops/step {j.flops}", flush=True)
  t = make_torch_step(config)
  print(f"  PyTorch: {t.num_params() / 1e6:.2f} M student params", flush=True)
  tb = {"i": 0, "crops": []}

  def torch_one():
    tb["loss"], crop_s = t.step(host_batches[tb["i"] % len(host_batches)])
    tb["i"] += 1
    tb["crops"].append(crop_s)

  for _ in range(warmup):
    j.step()
    torch_one()
  tb["crops"].clear()
  res = {k: [] for k in ("jax", "jax_cpu", "torch", "torch_cpu")}
  for i in range(n_steps):
    j.step()
    w, c = timed(j.step, 1)
    res["jax"] += w
    res["jax_cpu"] += c
    torch_one()
    tb["crops"].pop()
    w, c = timed(torch_one, 1)
    res["torch"] += w
    res["torch_cpu"] += c
    print(f"  step {i}: JAX {res['jax'][-1]:.2f} s, PyTorch {res['torch'][-1]:.2f} s", flush=True)
  res["torch_crops"] = list(tb["crops"])
  res["jax_loss"], res["jax_finite"] = float(j.metrics["loss"]), bool(j.metrics["finite"])
  res["torch_loss"] = tb["loss"]
  res["jax_compile_s"], res["jax_xla_flops"] = j.compile_s, j.flops
  res["jax_student_params"], res["torch_student_params"] = j.n_params, t.num_params()
  del t
  gc.collect()
  for _ in range(warmup):
    j.views()
  res["jax_crops"], _ = timed(j.views, n_steps)
  del j
  gc.collect()
  return res


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
  torch.manual_seed(0)
  model = TerraFMTorch(variant).eval()
  xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()

  def run_t():
    with torch.no_grad():
      model(xt, MODALITY)["cls"]

  for _ in range(args.warmup):
    run_j()
    run_t()
  res = {k: [] for k in ("jax", "jax_cpu", "torch", "torch_cpu")}
  for _ in range(n_steps):  # interleaved with an untimed call first, as the train steps
    run_j()
    w, c = timed(run_j, 1)
    res["jax"] += w
    res["jax_cpu"] += c
    run_t()
    w, c = timed(run_t, 1)
    res["torch"] += w
    res["torch_cpu"] += c
  res["jax_compile_s"], res["jax_xla_flops"] = compile_s, xla_flops(fwd_c)
  del params, fwd_c, model
  gc.collect()
  return res


def machine_info() -> dict:
  # The ratios depend on the CPU generation (vector width, which kernels each library picks), so
  # the family / model and the AVX-512 flag go with the figures.
  model, family, number, flags = platform.processor() or "", "?", "?", ""
  try:
    for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=False
                               ).stdout.splitlines():
      key, _, value = line.partition(":")
      key, value = key.strip(), value.strip()
      if key == "Model name":
        model = value
      elif key == "CPU family":
        family = value
      elif key == "Model":
        number = value
      elif key == "Flags":
        flags = value
  except OSError:
    pass
  model = f"{model} (family {family} model {number}{', AVX-512' if 'avx512f' in flags else ''})"
  aff = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
  import flax
  import optax
  return dict(cpu_count=os.cpu_count(), cpus_usable=aff, cpu_model=model,
              platform=platform.platform(), python=platform.python_version(),
              jax=jax.__version__, jaxlib=getattr(__import__("jaxlib"), "__version__", "?"),
              flax=flax.__version__, optax=optax.__version__, torch=torch.__version__,
              torch_threads=torch.get_num_threads(), jax_devices=[str(d) for d in jax.devices()],
              openblas_coretype=os.environ.get("OPENBLAS_CORETYPE"))


def row(variant, what, jax_ts, torch_ts, **extra):
  j, t = statistics.median(jax_ts), statistics.median(torch_ts)
  return dict(variant=variant, what=what, jax_s=j, torch_s=t, ratio=t / j if j > 0 else None,
              jax_all_s=jax_ts, torch_all_s=torch_ts, **extra)


def print_table(rows, info, args):
  print()
  print(f"machine: {info['cpu_count']} CPUs ({info['cpus_usable']} usable), {info['cpu_model']}; "
        f"{info['platform']}; OPENBLAS_CORETYPE={info['openblas_coretype']}")
  print(f"jax {info['jax']} (jaxlib {info['jaxlib']}, flax {info['flax']}, optax "
        f"{info['optax']}), devices {info['jax_devices']}; torch {info['torch']} "
        f"({info['torch_threads']} threads)")
  print(f"batch {args.batch}, crops 2x224 + 6x96 from {args.tile_size}-px tiles, fp32, "
        f"K={rows[0].get('K', 65536) if rows else 65536}, stem {MODALITY}, median of "
        f"{args.steps} timed calls after {args.warmup} warm-up (JAX/PyTorch interleaved)")
  hdr = (f"{'variant':8s} {'what':28s} {'JAX s':>9s} {'PyTorch s':>10s} {'ratio':>7s}"
         f" {'JAX cpu-s':>10s} {'PyT cpu-s':>10s}")
  print(hdr)
  print("-" * len(hdr))
  for r in rows:
    ratio = f"{r['ratio']:.2f}x" if r["ratio"] is not None else "-"
    cpu = lambda k: f"{statistics.median(r[k]):10.2f}" if r.get(k) else f"{'-':>10s}"  # noqa: E731
    print(f"{r['variant']:8s} {r['what']:28s} {r['jax_s']:9.3f} {r['torch_s']:10.3f} {ratio:>7s}"
          f" {cpu('jax_cpu_s')} {cpu('torch_cpu_s')}")
  print("ratio = PyTorch s / JAX s (JAX speed / PyTorch speed; > 1 = JAX faster), wall-clock "
        "medians; cpu-s = process CPU seconds of the same calls (all threads).")
  for r in rows:
    if r.get("jax_model_flops"):
      print(f"{r['variant']} model FLOPs/step (metrics.step_flops): JAX {r['jax_model_flops'] / 1e9:.0f} G "
            f"(what the step runs), PyTorch {r['torch_model_flops'] / 1e9:.0f} G "
            f"(1 stem); per-FLOP ratio {r['ratio'] * r['jax_model_flops'] / r['torch_model_flops']:.2f}x")
  print("train step: JAX = whole jitted step incl. on-device normalise + crops of the used modalities, "
        "modality-grouped stems (static graph), metrics; PyTorch = same DINO step, 1 modality/stem, "
        "crops by F.interpolate. crops+normalise: that part alone (included in train step). "
        "Host->device transfer not timed.")


def write_json(args, info, rows):
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w", encoding="utf-8") as fh:
    json.dump(dict(machine=info, settings=dict(
        variants=args.variants, steps=args.steps, warmup=args.warmup, batch=args.batch,
        tile_size=args.tile_size, crops="2x224 + 6x96", dtype="float32", modality=MODALITY,
        drop_path_rate=args.drop_path_rate, forward_variant=args.forward_variant),
        timed=__doc__, rows=rows, time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())),
        fh, indent=2)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--variants", default="S/16,B/16")
  p.add_argument("--steps", type=int, default=3, help="timed calls (median reported)")
  p.add_argument("--warmup", type=int, default=1, help="untimed calls per side before timing")
  add_step_args(p)
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
    plan, _, it = data_source.open_run(config, "/tmp/terrafm_bench")
    config = plan.config
    host = [single_modality(next(it)) for _ in range(2)]
    print(f"[{variant}] train step (JAX and PyTorch interleaved) ...", flush=True)
    r = train_steps(plan, host, args.steps, args.warmup)
    print(f"[{variant}] loss JAX {r['jax_loss']:.4f} (finite {r['jax_finite']}), "
          f"PyTorch {r['torch_loss']:.4f}", flush=True)
    extra = {k: r[k] for k in ("jax_loss", "torch_loss", "jax_compile_s", "jax_xla_flops",
                               "jax_student_params", "torch_student_params")}
    rows.append(row(variant, "train step", r["jax"], r["torch"], K=config.model.head.out_dim,
                    jax_model_flops=plan.step_flops,
                    torch_model_flops=released_step_flops(config), jax_cpu_s=r["jax_cpu"],
                    torch_cpu_s=r["torch_cpu"], **extra))
    rows.append(row(variant, "crops+normalise (in step)", r["jax_crops"], r["torch_crops"]))
    write_json(args, info, rows)
  if not args.skip_forward:
    v = args.forward_variant
    print(f"[{v}] encoder forward ...", flush=True)
    f = forward(v, args.batch, args.steps, args)
    rows.append(row(v, f"encoder forward ({args.batch}x224)", f["jax"], f["torch"],
                    jax_cpu_s=f["jax_cpu"], torch_cpu_s=f["torch_cpu"],
                    jax_compile_s=f["jax_compile_s"], jax_xla_flops=f["jax_xla_flops"]))
  print_table(rows, info, args)
  write_json(args, info, rows)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
