"""Reusable shared-memory slots for moving batches out of Grain worker processes.

Grain's `mp_prefetch` copies every numpy array a worker yields into a *fresh* POSIX shared-memory
block, which the parent unlinks after use. For whole tiles (~15 MB a sample) the page faults of
those fresh tmpfs pages cost ~10x a plain memcpy and made one worker process slower than threads.

Here the parent creates, per worker, one segment of `slots` fixed-size slots (plus one flag byte
per slot) before the workers start, and owns it: it unlinks the segments when the iterator is
closed or garbage-collected, and Python's resource tracker unlinks them if the parent is killed.
A worker (`ToSlots`, the last map before `mp_prefetch`) copies a batch's large arrays into a free
slot and yields small `SlotRef`s instead; the parent (`FromSlots`, the first map after it) turns
them into arrays viewing the slot, and frees the slot when the last of them is garbage-collected. Pages are faulted in once and then reused. If no
slot is free (e.g. elements dropped by a Grain `set_state`), the worker yields the batch unchanged
(Grain's own transfer), so it never waits and the bytes delivered are the same either way.
"""
from __future__ import annotations

import dataclasses
import math
import threading
import weakref
from multiprocessing import shared_memory
from typing import Any, Mapping, Sequence

import numpy as np

_ALIGN = 64
_worker_index: int | None = None  # set in each Grain worker by `set_worker_index`


def set_worker_index(index: int, count: int) -> None:  # Grain mp_prefetch worker_init_fn
  del count
  global _worker_index
  _worker_index = index


@dataclasses.dataclass(frozen=True)
class SlotRef:
  """A large array of a batch, left in slot `slot` of worker `worker`'s segment."""
  worker: int
  slot: int
  offset: int
  shape: tuple[int, ...]
  dtype: str


@dataclasses.dataclass(frozen=True)
class Layout:
  names: tuple[str, ...]         # one segment per worker
  slots: int
  slot_bytes: int
  keys: frozenset[str]           # batch entries moved through the slots

  def flags(self, buf) -> np.ndarray:
    return np.ndarray((self.slots,), np.uint8, buffer=buf)

  def slot_start(self, slot: int) -> int:
    return _ALIGN + slot * self.slot_bytes


def _round(n: int) -> int:
  return -(-n // _ALIGN) * _ALIGN


def create(worker_count: int, slots: int, spec: Mapping[str, tuple[Sequence[int], Any]]
           ) -> tuple[Layout, list[shared_memory.SharedMemory]]:
  """Segments for `worker_count` workers; `spec`: key -> (shape, dtype) of the large entries."""
  slot_bytes = sum(_round(math.prod(s) * np.dtype(d).itemsize) for s, d in spec.values())
  if slots > _ALIGN:
    raise ValueError(f"at most {_ALIGN} slots per worker, got {slots}")
  shms = []
  try:
    for _ in range(worker_count):
      shms.append(shared_memory.SharedMemory(create=True, size=_ALIGN + slots * slot_bytes))
  except BaseException:
    _unlink(shms)
    raise
  for shm in shms:
    shm.buf[:_ALIGN] = bytes(_ALIGN)
  layout = Layout(tuple(s.name for s in shms), slots, slot_bytes, frozenset(spec))
  return layout, shms


# Segments unlinked while arrays still view them: kept mapped (and their SharedMemory objects
# alive, whose __del__ would otherwise fail to close them) until the process exits.
_still_viewed: list[shared_memory.SharedMemory] = []


def _unlink(shms: list[shared_memory.SharedMemory]) -> None:
  for shm in shms:
    try:
      shm.close()
    except BufferError:  # arrays still view it (mmap refuses to close): they stay valid
      _still_viewed.append(shm)
    try:
      shm.unlink()
    except FileNotFoundError:
      pass
  shms.clear()


class ToSlots:
  """Worker side: batch -> batch with its large arrays replaced by SlotRefs (if a slot is free)."""

  def __init__(self, layout: Layout):
    self._layout = layout
    self._shm: shared_memory.SharedMemory | None = None
    self._next = 0

  def __getstate__(self):
    return {"_layout": self._layout, "_shm": None, "_next": 0}

  def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
    lay = self._layout
    if _worker_index is None:  # not in a worker process (e.g. the argument check): no-op
      return batch
    if self._shm is None:
      self._shm = shared_memory.SharedMemory(lay.names[_worker_index])
    flags = lay.flags(self._shm.buf)
    for i in range(lay.slots):
      slot = (self._next + i) % lay.slots
      if not flags[slot]:
        break
    else:
      return batch  # all slots in use: Grain's own transfer
    self._next = slot + 1
    offset = lay.slot_start(slot)
    out = dict(batch)
    for key in sorted(lay.keys & batch.keys()):
      a = np.ascontiguousarray(batch[key])
      if offset + a.nbytes > lay.slot_start(slot + 1):
        raise ValueError(f"{key}: {a.nbytes} bytes do not fit the shared-memory slot")
      np.copyto(np.ndarray(a.shape, a.dtype, buffer=self._shm.buf, offset=offset), a)
      out[key] = SlotRef(_worker_index, slot, offset, a.shape, a.dtype.str)
      offset += _round(a.nbytes)
    flags[slot] = 1
    del flags
    return out


class _Owner:
  """The parent's segments and the count of live arrays per slot; frees a slot at zero."""

  def __init__(self, layout: Layout, shms: list[shared_memory.SharedMemory]):
    self.layout, self.shms = layout, shms
    self.live: dict[tuple[int, int], int] = {}
    self.lock = threading.Lock()

  def release(self, key: tuple[int, int]) -> None:
    with self.lock:
      self.live[key] -= 1
      if self.live[key]:
        return
      del self.live[key]
      if self.shms:  # still open (after close the slots are never reused)
        self.layout.flags(self.shms[key[0]].buf)[key[1]] = 0


class FromSlots:
  """Parent side: SlotRefs -> arrays viewing the slot, which is freed for reuse once every array
  of the batch (and every view of one) is gone. Owns the segments: `close` (or garbage collection
  or interpreter exit) unlinks them; arrays still alive then stay valid (their mapping remains)."""

  def __init__(self, layout: Layout, shms: list[shared_memory.SharedMemory]):
    self._owner = _Owner(layout, shms)
    self._finalizer = weakref.finalize(self, _unlink, shms)

  def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
    owner = self._owner
    for key, ref in list(batch.items()):
      if isinstance(ref, SlotRef):
        dtype = np.dtype(ref.dtype)
        n = math.prod(ref.shape) * dtype.itemsize
        flat = np.frombuffer(owner.shms[ref.worker].buf[ref.offset:ref.offset + n], dtype)
        # Every view of the array, however derived, holds numpy's memoryview `root` (and that
        # holds the mapping open): the slot is reused only once `root` is gone.
        root = flat.base
        assert isinstance(root, memoryview), type(root)
        slot = (ref.worker, ref.slot)
        with owner.lock:
          owner.live[slot] = owner.live.get(slot, 0) + 1
        weakref.finalize(root, owner.release, slot).atexit = False
        batch[key] = flat.reshape(ref.shape)
        del flat, root
    return batch

  def close(self) -> None:
    self._finalizer()
