"""Asks of several requests sent in one trip (`auth/batching.py`): with threads, with greenlets
stopped on their way, and the `ADMIT` script counting a trip's asks each on its own."""

from __future__ import annotations

import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import gevent
import gevent.event
import gevent.lock
import pytest
from limits import parse
from limits.errors import StorageError
from limits.storage import storage_from_string

from auth import counting
from auth.batching import Batcher, TripFailed
from tests.live import redis_server

WAIT = 30  # seconds before a test that should never wait this long fails instead of hanging


class Trips:
    """A sender whose trips are held until the test lets each go: records what each carried
    and says when one has started."""

    def __init__(self, gate=threading.Event, fail_on: int | None = None) -> None:
        self.carried: list[list[str]] = []
        self.gates: list = []
        self.started = threading.Semaphore(0)
        self._gate = gate
        self._fail_on = fail_on

    def send(self, asks: list[str]) -> list[str]:
        gate = self._gate()
        self.gates.append(gate)
        self.carried.append(asks)
        self.started.release()
        assert gate.wait(WAIT)
        if len(self.carried) == self._fail_on:
            raise ConnectionError("the server went away")
        return [f"answer to {ask}" for ask in asks]

    def let_go(self, trip: int) -> None:
        """Wait for trip number `trip` (from 1) to start, and let it go."""
        assert self.started.acquire(timeout=WAIT)
        assert len(self.gates) == trip
        self.gates[trip - 1].set()


class CountedEvent(threading.Event):
    """An event that says when somebody starts waiting on it."""

    waiting = threading.Semaphore(0)

    def wait(self, timeout=None):
        CountedEvent.waiting.release()
        return super().wait(timeout)


def waiters(count: int) -> None:
    for _ in range(count):
        assert CountedEvent.waiting.acquire(timeout=WAIT)


def test_asks_that_come_while_a_trip_is_out_go_together_in_the_next_and_get_their_own_answers():
    trips = Trips()
    batcher = Batcher(trips.send, event=CountedEvent)
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(batcher.ask, "a")  # nothing out: it goes at once, on its own
        assert trips.started.acquire(timeout=WAIT)
        second, third = pool.submit(batcher.ask, "b"), pool.submit(batcher.ask, "c")
        waiters(2)
        trips.gates[0].set()
        assert first.result(WAIT) == "answer to a"
        trips.let_go(2)
        assert (second.result(WAIT), third.result(WAIT)) == ("answer to b", "answer to c")
    assert trips.carried == [["a"], ["b", "c"]]
    assert Batcher(lambda asks: [len(asks)] * len(asks)).ask("d") == 1  # alone: one a trip


def test_a_trips_error_is_every_one_of_its_asks_and_the_next_trip_goes_on():
    trips = Trips(fail_on=2)
    batcher = Batcher(trips.send, event=CountedEvent)
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(batcher.ask, "a")
        assert trips.started.acquire(timeout=WAIT)
        rest = [pool.submit(batcher.ask, ask) for ask in "bc"]
        waiters(2)
        trips.gates[0].set()
        assert first.result(WAIT) == "answer to a"
        trips.let_go(2)
        errors = [future.exception(WAIT) for future in rest]
        assert all(isinstance(e, TripFailed) for e in errors)
        assert errors[0] is not errors[1]  # one each: no request adds its frames to another's
        assert errors[0].__cause__ is errors[1].__cause__
        assert isinstance(errors[0].__cause__, ConnectionError)
        after = pool.submit(batcher.ask, "d")
        trips.let_go(3)
        assert after.result(WAIT) == "answer to d"
    assert trips.carried == [["a"], ["b", "c"], ["d"]]


def _greenlet_batcher(trips: Trips, **options) -> Batcher:
    return Batcher(trips.send, lock=gevent.lock.Semaphore, event=gevent.event.Event, **options)


def test_a_sender_that_gathers_lets_the_requests_it_overlaps_join_its_trip():
    """The server's workers: before a trip goes, the requests that can run reach their asks
    (here trips are answered at once, so without gathering each ask goes on its own)."""

    def answered_at_once() -> gevent.event.Event:
        gate = gevent.event.Event()
        gate.set()
        return gate

    for gather, carried in ((None, [["a"], ["b"], ["c"]]), (gevent.idle, [["a", "b", "c"]])):
        trips = Trips(gate=answered_at_once)
        batcher = _greenlet_batcher(trips, gather=gather)
        requests = [gevent.spawn(batcher.ask, ask) for ask in "abc"]
        assert [r.get(timeout=WAIT) for r in requests] == [f"answer to {a}" for a in "abc"]
        assert trips.carried == carried


def test_a_sender_stopped_while_it_gathers_takes_its_ask_back_and_others_go_on():
    """The first sender, and one handed the next trip, each stopped in `gather`."""
    trips = Trips(gate=gevent.event.Event)
    gathering, held = gevent.event.Event(), [True]

    def gather() -> None:
        gathering.set()
        if held[0]:
            gevent.sleep(WAIT)  # stopped long before

    batcher = _greenlet_batcher(trips, gather=gather)
    first = gevent.spawn(batcher.ask, "a")
    assert gathering.wait(WAIT)
    first.kill()
    gathering.clear()
    second = gevent.spawn(batcher.ask, "b")  # nothing out: it sends, and gathers
    assert gathering.wait(WAIT)
    third, fourth = gevent.spawn(batcher.ask, "c"), gevent.spawn(batcher.ask, "d")
    gevent.sleep(0)  # both wait for second's trip
    second.kill()  # third is handed the trip and gathers in turn
    gathering.clear()
    assert gathering.wait(WAIT)
    third.kill()
    gathering.clear()
    assert gathering.wait(WAIT)  # and fourth
    fourth.kill()
    held[0] = False
    fifth = gevent.spawn(batcher.ask, "e")
    gevent.sleep(0)
    trips.gates[0].set()
    assert fifth.get(timeout=WAIT) == "answer to e"
    assert trips.carried == [["e"]]


def test_a_gather_that_fails_does_not_hold_the_trip_back():
    trips = Trips()

    def gather() -> None:
        raise RuntimeError("no loop here")

    batcher = Batcher(trips.send, gather=gather)
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(batcher.ask, "a")
        trips.let_go(1)
        assert answer.result(WAIT) == "answer to a"


def test_a_request_stopped_while_its_ask_waits_takes_it_back_and_passes_its_trip_on():
    trips = Trips(gate=gevent.event.Event)
    batcher = _greenlet_batcher(trips)
    first = gevent.spawn(batcher.ask, "a")
    gevent.sleep(0)  # first sends, and its trip is held
    second, third = gevent.spawn(batcher.ask, "b"), gevent.spawn(batcher.ask, "c")
    gevent.sleep(0)  # both wait; the next trip is second's to send
    second.kill()
    trips.gates[0].set()
    assert first.get(timeout=WAIT) == "answer to a"
    gevent.sleep(0)
    trips.gates[1].set()
    assert third.get(timeout=WAIT) == "answer to c"
    assert trips.carried == [["a"], ["c"]]


def test_the_others_of_a_trip_whose_sender_was_stopped_get_trip_lost_and_asks_go_on():
    trips = Trips(gate=gevent.event.Event)
    batcher = _greenlet_batcher(trips)
    first = gevent.spawn(batcher.ask, "a")
    gevent.sleep(0)
    second, third = gevent.spawn(batcher.ask, "b"), gevent.spawn(batcher.ask, "c")
    gevent.sleep(0)
    trips.gates[0].set()
    assert first.get(timeout=WAIT) == "answer to a"
    gevent.sleep(0)  # second sends b and c; its trip is held
    assert trips.carried == [["a"], ["b", "c"]]
    second.kill()
    with pytest.raises(TripFailed, match="sender was stopped"):
        third.get(timeout=WAIT)
    fourth = gevent.spawn(batcher.ask, "d")
    gevent.sleep(0)
    trips.gates[2].set()
    assert fourth.get(timeout=WAIT) == "answer to d"


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed")
def test_admit_counts_each_ask_of_a_shared_trip_on_its_own(monkeypatch):
    """Twelve requests at once against a budget of five, their asks sharing trips as they
    overlap: five are let in, with the remaining counts one of each from four down to none."""
    with redis_server() as uri:
        storage = storage_from_string(uri, key_prefix="batching", wrap_exceptions=True)
        trips = []
        send = counting._Line.send
        monkeypatch.setattr(
            counting._Line, "send", lambda line, asks: trips.append(len(asks)) or send(line, asks)
        )
        item, start = parse("5/minute"), threading.Barrier(12)

        def admit(_: int) -> counting.Verdict:
            start.wait(WAIT)
            return counting.admit_on_redis(storage, [(item, ("user", "u1"))])

        with ThreadPoolExecutor(12) as pool:
            verdicts = list(pool.map(admit, range(12)))
    admitted = [v for v in verdicts if v.verdict == counting.ADMITTED]
    assert sorted(v.windows[0].remaining for v in admitted) == [0, 1, 2, 3, 4]
    assert [v.verdict for v in verdicts].count(counting.WINDOW_FULL) == 7
    assert sum(trips) == 12


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed")
def test_a_trip_after_the_server_closed_an_idle_connection_opens_it_again():
    """The kept connection of the trips, closed by the server between them (CLIENT KILL here;
    a restart or an idle timeout alike): the next trip after an idle spell opens it again
    instead of failing."""
    with redis_server() as uri:
        storage = storage_from_string(uri, key_prefix="batching", wrap_exceptions=True)
        item = parse("5/minute")
        ask = ("admit", counting._window_keys(storage, item, item.key_for("user", "u1")))
        window = [1, 0, 0, item.amount, item.get_expiry()]
        clock = [0.0]
        line = counting._Line(storage, clock=lambda: clock[0])
        assert int(line.send([(*ask, window)])[0][0]) == counting.ADMITTED
        storage.get_connection().client_kill_filter(_type="normal", skipme=True)
        clock[0] += counting._Line.IDLE_SECONDS * 2
        try:
            assert int(line.send([(*ask, window)])[0][0]) == counting.ADMITTED
        finally:
            line.close()


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed")
def test_an_ask_that_fails_in_redis_fails_alone_and_the_others_of_its_trip_stand():
    with redis_server() as uri:
        storage = storage_from_string(uri, key_prefix="batching", wrap_exceptions=True)
        item = parse("5/minute")
        good = counting._window_keys(storage, item, item.key_for("user", "u1"))
        bad = counting._window_keys(storage, item, item.key_for("user", "u2"))
        storage.get_connection().hset(bad[1], "not", "a counter")  # WRONGTYPE for the script
        window = [1, 0, 0, item.amount, item.get_expiry()]
        asks = [("admit", good, window), ("admit", bad, window), ("admit", good, window)]
        answers = counting._Line(storage).send(asks)
        assert [int(a[0]) for a in answers] == [counting.ADMITTED, -1, counting.ADMITTED]
        assert b"WRONGTYPE" in answers[1][1]
        assert int(storage.get_connection().get(good[1])) == 2  # both good asks counted
        with pytest.raises(StorageError, match="WRONGTYPE"):
            counting.admit_on_redis(storage, [(item, ("user", "u2"))])
