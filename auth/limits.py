"""Rate limits and login protection.

Four guards, all counting in one storage of the `limits` library (memory:// per process, or Redis
to hold across workers and hosts):

- a per-user budget on every route, keyed by user id (so one user's tokens and keys draw from one
  budget), sized by the user's own `rate_limit`, else `rate_limits.roles.<role>`, else
  `auth.rate_limit_per_minute`; requests without a user (simple mode, public routes) are keyed by
  client address;
- `/auth/login` per client address (`rate_limits.login`);
- failed password checks per account (`rate_limits.login_failures`), counted whether or not the
  account exists, checked before any password work, with addresses the account logged in from
  before counted apart so that nobody else can lock the owner out (`password_failure_key`);
- invalid tokens and API keys per client address (`rate_limits.invalid_credentials`).

The per-user budget and the login limit are counted by `RequestBudget.check`, a `before_request`
hook that runs after the auth hook, so the user is known. An application that answers some
requests beneath Flask counts them with `RequestBudget.count`, and hands a request it counted
over to Flask with its limit headers under `COUNTED` in the environ, so it is counted once.
Responses carry `X-RateLimit-Limit/Remaining/Reset`, and a 429 also `Retry-After`.

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

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from functools import lru_cache
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any, TypeVar

from filelock import FileLock, Timeout
from flask import Flask, current_app, g, request
from limits import RateLimitItem, parse, parse_many
from limits.errors import StorageError
from limits.storage import storage_from_string
from limits.strategies import STRATEGIES, RateLimiter

from .config import AuthSettings, RateLimitSettings, limit_storage, limit_string
from .errors import ApiError, StorageBusy, render_error
from .offload import ThreadOffload
from .users import fold_name

log = logging.getLogger(__name__)
T = TypeVar("T")

EXEMPT_ATTR = "_rate_limit_exempt"
LOGIN_ENDPOINT = "auth.login"
# Views that check a password: a failed answer from them is held back (`hold_failed_login`).
PASSWORD_ENDPOINTS = frozenset({LOGIN_ENDPOINT, "auth.change_password"})
# The WSGI environ key under which a request carries the limit headers of the budget it was
# already counted in, when the prediction lane hands it over to Flask.
COUNTED = "auth.limit_headers"


class RateLimited(ApiError):
    """429: a budget is spent (its headers say which and until when)."""

    code, error_code = 429, "RATE_LIMIT_EXCEEDED"


def add_limit_headers(response):
    """after_request: the X-RateLimit-* headers of the budget this request was counted in,
    unless the answer carries its own (a 429 of another budget: failed logins, the gate)."""
    for name, value in g.pop("limit_headers", {}).items():
        response.headers.setdefault(name, value)
    return response


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


PREFIX = "inference-server"


@lru_cache(maxsize=256)
def _items(limit: str) -> tuple[RateLimitItem, ...]:
    return tuple(parse_many(limit))


class RequestBudget:
    """The per-user budget and the per-address login limit, checked on every request.

    Counted with the `limits` strategy straight from a `before_request` hook, after the auth
    hook: one hit and one look at the window per request, and the limit strings of users and
    roles parsed once. (flask-limiter did this before; its per-request machinery, limit
    resolution, exemption scopes and header injection, cost a quarter of a prediction.)
    """

    WARN_EVERY_SECONDS = 60.0

    def __init__(self, strategy: RateLimiter, *, auth: AuthSettings, limits: RateLimitSettings):
        self.strategy = strategy
        self._roles = {role: limit_string(limit) for role, limit in limits.roles.items()}
        self._fallback = f"{auth.rate_limit_per_minute}/minute"
        self._login = limits.login
        self._fail_open = limits.on_storage_error == "open"
        self._warned_at = -self.WARN_EVERY_SECONDS

    def _limit_of(self, principal: Any) -> str:
        if principal is None:
            return self._fallback
        user = principal.user
        return user.get("rate_limit") or self._roles.get(user["role"], self._fallback)

    def check(self) -> None:
        """before_request: count this request against its budget; 429 once it is spent."""
        endpoint = request.endpoint
        if endpoint is None:
            return  # no route: a 404 or 405 costs no budget
        if getattr(current_app.view_functions[endpoint], EXEMPT_ATTR, False):
            return
        counted = request.environ.get(COUNTED)
        if counted is not None:  # by the prediction lane, which handed the request over
            g.limit_headers = counted
        elif endpoint == LOGIN_ENDPOINT:
            limit, key = self._login, ("login", client_address())
            message = f"too many logins from this address ({limit}); see Retry-After"
            g.limit_headers = self._hit(limit, key, message)
        else:
            principal = g.get("principal")
            g.limit_headers = self.count(principal, None if principal else client_address())

    def count(self, principal: Any, address: str | None) -> dict[str, str]:
        """Count one request of `principal` (None: of client `address`) and return its
        X-RateLimit-* headers; 429 once the budget is spent."""
        limit = self._limit_of(principal)
        key = ("user", f"user:{principal.id}" if principal else f"addr:{address}")
        return self._hit(limit, key, f"rate limit of {limit} exceeded; see Retry-After")

    def _hit(self, limit: str, key: tuple[str, str], message: str) -> dict[str, str]:
        strategy = self.strategy
        items = _items(limit)
        try:
            for item in items:
                if not strategy.hit(item, PREFIX, *key):
                    reset = strategy.get_window_stats(item, PREFIX, *key)[0]
                    raise RateLimited(message, headers=_limit_headers(item, 0, reset, retry=True))
            reset, remaining = strategy.get_window_stats(items[0], PREFIX, *key)
        except StorageError:
            if not self._fail_open:
                raise
            now = time.monotonic()
            if now - self._warned_at >= self.WARN_EVERY_SECONDS:  # once a minute, not a request
                self._warned_at = now
                log.warning("rate limit storage unreachable; serving without limits")
            return {}
        return _limit_headers(items[0], remaining, reset)


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


def init_limiter(app: Flask, *, auth: AuthSettings, limits: RateLimitSettings) -> RateLimiter:
    """The limits strategy over the configured storage; the budget (`RequestBudget`) is kept in
    `app.extensions["rate_limits"]` for the auth hook to call."""
    try:
        limit_storage(limits.storage_uri)  # the check `config check` runs, for any caller
    except ValueError as exc:
        raise LimiterConfigError(f"rate_limits.storage_uri: expected {exc}") from None
    storage = storage_from_string(limits.storage_uri, key_prefix=PREFIX, wrap_exceptions=True)
    strategy = STRATEGIES[limits.strategy](storage)
    app.extensions["rate_limits"] = RequestBudget(strategy, auth=auth, limits=limits)
    app.register_error_handler(StorageError, _storage_unreachable)
    return strategy


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


def stamp_login_arrival() -> None:
    """before_request, ahead of the budget (which may refuse the login with a 429)."""
    state = current_app.extensions["auth"]
    if request.endpoint in PASSWORD_ENDPOINTS and state.settings.enabled:
        g.login_arrived = state.clock()


def hold_failed_login(response):
    """after_request: answer a failed login no sooner than the configured delay after it came."""
    arrived = g.pop("login_arrived", None)
    if arrived is None or response.status_code == 200:
        return response
    state = current_app.extensions["auth"]
    delay = state.settings.failed_login_delay_seconds
    remaining = min(delay, arrived + delay - state.clock())
    if remaining > 0:
        state.sleep(remaining)
    return response


# -- budgets of failures --------------------------------------------------------------------


class FailureBudget:
    """A rate limit spent only by failures: `check` before the work, `spend` when it failed.

    Used for failed password checks per account and for invalid credentials per address. The
    counters live in the rate limit storage, so with Redis they hold across workers and hosts.
    """

    def __init__(
        self, strategy: RateLimiter, budget: str, *, namespace: str, message: str, fail_open: bool
    ) -> None:
        self._strategy = strategy
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
            self._strategy.hit(self._item, self._namespace, *key)
        except StorageError:
            log.warning("could not count a failure in %s: store unreachable", self._namespace)

    def _blocked_until(self, key: tuple[str, ...]) -> float | None:
        try:
            strategy = self._strategy
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
    """At most `slots` password hashes at once across all processes sharing `lock_dir`.

    Under gevent (the server's workers) the hash runs on a real thread, where bcrypt releases the
    GIL: the worker's event loop keeps answering predictions while a login is being checked. On
    Linux that thread is in the idle scheduling class (SCHED_IDLE), so when the cores are busy the
    predictions come first and logins wait.
    """

    def __init__(self, lock_dir: Path, slots: int) -> None:
        self._paths = [str(lock_dir / f"password-hash-{i}.lock") for i in range(slots)]
        self._locks: dict[tuple[int, str], FileLock] = {}
        self._threads = ThreadOffload(slots, on_thread=_lower_priority)

    def _lock(self, path: str) -> FileLock:
        key = (os.getpid(), path)  # never reuse a lock object across a fork
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = FileLock(path, mode=0o600)
        return lock

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)` in a free slot, off the event loop; 429 if every slot is busy."""
        for path in self._paths:
            lock = self._lock(path)
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue
            try:
                return self._threads.run(fn, *args, **kwargs)
            finally:
                lock.release()
        raise RateLimited(
            "too many password checks are running right now; retry in a moment",
            headers={"Retry-After": "1"},
        )


def _lower_priority() -> None:
    """Move this hashing thread to the idle scheduling class (Linux, where a thread id names
    just that thread): any ordinary runnable task preempts it at once."""
    if sys.platform == "linux":
        with contextlib.suppress(OSError):
            os.sched_setscheduler(threading.get_native_id(), os.SCHED_IDLE, os.sched_param(0))


def exempt(view: Any) -> Any:
    """Mark a view as outside every per-user rate limit (health checks)."""
    setattr(view, EXEMPT_ATTR, True)
    return view
