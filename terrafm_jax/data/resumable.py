"""A checkpointable iterator whose state is the *global* stream position, not a Grain internal.

The training stream is positional: global batch n holds sample positions [n*G, (n+1)*G), each
drawn and planned from (seed, position) alone (pipeline.py). Restoring therefore needs only n:
the iterator is rebuilt to start at batch n. That makes the checkpointed state independent of the
process count (save on 2 hosts, resume on 1: the next global batch is the same tiles), of the
Grain worker count and of Grain's own state format (which differs between threads and
`mp_prefetch`).

The state also records what the stream was drawn from (seed, global batch, dataset size); a
resume that changes any of these would silently feed another sequence, so it is an error.
"""
from __future__ import annotations

import json
from typing import Any, Callable, Iterator, Mapping


class GlobalPositionIterator(Iterator[Any]):
  """Per-process batches of a positional stream; `get_state` / `set_state` as Grain expects."""

  # checkpoint.restore may hand this iterator another process count's state.
  process_count_independent = True

  def __init__(self, make_iterator: Callable[[int], Iterator[Any]],
               fingerprint: Mapping[str, Any], start_batch: int = 0):
    self._make = make_iterator
    self._fingerprint = dict(fingerprint)
    self._next = int(start_batch)
    self._it: Iterator[Any] | None = None

  @property
  def next_batch(self) -> int:
    """Index of the global batch the next `next()` returns."""
    return self._next

  def _close(self) -> None:
    close = getattr(self._it, "close", None)
    if close is not None:
      close()
    self._it = None

  def start_prefetch(self) -> None:  # called by Grain's checkpoint handler after a restore
    if self._it is None:
      self._it = self._make(self._next)

  def __next__(self) -> Any:
    self.start_prefetch()
    batch = next(self._it)
    self._next += 1
    return batch

  def get_state(self) -> bytes:
    return json.dumps({"next_batch": self._next, **self._fingerprint}).encode()

  def set_state(self, state: bytes | str | Mapping[str, Any]) -> None:
    d = state if isinstance(state, Mapping) else json.loads(state)
    if "next_batch" not in d:
      if "next_index" in d:  # a plain Grain DatasetIterator state (in-process reads)
        d = {"next_batch": d["next_index"]}
      else:
        raise ValueError(f"unrecognised input-stream state {str(d)[:200]!r}: it was not written "
                         "by this pipeline")
    for key, want in self._fingerprint.items():
      if key in d and d[key] != want:
        raise ValueError(f"the checkpointed input stream was drawn with {key}={d[key]!r}, this "
                         f"run has {key}={want!r}; resuming would feed another sample sequence. "
                         "Use the original setting or a new workdir.")
    self._close()
    self._next = int(d["next_batch"])

  def close(self) -> None:
    self._close()
