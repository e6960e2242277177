"""A TensorBoard MetricWriter on tensorboardX, so `clu.metric_writers` works without TensorFlow.

`clu.metric_writers` (and `clu.periodic_actions`, which imports it) import
`clu.metric_writers.summary_writer`, whose TensorFlow summary writer needs `tensorflow`. When
TensorFlow is missing, `install()` registers a replacement `clu.metric_writers.summary_writer`
module whose `SummaryWriter` is this tensorboardX-backed class (same constructor: logdir), before
clu is imported. With TensorFlow installed, clu's own writer is used unchanged.

Event files under a URI logdir (gs://, s3://, az://) are written through etils.epath (gcsfs for
GCS), like every other path of a run: object stores cannot append, so the file is kept in memory
and rewritten whole at each flush (scalar event files stay small).
"""
from __future__ import annotations

import importlib.util
import sys
import types
from typing import Any, Mapping, Optional

import numpy as np

_MODULE = "clu.metric_writers.summary_writer"


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


def _make_writer_class():
  register_uri_event_files()
  # Imported lazily: at this point clu.metric_writers is half-initialised, but `interface` (imported
  # before summary_writer in clu's __init__) is already complete.
  from clu.metric_writers import interface  # pylint: disable=g-import-not-at-top
  import tensorboardX  # pylint: disable=g-import-not-at-top

  class TensorboardXWriter(interface.MetricWriter):
    """clu MetricWriter writing TensorBoard event files with tensorboardX."""

    def __init__(self, logdir: str):
      super().__init__()
      self._writer = tensorboardX.SummaryWriter(logdir=logdir, flush_secs=30)

    def write_summaries(self, step: int, values: Mapping[str, Any],
                        metadata: Optional[Mapping[str, Any]] = None):
      for key, value in values.items():
        value = np.asarray(value)
        if value.ndim == 0:
          self._writer.add_scalar(key, value.item(), global_step=step)

    def write_scalars(self, step: int, scalars: Mapping[str, Any]):
      for key, value in scalars.items():
        self._writer.add_scalar(key, float(np.asarray(value)), global_step=step)

    def write_images(self, step: int, images: Mapping[str, Any]):
      for key, value in images.items():
        value = np.asarray(value)
        fmt = "NHWC" if value.ndim == 4 else "HWC"
        self._writer.add_images(key, value, global_step=step, dataformats=fmt) \
            if fmt == "NHWC" else self._writer.add_image(key, value, step, dataformats=fmt)

    def write_videos(self, step: int, videos: Mapping[str, Any]):
      del step, videos

    def write_audios(self, step: int, audios: Mapping[str, Any], *, sample_rate: int):
      for key, value in audios.items():
        self._writer.add_audio(key, np.asarray(value), step, sample_rate=sample_rate)

    def write_texts(self, step: int, texts: Mapping[str, str]):
      for key, value in texts.items():
        self._writer.add_text(key, value, global_step=step)

    def write_histograms(self, step: int, arrays: Mapping[str, Any],
                         num_buckets: Optional[Mapping[str, int]] = None):
      for key, value in arrays.items():
        bins = (num_buckets or {}).get(key, "tensorflow")
        self._writer.add_histogram(key, np.asarray(value), step, bins=bins)

    def write_pointcloud(self, step, point_clouds, *, point_colors=None, configs=None):
      del step, point_clouds, point_colors, configs

    def write_hparams(self, hparams: Mapping[str, Any]):
      flat = {k: (v if isinstance(v, (int, float, str, bool)) else str(v))
              for k, v in hparams.items()}
      self._writer.add_hparams(flat, {})

    def flush(self):
      self._writer.flush()

    def close(self):
      self._writer.close()

  return TensorboardXWriter


def install() -> None:
  """Make `import clu.metric_writers` work; idempotent."""
  if "clu.metric_writers" in sys.modules or _MODULE in sys.modules:
    return
  if importlib.util.find_spec("tensorflow") is not None:
    return
  module = types.ModuleType(_MODULE)
  module.__doc__ = "terrafm-jax: tensorboardX-backed SummaryWriter (TensorFlow is not installed)."
  cache = {}

  def __getattr__(name):  # PEP 562: build the class on first use.
    if name == "SummaryWriter":
      if name not in cache:
        cache[name] = _make_writer_class()
      return cache[name]
    raise AttributeError(name)

  module.__getattr__ = __getattr__
  sys.modules[_MODULE] = module
