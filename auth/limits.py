"""Rate limits and login protection, on flask-limiter.

flask-limiter is the rate-limit extension of every app that uses `Auth`: it owns the storage
(memory:// per process, or Redis to hold across workers and hosts), the strategy, what happens
when the storage is down (`rate_limits.on_storage_error`), the `/auth/login` limit (a decorated
limit keyed by client address) and any limit the application declares on its own routes with
`state.limiter.limit(...)`. Four guards count in its storage:

- a per-user budget on every route, keyed by user id (so one user's tokens and keys draw from one
  budget), sized by the user's own `rate_limit`, else `rate_limits.roles.<role>`, else
  `auth.rate_limit_per_minute`; requests without a user (simple mode, public routes) are keyed by
  client address; a key with a `rate_limit` of its own is counted in that too, beside its user's;
- `/auth/login` per client address (`rate_limits.login`);
- failed password checks per account (`rate_limits.login_failures`), counted whether or not the
  account exists, checked before any password work, with addresses the account logged in from
  before counted apart so that nobody else can lock the owner out (`password_failure_key`);
- invalid tokens and API keys per client address (`rate_limits.invalid_credentials`).

The budget is counted by the extension's one `before_request` hook, after authentication (the
user is known), through the strategy flask-limiter built (`Limiter.limiter`): the hit and the
window of its headers in one call to the storage (`counting.py`), the limit strings of users and
roles parsed once. A route that runs predictions (`@counted_at_admission`) has its budget
counted where it admits one, with its quotas and concurrency (`admission.py`). Its
`X-RateLimit-Limit/Remaining/Reset` headers go on the answer unless a limit
of flask-limiter's own was checked (the more specific limit: its headers instead); a 429 also
carries `Retry-After`.

`PasswordGate` bounds how many bcrypt computations run at once across every worker process
(file-lock slots): a login flood then costs at most that many cores, and logins beyond it get an
immediate 429. Every failed login (429s included) is answered no sooner than
`auth.failed_login_delay_seconds` after it arrived (`hold_failed_login`): under the server's gevent
workers a held answer costs a sleeping greenlet, so a flood of 50 connections sending logins back
to back sends at most 50 a second instead of spinning the CPU that predictions need.

Client addresses come from the socket unless the peer is a configured trusted proxy, in which case
the right-most X-Forwarded-For entry that is not itself a trusted proxy is used: a client can put
anything in that header, but it cannot forge what our own proxy appended.
"""

from __future__ import annotations

import _thread
import logging
import time
import weakref
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from ipaddress import ip_address, ip_network
from typing import Any, TypeVar

import flask_limiter
from flask import Flask, current_app, g, request
from flask.globals import request_ctx
from flask_limiter import RateLimitExceeded
from flask_limiter._extension import LimiterContext
from limits import RateLimitItem, WindowStats, parse, parse_many
from limits.errors import StorageError
from limits.storage import MemoryStorage

from .background import run_every
from .config import REDIS_LIMIT_URIS, RateLimitSettings, limit_storage
from .counting import hit_and_window
from .errors import ApiError, Code, StorageBusy, render_error
from .forks import this_pid
from .offload import ThreadOffload, idle_priority
from .slots import Slots
from .users import fold_name

log = logging.getLogger(__name__)
T = TypeVar("T")

PREFIX = "inference-server"
REDIS_TIMEOUT_SECONDS = 5.0  # the most a limit storage call on Redis may take


class RateLimited(ApiError):
    """429: a budget is spent (its headers say which and until when)."""

    code, error_code = 429, Code.RATE_LIMIT_EXCEEDED


# -- client addresses --------------------------------------------------------------------------


@lru_cache(maxsize=16)
def _networks(proxies: tuple[str, ...]):
    return tuple(ip_network(p, strict=False) for p in proxies)


def _is_trusted(address: str, proxies: tuple[str, ...]) -> bool:
    try:
        ip = ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in _networks(proxies))


def resolve_client_address(
    remote: str | None, forwarded: str | None, proxies: Sequence[str]
) -> str:
    """The client's address: the socket peer, or what trusted proxies say they received from."""
    address = remote or "unknown"
    proxies = tuple(proxies)
    if not proxies or not _is_trusted(address, proxies) or not forwarded:
        return address
    for hop in reversed([h.strip() for h in forwarded.split(",") if h.strip()]):
        if not _is_trusted(hop, proxies):
            return hop
        address = hop
    return address


def client_address() -> str:
    return client_address_of(request.environ, current_app.extensions["auth"].trusted_proxies)


def client_address_of(environ: dict[str, Any], proxies: Sequence[str]) -> str:
    """The client address of the request with WSGI `environ`, behind `proxies`."""
    remote = environ.get("REMOTE_ADDR")
    if not proxies:
        return remote or "unknown"
    return resolve_client_address(remote, environ.get("HTTP_X_FORWARDED_FOR"), proxies)


# -- the limiter -----------------------------------------------------------------------------


class LimiterConfigError(Exception):
    """The rate limit storage cannot be used as configured."""


class _StorageDown(logging.Filter):
    """Says once a minute, not once a request, that requests are served without limits
    (`rate_limits.on_storage_error: open`). As a filter on flask-limiter's logger it stands in
    for the extension's own report of each swallowed storage error, a traceback per request."""

    EVERY_SECONDS = 60.0

    def __init__(self) -> None:
        super().__init__()
        self._said_at = -self.EVERY_SECONDS

    def say(self, consequence: str = "serving without limits") -> None:
        now = time.monotonic()
        if now - self._said_at >= self.EVERY_SECONDS:
            self._said_at = now
            log.warning("rate limit storage unreachable; %s", consequence)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], StorageError):
            self.say()
            return False
        return True


_storage_down = _StorageDown()
logging.getLogger("flask-limiter").addFilter(_storage_down)


class PacedMemoryStorage(MemoryStorage):
    """limits' memory storage (`memory://`) without a timer thread restarted every 10 ms.

    limits' MemoryStorage drops expired counters on a `threading.Timer` that it starts anew
    whenever the last one has run, and checks (`is_alive`) on every hit. Under gevent, where a
    thread is a greenlet, that cost 40 us of every request (py-spy, gunicorn, the demo model).
    Here the timer is left for good and one background job per process drops the expired
    entries of every such storage once a second: the storage's own reads ignore what has
    expired either way, so only memory waits a little longer to be freed. flask-limiter is
    given it for `memory://`.
    """

    STORAGE_SCHEME = ["paced-memory"]
    EXPIRE_EVERY_SECONDS = 1.0
    _live: weakref.WeakSet[PacedMemoryStorage] = weakref.WeakSet()

    def __init__(self, uri: str | None = None, wrap_exceptions: bool = False, **_: str):
        super().__init__(uri, wrap_exceptions=wrap_exceptions)
        self.timer.cancel()
        self.timer = _ExpiryJob()  # type: ignore[assignment]
        # Under gevent `threading.RLock` is the pure-Python one (1.4 us a take and give, against
        # 0.18 us for the C lock, which gevent leaves alone). Nothing yields inside the
        # storage's locks, so the C lock, held by the OS thread, keeps out what needs keeping
        # out: other OS threads.
        self.locks = defaultdict(_thread.RLock)
        type(self)._live.add(self)

    @classmethod
    def expire_all(cls) -> None:
        for storage in list(cls._live):
            storage._MemoryStorage__expire_events()  # type: ignore[attr-defined]


class _ExpiryJob:
    """Stands in for the storage's timer, which the storage asks on every hit whether it is
    still running: the one expiry job of this process is, started at the first ask in each
    process (so a storage made before a fork is expired in every child too)."""

    _running_in: int | None = None

    def is_alive(self) -> bool:
        if _ExpiryJob._running_in != this_pid():
            _ExpiryJob._running_in = this_pid()
            run_every(
                PacedMemoryStorage.EXPIRE_EVERY_SECONDS,
                PacedMemoryStorage.expire_all,
                name="limits-expiry",
            )
        return True

    def cancel(self) -> None:
        pass


_IDLE = LimiterContext()  # written only by a check, which makes the request's own first


class Limiter(flask_limiter.Limiter):
    """flask-limiter's extension, its per-request steps run by the auth extension's hooks.

    flask-limiter registers three hooks of its own: a check before the view, conditional
    deductions and header injection after it, and a reset of its per-request context at
    teardown, each looking that context up on every request, even where no limit of its own
    applies (a third of a bare Flask request). Here `init_app` leaves those hooks out (the
    extension sets up an app without them when it is already listed in
    `app.extensions["limiter"]`), and the auth pipeline calls `before_view` and `after_view` in
    its one pair of hooks. The check before the view runs only where the application declared
    an application, default, blueprint or meta limit (it has nothing to count otherwise); a
    view decorated with `limiter.limit(...)` is checked by its decorator, as always. The
    context lives on the request context, so nothing needs resetting after it.
    """

    def init_app(self, app: Flask) -> None:
        app.extensions.setdefault("limiter", set()).add(self)  # see the class docstring
        super().init_app(app)

    def before_view(self, endpoint: str) -> None:
        if self._limits_before_views(endpoint):
            self._check_request_limit(in_middleware=True)

    def after_view(self, response: Any) -> dict[str, str] | None:
        """Its conditional deductions (`deduct_when`), then the X-RateLimit-* headers of the
        most relevant limit of its own this request was checked against (None: none was).
        The view has run: a storage that fails now costs the headers, never the answer."""
        if getattr(request_ctx, "_limiter_request_context", None) is None:
            return None
        try:
            self._Limiter__check_conditional_deductions(response)  # type: ignore[attr-defined]
            return self.checked_headers()
        except StorageError:
            _storage_down.say("its limit headers are left out of answers")
            return None

    def _check_request_limit(
        self, callable_name: str | None = None, in_middleware: bool = True
    ) -> None:
        flask_limiter.Limiter.context.fget(self)  # the request's own context, kept for it
        super()._check_request_limit(callable_name, in_middleware)

    def _limits_before_views(self, endpoint: str) -> bool:
        manager = self.limit_manager
        return bool(
            manager._application_limits
            or manager._default_limits
            or manager._blueprint_limits
            or self._meta_limits
            or manager.has_hints(endpoint)
        )

    @property
    def context(self) -> LimiterContext:
        if getattr(request_ctx, "_limiter_request_context", None) is None:
            return _IDLE  # nothing was checked on this request: nothing to read or reset
        return flask_limiter.Limiter.context.fget(self)

    def checked_headers(self, *, retry: bool = False) -> dict[str, str] | None:
        """The X-RateLimit-* headers of the limit of its own this request was checked against
        (flask-limiter's own header injection is off: it would write a second set beside the
        budget's, and a Retry-After on every answer)."""
        checked = self.current_limit
        if checked is None:
            return None
        reset, remaining = checked.window
        return _limit_headers(checked.limit, remaining, reset, retry=retry)


@lru_cache(maxsize=256)
def _items(limit: str) -> tuple[RateLimitItem, ...]:
    return tuple(parse_many(limit))


def budget_key(principal: Any = None, address: str | None = None) -> str:
    """Whose budget a request counts in: its user's (`principal`, default the request's),
    else its client address's. Also the key of the limits an application declares with
    `limiter.limit(...)`, which calls it with no arguments."""
    if principal is None and address is None:
        principal = g.get("principal")
    if principal is not None:
        return f"user:{principal.id}"
    return f"addr:{address or client_address()}"


WHOSE = {"user": "", "key": "this key's "}  # how a 429's message names the budget spent


class RequestBudget:
    """The per-user budget (and a key's own, where it has one), counted on every request by the
    extension's before hook."""

    def __init__(self, limiter: Limiter, state: Any) -> None:
        self.limiter = limiter
        self._state = state
        self.fail_open = state.rate_limits.on_storage_error == "open"

    def windows(self, principal: Any, address: str | None) -> list[Window]:
        """What a request of `principal` (None: of client `address`) counts in: its key's own
        budget first, where it has one, then its user's, each limit item a window."""
        if principal is None:
            return list(_windows("user", self._state.default_limit, budget_key(None, address)))
        user = _windows("user", self._state.rate_limit_of(principal.user), budget_key(principal))
        key = principal.key
        if key is not None and key.get("rate_limit"):
            return [*_windows("key", key["rate_limit"], f"key:{key['id']}"), *user]
        return list(user)

    def count(self, principal: Any, address: str | None) -> dict[str, str]:
        """Count one request of `principal` (None: of client `address`) in its user's budget
        and its key's, and return the X-RateLimit-* headers of the one with less left; 429
        (naming which) once either is spent."""
        windows, stats, strategy = self.windows(principal, address), [], self.limiter.limiter
        try:
            for window in windows:
                counted, stat = hit_and_window(
                    strategy, window.item, *window.identifiers, key=window.storage_key
                )
                if not counted:
                    raise window.refused(stat)
                stats.append(stat)
        except StorageError:
            if not self.fail_open:
                raise
            storage_down()
            return {}
        return least_left(windows, stats)


@lru_cache(maxsize=16384)
def _windows(whose: str, limit: str, budget: str) -> tuple[Window, ...]:
    """The windows of one budget (`whose`, its limit as configured, the budget key), made once
    and kept for its next request: parsing the limit and naming the counters cost more than
    counting in memory."""
    identifiers = (PREFIX, "user", budget)
    return tuple(
        Window(whose, limit, item, identifiers, item.key_for(*identifiers))
        for item in _items(limit)
    )


@dataclass(frozen=True, slots=True)
class Window:
    """One limit of a budget, as counted: whose budget (`user` or `key`), its limit as
    configured, the parsed item, the identifiers it is counted under and the storage key
    flask-limiter's strategy names them by."""

    whose: str
    limit: str
    item: RateLimitItem
    identifiers: tuple[str, ...]
    storage_key: str

    def refused(self, stats: WindowStats) -> RateLimited:
        return RateLimited(
            f"{WHOSE[self.whose]}rate limit of {self.limit} exceeded; see Retry-After",
            headers=_limit_headers(self.item, 0, stats.reset_time, retry=True),
            details={"limit": self.whose, "rate_limit": self.limit},
        )


def least_left(windows: list[Window], stats: list[WindowStats]) -> dict[str, str]:
    """The X-RateLimit-* headers of the window with the least left."""
    window, stat = min(zip(windows, stats, strict=True), key=lambda pair: pair[1].remaining)
    return _limit_headers(window.item, stat.remaining, stat.reset_time)


def storage_down() -> None:
    """The limit storage failed and `on_storage_error: open` lets the request through."""
    _storage_down.say()


def _limit_headers(
    item: RateLimitItem, remaining: int, reset: float, *, retry: bool = False
) -> dict[str, str]:
    headers = {
        "X-RateLimit-Limit": str(item.amount),
        "X-RateLimit-Remaining": str(remaining),
        "X-RateLimit-Reset": str(int(reset)),
    }
    if retry:
        headers["Retry-After"] = str(max(1, int(reset - time.time())))
    return headers


def build_limiter(limits: RateLimitSettings) -> Limiter:
    """flask-limiter over the configured storage and strategy, not yet serving an app."""
    try:
        limit_storage(limits.storage_uri)  # the check `config check` runs, for any caller
    except ValueError as exc:
        raise LimiterConfigError(f"rate_limits.storage_uri: expected {exc}") from None
    uri = limits.storage_uri
    options: dict[str, Any] = {"key_prefix": PREFIX, "wrap_exceptions": True}
    if uri.startswith(REDIS_LIMIT_URIS):
        # A Redis that stops answering costs a request this long, then StorageError, never
        # forever: a worker's requests share their trips to it (`batching.py`, over a
        # connection of their own made at the first trip: `counting._Line`).
        options |= {"socket_timeout": REDIS_TIMEOUT_SECONDS, "socket_connect_timeout": 2.0}
    return Limiter(
        budget_key,
        storage_uri="paced-memory://" if uri == "memory://" else uri,
        storage_options=options,
        strategy=limits.strategy,
        headers_enabled=False,  # written by the extension's after hook (`checked_headers`)
        swallow_errors=limits.on_storage_error == "open",
        key_prefix=PREFIX,
    )


def init_limiter(app: Flask, limiter: Limiter) -> None:
    """Serve `limiter` from `app`. Call it after the extension's own hooks are registered, so
    that its answer headers are written first and the budget's are added only where it wrote
    none."""
    limiter.init_app(app)
    if not limiter.enabled:
        raise LimiterConfigError(
            "RATELIMIT_ENABLED is false in the app's config, but the per-user budget and the "
            "login limits count in flask-limiter's storage: leave it on and set the limits in "
            "auth.rate_limit_per_minute and rate_limits instead"
        )
    app.register_error_handler(StorageError, _storage_unreachable)
    app.register_error_handler(RateLimitExceeded, _limit_exceeded)


def _limit_exceeded(exc: RateLimitExceeded):
    """A limit of flask-limiter's own (the login limit, an application's decorated limit):
    the same 429, with the same headers, as the budget's; or the answer its `on_breach` made."""
    if exc.response is not None:
        return exc.response
    message = exc.description if exc.limit.error_message else f"rate limit of {exc.description}"
    try:
        headers = current_app.extensions["auth"].limiter.checked_headers(retry=True) or {}
    except StorageError:
        headers = {}
    return render_error(RateLimited(f"{message} exceeded; see Retry-After", headers=headers))


def _storage_unreachable(exc: StorageError):
    log.error(
        "rate limit storage unreachable (%s); refusing requests",
        type(exc.__cause__ or exc).__name__,
    )
    return render_error(
        StorageBusy(
            "the rate limit store is unreachable; try again shortly", headers={"Retry-After": "5"}
        )
    )


# -- failed logins are answered late ------------------------------------------------------------


def hold_failed_login(state: Any, arrived: float, status: int) -> None:
    """Answer a failed password check no sooner than the configured delay after it came."""
    if status == 200:
        return
    delay = state.settings.failed_login_delay_seconds
    remaining = min(delay, arrived + delay - state.clock())
    if remaining > 0:
        state.sleep(remaining)


# -- budgets of failures --------------------------------------------------------------------


class FailureBudget:
    """A rate limit spent only by failures: `check` before the work, `spend` when it failed.

    Used for failed password checks per account and for invalid credentials per address. The
    counters live in the rate limit storage, so with Redis they hold across workers and hosts.
    """

    def __init__(
        self, limiter: Limiter, budget: str, *, namespace: str, message: str, fail_open: bool
    ) -> None:
        self._limiter = limiter
        self._item = parse(budget)
        self._namespace = namespace
        self._message = message
        self._fail_open = fail_open

    @property
    def window_seconds(self) -> int:
        return self._item.get_expiry()

    def check(self, *key: str) -> None:
        """Raise 429 if the failures counted under `key` have spent the budget."""
        reset = self._blocked_until(key)
        if reset is None:
            return
        raise RateLimited(self._message, headers=_limit_headers(self._item, 0, reset, retry=True))

    def spend(self, *key: str) -> None:
        """Count a failure. The request is refused anyway, so an unreachable counter store
        does not change its answer (`check` is what fails closed)."""
        try:
            self._limiter.limiter.hit(self._item, self._namespace, *key)
        except StorageError:
            log.warning("could not count a failure in %s: store unreachable", self._namespace)

    def _blocked_until(self, key: tuple[str, ...]) -> float | None:
        try:
            strategy = self._limiter.limiter
            if strategy.test(self._item, self._namespace, *key):
                return None
            return strategy.get_window_stats(self._item, self._namespace, *key)[0]
        except StorageError:
            if self._fail_open:
                return None
            raise


def password_failure_key(user: dict[str, Any] | None, name: str, address: str) -> tuple[str, ...]:
    """Which failure count a password try is checked against and spends.

    One count per account, whatever name (username or email) was typed, so an attacker gets
    `rate_limits.login_failures` guesses per account in all. But failures from elsewhere must
    not lock the owner out: from an address the account logged in from before, tries are
    counted on their own (NIST SP 800-63B 5.2.2; ASVS V2.2.1). Names that match no account are
    counted by name, the same way, so the answers do not tell which accounts exist.
    """
    if user is None:
        return ("name", fold_name(name))
    if address in user.get("known_addresses", ()):
        return ("account", user["id"], address)
    return ("account", user["id"])


class BadCredentialWatch:
    """Invalid tokens and keys, counted per client address and throttled.

    Checking the shared counter on every request would cost a storage round trip on the hot
    path, so a worker checks it only for addresses it has itself seen fail within the window:
    a flood of bad credentials is refused with 429 before any verification, while clean traffic
    never touches the counter.
    """

    MAX_SUSPECTS = 10_000

    def __init__(self, budget: FailureBudget) -> None:
        self._budget = budget
        self._window = budget.window_seconds
        self._suspects: dict[str, float] = {}

    def suspects(self, address: str, now: float) -> bool:
        """True if `address` sent invalid credentials to this worker within the window."""
        seen = self._suspects.get(address)
        if seen is None:
            return False
        if now - seen > self._window:
            del self._suspects[address]
            return False
        return True

    def check(self, address: str, now: float) -> None:
        if self.suspects(address, now):
            self._budget.check(address)

    def failed(self, address: str, now: float) -> None:
        if len(self._suspects) >= self.MAX_SUSPECTS:
            self._suspects.clear()
        self._suspects[address] = now
        self._budget.spend(address)


# -- bounded password hashing -------------------------------------------------------------------


class PasswordGate:
    """At most `count` password hashes at once across all processes sharing `slots`.

    Under gevent (the server's workers) the hash runs on a real thread, where bcrypt releases the
    GIL: the worker's event loop keeps answering predictions while a login is being checked. On
    Linux that thread is in the idle scheduling class (SCHED_IDLE), so when the cores are busy the
    predictions come first and logins wait.
    """

    def __init__(self, slots: Slots, count: int) -> None:
        self._slots = slots
        self._count = count
        self._threads = ThreadOffload(count, on_thread=idle_priority)

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)` in a free slot, off the event loop; 429 if every slot is busy."""
        held = self._slots.take("password-hash", self._count)
        if held is not None:
            try:
                return self._threads.run(fn, *args, **kwargs)
            finally:
                held.release()
        raise RateLimited(
            "too many password checks are running right now; retry in a moment",
            headers={"Retry-After": "1"},
        )
