"""What a person running any entry point sees: a few lines, one progress line per interval, our
warnings, the result. The full log (every INFO line, the libraries' warnings) goes to a file.

Every entry point calls `configure(log_dir, name)` once its output folder is known:
  - the console keeps terrafm_jax's own warnings and errors; Orbax, etils, gcsfs, Grain and the
    other libraries log to the file only (their failures reach us as exceptions);
  - `<log_dir>/<name>.log` (`<name>.<process>.log` on the other processes) holds everything, for a
    local folder; a remote one (gs://) gets no log file;
  - `TERRAFM_VERBOSE=1` (or the entry point's --verbose) puts the full log back on the console,
    without the libraries' INFO lines unless `TERRAFM_VERBOSE_LIBS=1`.
"""
from __future__ import annotations

import logging as pyl
import os
import sys

PREFIX = "[terrafm]"
_OURS = f"{os.sep}terrafm_jax{os.sep}"
_NOISY_LIBS = (f"{os.sep}orbax{os.sep}", f"{os.sep}etils{os.sep}")


def _process_index() -> int:
  import jax  # pylint: disable=g-import-not-at-top  (entry points configure before jax starts)
  return jax.process_index()


def say(message: str) -> None:
  """One console line, on process 0 only."""
  if _process_index() == 0:
    print(f"{PREFIX} {message}", flush=True)


def error(message: str) -> None:
  """The one error line an entry point ends with (every process: each may fail on its own)."""
  print(f"{PREFIX} ERROR: {message}", flush=True, file=sys.stderr)


class _Quiet(pyl.Filter):
  """Console: our own warnings and errors, and the libraries' critical lines. A library's error
  that matters reaches us as an exception, which the entry point reports in one line that names
  the user's file or path (gcsfs, for one, logs a traceback for every failed retry)."""

  def filter(self, record: pyl.LogRecord) -> bool:
    if record.levelno >= pyl.CRITICAL:
      return True
    return record.levelno >= pyl.WARNING and _OURS in record.pathname


class _DropLibraryInfo(pyl.Filter):
  """Verbose console: Orbax and etils log several INFO lines per checkpoint read or write."""

  def filter(self, record: pyl.LogRecord) -> bool:
    return record.levelno >= pyl.WARNING or not any(n in record.pathname for n in _NOISY_LIBS)


def verbose_requested(flag: bool = False) -> bool:
  return flag or os.environ.get("TERRAFM_VERBOSE", "0") == "1"


def configure(log_dir: str | None, name: str, verbose: bool = False) -> str | None:
  """Sets up the console and the log file; returns the log file's path (None: no file)."""
  from absl import logging  # pylint: disable=g-import-not-at-top
  handler = logging.get_absl_handler()
  if verbose_requested(verbose):
    if os.environ.get("TERRAFM_VERBOSE_LIBS", "0") != "1":
      handler.addFilter(_DropLibraryInfo())
    return None
  handler.addFilter(_Quiet())
  if not log_dir or "://" in str(log_dir):
    return None
  os.makedirs(log_dir, exist_ok=True)
  index = _process_index()
  path = os.path.join(str(log_dir), f"{name}.log" if index == 0 else f"{name}.{index}.log")
  file_handler = pyl.FileHandler(path)
  file_handler.setFormatter(logging.PythonFormatter())
  file_handler.setLevel(pyl.INFO)
  pyl.getLogger().addHandler(file_handler)
  return path
