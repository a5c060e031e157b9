"""Owning a C pointer: who may use it, and when it is freed."""
from __future__ import annotations

import threading
import weakref
from typing import Any, Callable, Optional

__all__ = ["Handle", "finalizer"]


class Handle:
    """Owns one C pointer (a bdh_model*, bdh_state*, ...) and frees it once.

    ``with handle.use() as ptr:`` is for a call that changes the object or
    may run long: one such call at a time (a second, from another thread,
    raises RuntimeError rather than corrupt it). The lock is not held during
    the call, so :meth:`close` from another thread does not wait: it defers
    the free to the end of the call.

    ``with handle.peek() as ptr:`` is for a quick call that only reads
    (position, counts) or that C allows concurrently (a model is read-only):
    it holds the lock, so the object cannot be freed under it, and it works
    while a ``use()`` call is in flight.

    Both raise ValueError once the handle is closed.
    """

    __slots__ = ("what", "_ptr", "_mu", "_busy", "_closed", "_free", "_use", "_peek", "__weakref__")

    def __init__(self, ptr: int, free: Callable[[int], None], what: str) -> None:
        self.what = what
        self._ptr: Optional[int] = ptr
        self._mu = threading.Lock()
        self._busy = False
        self._closed = False
        self._free = free
        # Stateless context managers, made once (step() is a hot path).
        self._use = _Use(self)
        self._peek = _Peek(self)

    @property
    def closed(self) -> bool:
        return self._closed

    def use(self) -> "_Use":
        return self._use

    def peek(self) -> "_Peek":
        return self._peek

    def acquire(self) -> int:
        """Mark the object in use and return the pointer (what use() does on
        entry); for a use that spans several calls, ended by release()."""
        with self._mu:
            if self._closed:
                raise ValueError(f"the {self.what} is closed")
            if self._busy:
                raise RuntimeError(
                    f"the {self.what} is in use by another call (another thread, or a generation "
                    f"that holds it: finish or close that generation first)"
                )
            self._busy = True
            return self._ptr  # type: ignore[return-value]

    def release(self) -> None:
        with self._mu:
            self._busy = False
            ptr = self._take_if_done()
        self._free_now(ptr)

    def close(self) -> None:
        """Free the pointer now, or when the call in flight ends. Idempotent."""
        with self._mu:
            self._closed = True
            ptr = self._take_if_done()
        self._free_now(ptr)

    def _take_if_done(self) -> Optional[int]:
        if self._closed and not self._busy and self._ptr is not None:
            ptr, self._ptr = self._ptr, None
            return ptr
        return None

    def _free_now(self, ptr: Optional[int]) -> None:
        if ptr is not None:
            self._free(ptr)


class _Use:
    __slots__ = ("_h",)

    def __init__(self, h: Handle) -> None:
        self._h = h

    def __enter__(self) -> int:
        return self._h.acquire()

    def __exit__(self, *exc: Any) -> None:
        self._h.release()


class _Peek:
    __slots__ = ("_h",)

    def __init__(self, h: Handle) -> None:
        self._h = h

    def __enter__(self) -> int:
        h = self._h
        h._mu.acquire()
        if h._ptr is None or h._closed:
            h._mu.release()
            raise ValueError(f"the {h.what} is closed")
        return h._ptr

    def __exit__(self, *exc: Any) -> None:
        self._h._mu.release()


def finalizer(obj: object, fn: Callable[[], None]) -> "weakref.finalize[Any, Any]":
    """Call fn when obj is collected (or when the finalizer is called)."""
    f = weakref.finalize(obj, fn)
    f.atexit = False  # at exit the OS frees it; never race a late thread
    return f
