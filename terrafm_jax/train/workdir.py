"""Run directories anywhere `etils.epath` reaches: local disk, a shared filesystem, `gs://`.

Every path the trainer writes or reads (workdir, checkpoints, metrics.jsonl, run metadata, data
dirs) goes through here, so a `gs://bucket/run` workdir stays a bucket path on every host instead
of turning into `<cwd>/gs:/bucket/run` on each worker's local disk (`os.path.abspath` does that).
gs:// needs `gcsfs` (a dependency of this package); Orbax writes the arrays through TensorStore's
own GCS driver.
"""
from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Iterator

from absl import logging
from etils import epath


def is_remote(path: str | os.PathLike[str]) -> bool:
  """True for URI paths (gs://, s3://, ...), which only epath (not os/open) can handle."""
  return "://" in str(path)


def resolve(path: str | os.PathLike[str]) -> epath.Path:
  """An epath.Path; local paths made absolute (Orbax requires it), URIs left untouched."""
  text = str(path)
  if is_remote(text):
    return epath.Path(text)
  return epath.Path(os.path.abspath(os.path.expanduser(text)))


class StorageError(ValueError):
  """A path the user gave cannot be reached (no network, no credentials, no such bucket); a
  ValueError, as any other unusable value of a flag, so every entry point reports it in one line."""


@contextlib.contextmanager
def reaching(path: str | os.PathLike[str], what: str = "workdir") -> Iterator[None]:
  """Errors of the storage client under a remote path (gcsfs' and aiohttp's: DNS, credentials,
  HTTP) end in one message that names the user's path, not the storage host."""
  try:
    yield
  except (FileNotFoundError, ValueError):
    raise
  except Exception as e:  # pylint: disable=broad-except  (only URI paths are rewritten)
    if not is_remote(path):
      raise
    cause = str(e).splitlines()[0] if str(e) else ""
    raise StorageError(f"cannot reach the {what} {path}: {type(e).__name__}"
                       f"{': ' + cause if cause else ''}. Check the network, the credentials "
                       "(GOOGLE_APPLICATION_CREDENTIALS or the host's service account) and that "
                       "the bucket exists.") from e


def make_workdir(path: str | os.PathLike[str]) -> epath.Path:
  """resolve() and create it; a remote one that cannot be reached is one StorageError."""
  workdir = resolve(path)
  with reaching(path):
    workdir.mkdir(parents=True, exist_ok=True)
  return workdir


def append_jsonl(path: epath.Path, row: dict[str, Any]) -> None:
  """Append one JSON line. Object stores cannot append: those files are rewritten whole, which is
  fine for the (small) metrics log and keeps it readable at any time."""
  line = json.dumps(row) + "\n"
  if not is_remote(path):
    with open(os.fspath(path), "a", encoding="utf-8") as f:
      f.write(line)
    return
  old = path.read_text() if path.exists() else ""
  path.write_text(old + line)


_warned_local = False


def warn_if_local_multiprocess(workdir: epath.Path, process_count: int) -> None:
  """Several processes need one workdir they all see; a local path only works when it is on a
  filesystem shared by every host (NFS, Lustre, gcsfuse), which this process cannot check."""
  global _warned_local
  if process_count > 1 and not is_remote(workdir) and not _warned_local:
    _warned_local = True
    logging.warning(
        "workdir %s is a local path and %d processes share it: every process must see the "
        "same folder (a shared filesystem). If each host has its own disk, checkpoints are "
        "split across hosts and a restart cannot resume; use a bucket (gs://...) or shared "
        "storage.", workdir, process_count)
