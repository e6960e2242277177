"""Multi-host on the real input pipeline: 2 local processes x 2 CPU devices (gloo collectives),
the same environment launch/local_multiprocess.sh sets up, on the built-in data prepared once
before the processes start.

One scenario, checked end to end:
  * every global batch is the tiles the positional stream defines (per-process Grain slices put
    together), and the class-exposure metric counts the whole global batch, not process 0's slice;
  * SIGTERM to ONE process (process 1): both processes save the same step and exit 0;
  * resuming with ONE process continues the input stream at the same global position.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The trainer with --record_tiles (tests/train/fault_train.py): each global batch's tile ids.
FAULT_TRAIN = os.path.join(REPO, "tests", "train", "fault_train.py")


def _tiles(work) -> dict[int, list[int]]:
  out = {}
  for line in (work / "tiles.jsonl").read_text().splitlines():
    row = json.loads(line)
    out[row["step"]] = row["tiles"]
  return out

BUILTIN = dict(num_cells=8, cell_size=64, tile_size=32, seed=0)
GLOBAL_BATCH = 8


def _args(work, root, *extra):
  return ["--config=configs/smoke.py", f"--workdir={work}",
          f"--config.data.builtin.root={root}",
          *(f"--config.data.builtin.{k}={v}" for k, v in BUILTIN.items()),
          f"--config.global_batch_size={GLOBAL_BATCH}", "--config.knn.enabled=False",
          # modality-group blocks of 2 samples: the per-shard batch on 4 and on 2 devices
          "--config.data.group_block=2",
          # The synthetic set the test prepares itself (no real scenes), so that it can recompute
          # the expected batches; the real-pixel check still starts on both processes.
          "--config.data.builtin.real_scenes=",
          "--config.log_every_steps=1", "--record_tiles", *extra]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start_processes(args, logs, subprocess_env, n=2, devices=2):
  port = _free_port()
  procs = []
  for i in range(n):
    env = subprocess_env(devices)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    log = open(logs / f"process_{i}.log", "w", encoding="utf-8")  # pylint: disable=consider-using-with
    where = [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={n}", f"--process_id={i}"]
    procs.append((subprocess.Popen([sys.executable, FAULT_TRAIN, *where, *args], cwd=REPO,
                                   env=env, stdout=log, stderr=subprocess.STDOUT), log))
  return procs


def _expected_global_batches(data_dir, seed, process_count, start, count):
  """Tile ids of global batches [start, start+count), from the per-process datasets."""
  from terrafm_jax.data import pipeline
  out = [[] for _ in range(count)]
  for p in range(process_count):
    ds, _ = pipeline.make_train_dataset(data_dir, global_batch_size=GLOBAL_BATCH, seed=seed,
                                        process_index=p, process_count=process_count,
                                        start_batch=start)
    it = iter(ds)
    for j in range(count):
      out[j] += next(it)["tile_index"].tolist()
  return out


def test_two_processes_real_pipeline_sigterm_one_then_resume_on_one(tmp_path, cli, metrics_of,
                                                                     env_for):
  from terrafm_jax.data import builtin
  root = tmp_path / "builtin"
  data_dir = builtin.ensure_builtin_dataset(str(root), **BUILTIN)
  work, logs = tmp_path / "w", tmp_path / "logs"
  logs.mkdir()
  args = _args(work, root, "--config.total_steps=100000", "--config.checkpoint.every_steps=100000")
  procs = _start_processes(args, logs, env_for)
  try:
    deadline = time.time() + 300
    metrics = work / "metrics.jsonl"
    while time.time() < deadline and all(p.poll() is None for p, _ in procs):
      if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
        break
      time.sleep(0.5)
    assert all(p.poll() is None for p, _ in procs), (logs / "process_0.log").read_text()[-5000:]
    procs[1][0].send_signal(signal.SIGTERM)  # one host is preempted
    rcs = [p.wait(timeout=180) for p, _ in procs]
  finally:
    for p, log in procs:
      if p.poll() is None:
        p.kill()
      log.close()
  texts = [(logs / f"process_{i}.log").read_text() for i in range(2)]
  assert rcs == [0, 0], "\n".join(t[-4000:] for t in texts)
  steps = [re.findall(r"preempted: checkpoint of step (\d+) written", t) for t in texts]
  assert steps[0] and steps[0] == steps[1], steps
  n = int(steps[0][0])
  assert "on 4 devices (2 processes)" in texts[0]
  data = work / "checkpoints" / str(n) / "data"
  assert {"process_0-of-2.json", "process_1-of-2.json"} <= set(os.listdir(data))

  # The global batches the 2-process run trained on are the positional stream's.
  m = metrics_of(str(work))
  assert sorted(m) == list(range(1, n + 1))
  expected = _expected_global_batches(data_dir, 0, 2, 0, n)
  tiles = _tiles(work)
  assert [tiles[s] for s in range(1, n + 1)] == expected
  assert expected == _expected_global_batches(data_dir, 0, 1, 0, n)  # independent of slicing
  # Exposure counts the whole global batch (both processes' slices).
  import pandas as pd
  index = pd.read_parquet(os.path.join(data_dir, "index.parquet")).set_index("tile_index")
  labels = index.loc[[t for s in range(1, n + 1) for t in tiles[s]], "label"].to_numpy()
  want = np.bincount(labels[labels >= 0], minlength=11) / max((labels >= 0).sum(), 1)
  from terrafm_jax.train.metrics import WORLDCOVER
  got = np.asarray([m[n][f"exposure/{c}"] for c in WORLDCOVER])
  np.testing.assert_allclose(got, want, atol=1e-12)

  # Resume on ONE process (4 devices): the input stream continues at global batch n.
  resumed = cli(_args(work, root, f"--config.total_steps={n + 2}",
                          "--config.checkpoint.every_steps=100000"), num_devices=4, faults=True)
  assert f"resumed from step {n}" in resumed.stderr
  assert "another process count" in resumed.stderr
  tiles = _tiles(work)
  assert [tiles[s] for s in (n + 1, n + 2)] == _expected_global_batches(data_dir, 0, 2, n, 2)
  meta = json.loads((work / "run_metadata.json").read_text())
  assert meta["process_count"] == 1 and meta["start_step"] == n
  # One input contract: the prepared data's computed statistics, also in the checkpoint.
  prepared = json.loads((tmp_path / "builtin").joinpath(
      os.path.relpath(os.path.join(data_dir, "contract.json"), root)).read_text())
  assert meta["contract"] == prepared
  from terrafm_jax.train import checkpoint
  assert checkpoint.restore_contract(str(work / "checkpoints")).to_dict() == prepared
  # The export states the run's contract.
  import subprocess as sp
  out = tmp_path / "teacher.safetensors"
  sp.run([sys.executable, "-m", "terrafm_jax.export", "--config.format=released",
          f"--config.workdir={work}", f"--config.out={out}"], cwd=REPO, env=env_for(1), check=True, capture_output=True)
  exported = json.loads((tmp_path / "teacher.contract.json").read_text())
  assert exported["contract"] == prepared
  # Resuming with another contract is refused, naming the difference (a data error, exit 1).
  refused = cli(_args(work, root, f"--config.total_steps={n + 4}", "--config.data.contract=default"),
                num_devices=4, expect_rc=1, faults=True)
  assert "normalisation statistics differ" in refused.stderr
