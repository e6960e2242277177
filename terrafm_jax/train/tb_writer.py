"""TensorBoard event files written with tensorboardX (no TensorFlow), on process 0 only.

tensorboardX's SummaryWriter already writes from a background thread, so the training loop never
waits on the file system. Event files under a URI logdir (gs://, s3://, az://) are written through
etils.epath (gcsfs for GCS), like every other path of a run: object stores cannot append, so the
file is kept in memory and rewritten whole at each flush (scalar event files stay small).
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np


class _EpathRecordFile:
  """A binary file object for tensorboardX's record writer, stored through epath."""

  def __init__(self, path: str):
    from etils import epath  # pylint: disable=g-import-not-at-top
    self._path = epath.Path(path)
    self._data = bytearray()
    self.closed = False

  def write(self, data: bytes) -> None:
    self._data += data

  def flush(self) -> None:
    self._path.write_bytes(bytes(self._data))

  def close(self) -> None:
    if not self.closed:
      self.flush()
      self.closed = True


class _EpathRecordFactory:

  def directory_check(self, path: str) -> None:
    from etils import epath  # pylint: disable=g-import-not-at-top
    epath.Path(path).mkdir(parents=True, exist_ok=True)

  def open(self, path: str) -> _EpathRecordFile:
    return _EpathRecordFile(path)


def register_uri_event_files() -> None:
  from tensorboardX import record_writer  # pylint: disable=g-import-not-at-top
  for prefix in ("gs", "s3", "az"):
    record_writer.register_writer_factory(prefix, _EpathRecordFactory())


class EventWriter:
  """Scalars and the run's hyper-parameters to TensorBoard; `logdir=None` writes nothing (the
  other processes of a multi-process run)."""

  def __init__(self, logdir: str | None, flush_secs: int = 30):
    self._writer = None
    if logdir is not None:
      register_uri_event_files()
      import tensorboardX  # pylint: disable=g-import-not-at-top
      self._writer = tensorboardX.SummaryWriter(logdir=str(logdir), flush_secs=flush_secs)

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    if self._writer is not None:
      for key, value in scalars.items():
        self._writer.add_scalar(key, float(np.asarray(value)), global_step=step)

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    if self._writer is not None:
      flat = {k: (v if isinstance(v, (int, float, str, bool)) else str(v))
              for k, v in hparams.items()}
      self._writer.add_hparams(flat, {})

  def flush(self) -> None:
    if self._writer is not None:
      self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None
