"""The asks of several requests of one process, sent to a server in one trip.

Every prediction asks Redis one thing (the `ADMIT` script: `counting.py`), and a trip costs
both sides more than the ask it carries: a system call each way, the client library's dispatch,
the server's read, write and event loop. `Batcher` sends asks together, as ioredis's
auto-pipelining does: the first ask goes at once; asks that come while a trip is out wait for
it to come back and then go together in the next one, sent by the first of them. Before a
trip goes, its sender may let the process's other requests run up to their own asks (`gather`:
under gevent, until the worker's event loop is idle, for at most a few milliseconds), so that
requests which overlap share a trip instead of each waiting for the last one. A process with one
request at a time sends each ask on its own, at once, as without it.
Each ask gets its own answer back, or the error its trip ended in; how a trip's asks are put
together and answered is the sender's (`send`).

It works between threads and, where gevent patched `threading` (the server's workers), between
greenlets. A request stopped while its ask waits or while it gathers takes its ask back,
passing on the trip it was to send. Every ask of a trip that failed gets a `TripFailed` of its
own, caused by the trip's error (none when its sender was stopped on the way), so that no two
requests raise, and add their frames to, one exception.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

A = TypeVar("A")
R = TypeVar("R")


class TripFailed(Exception):
    """The trip that carried an ask failed (its `__cause__` says how) or ended without an
    answer, its sender stopped on the way: the ask may or may not have been carried out."""


_LOST = Exception("lost")  # the error of an ask whose trip's sender was stopped on the way


class _Ask(Generic[A, R]):
    __slots__ = ("item", "answer", "error", "answered", "sends", "woken")

    def __init__(self, item: A, woken: Any) -> None:
        self.item = item
        self.answer: R | None = None
        self.error: BaseException | None = None
        self.answered = False
        self.sends = woken is None  # the next trip is this ask's to send
        self.woken = woken  # set when answered, or handed the next trip


class Batcher(Generic[A, R]):
    """Asks (A) answered (R) by `send(asks) -> answers`, one answer an ask, in order; what it
    raises is every ask's answer. At most `MOST` asks a trip. `gather()`, if given, is called
    by a trip's sender before it takes the asks waiting. `lock` and `event` make the primitives
    it waits with (threading's, patched by gevent where it runs)."""

    MOST = 64

    def __init__(
        self,
        send: Callable[[list[A]], list[R]],
        *,
        gather: Callable[[], None] | None = None,
        lock: Callable[[], Any] | None = None,
        event: Callable[[], Any] | None = None,
    ) -> None:
        self._send = send
        self._gather = gather
        self._lock = (lock or threading.Lock)()  # looked up now: gevent may have patched it
        self._event = event or threading.Event
        self._waiting: list[_Ask[A, R]] = []
        self._out = False  # a trip is out (or about to go): newcomers wait for it

    def ask(self, item: A) -> R:
        with self._lock:
            ask: _Ask[A, R] = _Ask(item, self._event() if self._out else None)
            self._waiting.append(ask)
            self._out = True
        if ask.woken is not None:
            try:
                ask.woken.wait()
            except BaseException:
                self._take_back(ask)
                raise
        if not ask.answered:  # the first, or handed the next trip
            self._trip(ask)
        if ask.error is _LOST:
            raise TripFailed("the trip ended without an answer: its sender was stopped")
        if ask.error is not None:
            raise TripFailed(str(ask.error)) from ask.error
        return ask.answer  # type: ignore[return-value]

    def _trip(self, sender: _Ask[A, R]) -> None:
        if self._gather is not None:
            try:
                self._gather()
            except Exception:
                pass  # gathering only lets others join: the trip goes anyway
            except BaseException:
                self._take_back(sender)
                raise
        with self._lock:
            batch, self._waiting = self._waiting[: self.MOST], self._waiting[self.MOST :]
        try:
            for ask, answer in zip(batch, self._send([ask.item for ask in batch]), strict=True):
                ask.answer, ask.answered = answer, True
        except Exception as exc:
            for ask in batch:
                ask.error, ask.answered = exc, True
        finally:
            for ask in batch:
                if not ask.answered:  # the sender was stopped on its way
                    ask.error, ask.answered = _LOST, True
            with self._lock:
                self._hand_on()
            for ask in batch:
                if ask.woken is not None:
                    ask.woken.set()

    def _hand_on(self) -> None:
        """(Under the lock.) The first of the asks waiting sends the next trip."""
        if self._waiting:
            head = self._waiting[0]
            head.sends = True
            head.woken.set()
        else:
            self._out = False

    def _take_back(self, ask: _Ask[A, R]) -> None:
        """A request stopped while its ask waited, or while it gathered before sending: the ask
        leaves the next trip, and that trip is passed on if it was this one's to send."""
        with self._lock:
            if ask in self._waiting:
                self._waiting.remove(ask)
                if ask.sends:
                    self._hand_on()
