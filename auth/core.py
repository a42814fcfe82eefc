"""The core of the auth extension: its per-app state, start-up, and the request pipeline.

`open_state` opens the stores (refusing to start on a corrupt file); `init_core` loads or creates
the signing secret, creates the default admin when there is no user at all, and installs the
pipeline. All per-app state lives in `app.extensions["auth"]` as an `AuthState`.

The pipeline is one `before_request` and one `after_request` hook (`Guard`), so every hook,
signal receiver and extension the application registers runs on every request. Before the view:
who is calling (deny by default: every endpoint not marked public needs credentials), when a
password check arrived, the per-user budget (which needs the user), the scopes the view
declares, then flask-limiter's limits declared for every route (`Limiter.before_view`). After
it: flask-limiter's conditional deductions, the standard headers of every answer
(`errors.stamp`), the limit headers, the flag of a password change that is due, and last the
hold of a failed password check (the answer is complete when it is held). What each endpoint
needs is read from its markers once (`EndpointPolicy`), and `request` and `g` are looked up once
per hook.

What a request may do is the scopes of the credential it presented (`Principal.scopes`): the
role's scopes narrowed by the key, or by the key a session was started with. A session from a
key login lives only while that key does; every session ends `auth.session_max_days` after its
login. Invalid credentials are counted per client address (`limits.BadCredentialWatch`).
Authenticators answer "not mine" with None and "mine but bad" with an exception.

The core never imports the web layer (routes, admin, openapi): `extension.Auth` wires both.
"""

from __future__ import annotations

import ctypes
import functools
import ipaddress
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from flask import Blueprint, Flask, current_app, g, request
from flask.wrappers import Response
from limits.errors import StorageError

from . import access, api_keys, errors, sessions
from .admission import Admissions, admissions_for
from .audit import AuditLog
from .background import run_every, run_soon
from .config import AuthSettings, QuotaSettings, RateLimitSettings, UsageSettings, limit_string
from .decorators import (
    ADMIN_ATTR,
    ADMISSION_ATTR,
    CREDENTIALS_REQUIRED,
    EXEMPT_ATTR,
    PASSWORD_ATTR,
    PUBLIC_ATTR,
    SCOPES_ATTR,
    check_scopes,
)
from .errors import AuthenticationError, Code, PermissionDenied, StorageUnavailable
from .ledger import DAY_SHAPE, Ledger, Used
from .limits import (
    BadCredentialWatch,
    FailureBudget,
    Limiter,
    PasswordGate,
    RateLimited,
    RequestBudget,
    build_limiter,
    client_address,
    client_address_of,
    hold_failed_login,
    init_limiter,
    password_failure_key,
)
from .offload import ThreadOffload
from .passwords import hash_password, verify_password
from .quotas import quota_check
from .remembered import Remembered, frozen
from .slots import Slots
from .storage import UNCHANGED, Storage, Store, Transaction, open_storage, secure_dir
from .storage.shapes import epoch, iso
from .tokens import TokenSigner, load_secret
from .usage import KeyUsage
from .users import (
    ALL_SCOPES,
    ROLE_SCOPES,
    USER_INDEXES,
    USER_SHAPE,
    has_default_password,
    new_user,
    password_change_due,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

PASSWORD_CHANGE_HEADER = "X-Password-Change-Required"
SESSION_ENDED = "this session has ended; log in again"
CREDENTIAL_PARAMS = frozenset({"api_key", "access_token", "token", "key"})
# Credentials that were presented and are wrong; an expired token is honest client behaviour.
COUNTED_FAILURES = frozenset({Code.INVALID_TOKEN, Code.INVALID_API_KEY, Code.INVALID_CREDENTIALS})
# What a password session may do while an admin-set password awaits its change.
PASSWORD_CHANGE_SCOPES = frozenset({"user:read", "user:write"})
# What the guard checked when authentication is off: everything passes (`require_auth`).
_EVERYTHING = (ALL_SCOPES | {"admin"}, True)
MAX_KEY_DEPTH = 32  # keys made through keys: how far up a key's lineage is followed
MAINTAIN_SECONDS = 1.0  # how often a worker asks its storage for upkeep (a look at some flags)


@functools.lru_cache(maxsize=1024)
def is_loopback(address: str | None) -> bool:
    try:
        return address is not None and ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a request presents."""

    authorization: str | None
    api_key: str | None
    address: str  # the client's, as `limits.client_address` resolves it
    in_query: bool = False  # a credential parameter in the query string (always refused)

    @classmethod
    def of(cls, req: Any, address: str) -> Credentials:
        """The credentials of Flask request `req` from client `address`."""
        environ = req.environ
        return cls(
            environ.get("HTTP_AUTHORIZATION"),
            environ.get("HTTP_X_API_KEY"),
            address,
            bool(environ.get("QUERY_STRING") and req.args.keys() & CREDENTIAL_PARAMS),
        )


@dataclass(frozen=True)
class Principal:
    """Who is calling and what they may do on this request."""

    user: dict[str, Any]
    scopes: frozenset[str]
    via: str  # "jwt" or "api_key"
    session_id: str | None = None
    key: dict[str, Any] | None = None  # presented, or the one the session was started with
    models: access.Rules = ()  # the user's and the key's model lists (`access.py`)

    @classmethod
    def of(
        cls,
        user: dict[str, Any],
        scopes: frozenset[str],
        via: str,
        *,
        above: list[dict[str, Any]],
        **kwargs: Any,
    ) -> Principal:
        """A principal whose model lists are its user's, its key's and those of the keys its
        key was made through (`above`), so narrowing a key narrows every key made with it."""
        rules = access.rules_of(user, kwargs.get("key"), *above)
        return cls(user, scopes, via, models=rules, **kwargs)

    @property
    def id(self) -> str:
        return self.user["id"]

    @property
    def key_id(self) -> str | None:
        return self.key["id"] if self.key is not None else None

    def may_call(self, model: str) -> bool:
        return access.allows(self.models, model)

    def check_model(self, model: str) -> None:
        """403 INSUFFICIENT_PERMISSIONS unless this credential may call model `model`."""
        if not access.allows(self.models, model):
            raise PermissionDenied(
                f"this credential may not call model {model!r}",
                details={"model": model, "allowed": [list(layer) for layer in self.models]},
            )

    @property
    def is_admin(self) -> bool:
        return self.user["role"] == "admin"

    def holds(self, scope: str) -> bool:
        """True if the credential presented carries `scope` (never just the user's role)."""
        return scope in self.scopes

    @property
    def acts_as_admin(self) -> bool:
        """An admin presenting a credential with the `admin` scope: what the admin routes
        need, and what lets a caller see everyone's records elsewhere."""
        return self.is_admin and self.holds("admin")


def _trim_heap() -> None:
    # Reading a snapshot of tens of megabytes leaves that much free in glibc's heap, counted in
    # the worker's RSS until something reuses it; malloc_trim returns it. Elsewhere: nothing.
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _sleep(seconds: float) -> None:
    time.sleep(seconds)  # looked up at each call: gevent's sleep once the worker is patched


@dataclass
class AuthState:
    settings: AuthSettings
    data_dir: Path
    clock: Callable[[], float]
    storage: Storage
    users: Store
    keys: Store
    key_usage: KeyUsage
    ledger: Ledger
    sessions: Store
    audit: AuditLog
    password_gate: PasswordGate
    slots: Slots
    trusted_proxies: tuple[str, ...] = ()
    sleep: Callable[[float], None] = _sleep
    signer: TokenSigner | None = None
    sweep_seconds: float = 600.0
    offload: ThreadOffload = field(default_factory=lambda: ThreadOffload(1))
    failed_logins: FailureBudget | None = None
    bad_credentials: BadCredentialWatch | None = None
    rate_limits: RateLimitSettings = field(default_factory=RateLimitSettings)
    quotas: QuotaSettings = field(default_factory=QuotaSettings)
    limiter: Limiter | None = None  # flask-limiter, once served by an app (`init_core`)
    admissions: Admissions | None = None  # how predictions are let in, once served by an app
    guard: Guard | None = None  # the pipeline, once served by an app
    # The principals of credentials seen, while their records are unchanged (`remembered.py`).
    _by_key: Remembered[Principal] = field(default_factory=Remembered, init=False, repr=False)
    _by_session: Remembered[tuple[Any, Principal]] = field(
        default_factory=Remembered, init=False, repr=False
    )

    def now(self) -> int:
        return int(self.clock())

    def close(self) -> None:
        """Let go of every file this state holds open (its stores', its slots'): for a process
        that goes on without it, as tests do; a worker that exits lets go of them anyway."""
        self.storage.close()
        self.slots.close()

    def quota_used(self, user: dict[str, Any], now: float) -> Used:
        """What `user` has used of their quotas, as enforcement counts it (the usage ledger,
        or the counters beside the limits on Redis: `admission.py`)."""
        if self.admissions is not None:
            return self.admissions.used(user, now)
        return self.ledger.used(user["id"], now)

    def count_job_predictions(
        self, user_id: str, *, requests: int, samples: int, now: float
    ) -> None:
        """Count predictions answered outside a request (a job's) in the quota counters kept
        apart from the ledger (Redis: `admission.py`), before the ledger counts them."""
        if self.admissions is not None and requests:
            self.admissions.charge(user_id, requests, samples, now)

    def rate_limit_of(self, user: dict[str, Any]) -> str:
        """A user's budget: their own `rate_limit`, else their role's
        (`rate_limits.roles`), else `auth.rate_limit_per_minute`."""
        return user.get("rate_limit") or self._role_limits.get(user["role"], self.default_limit)

    @property
    def default_limit(self) -> str:
        return f"{self.settings.rate_limit_per_minute}/minute"

    @functools.cached_property
    def _role_limits(self) -> dict[str, str]:
        return {role: limit_string(limit) for role, limit in self.rate_limits.roles.items()}

    @property
    def access_ttl(self) -> int:
        return self.settings.access_token_expire_minutes * 60

    @property
    def refresh_ttl(self) -> int:
        return self.settings.refresh_token_expire_days * 86400

    @property
    def session_max_age(self) -> int:
        return self.settings.session_max_days * 86400

    # -- passwords (bounded, off the event loop: see PasswordGate) ----------------------------

    def hash_password(self, password: str) -> str:
        return self.password_gate.run(hash_password, password, rounds=self.settings.bcrypt_rounds)

    def try_password(self, user: dict[str, Any] | None, password: str, *, name: str) -> bool:
        """A password try (login, or change-password's current password) for `user` (None: no
        account is called `name`), within the account's failure budget: 429 once it is spent,
        and a wrong password, a disabled account or the default password from afar spends it.
        """
        assert self.failed_logins is not None
        key = password_failure_key(user, name, client_address())
        self.failed_logins.check(*key)
        ok = (
            self.verify_password(password, user["password_hash"] if user else None)
            and user is not None
            and user["is_active"]
            and not self.remote_default_password(user)
        )
        if not ok:
            self.failed_logins.spend(*key)
        return ok

    def verify_password(self, password: str, hashed: str | None) -> bool:
        """`hashed=None` (no such user) costs the same as a wrong password, and fails."""
        return self.password_gate.run(
            verify_password, password, hashed, rounds=self.settings.bcrypt_rounds
        )

    # -- credentials -------------------------------------------------------------------------

    def authenticate(self, sent: Credentials | None = None) -> Principal | None:
        """The principal named by the credentials `sent` (default: this request's), None if
        there are none.

        Invalid credentials are counted per client address; an address past
        `rate_limits.invalid_credentials` gets 429 before anything it sends is verified.
        """
        if sent is None:
            sent = Credentials.of(request, client_address())
        if sent.authorization is None and sent.api_key is None and not sent.in_query:
            return None  # nothing to verify, nothing to throttle
        watch, now = self.bad_credentials, self.clock()
        if watch is not None:
            watch.check(sent.address, now)
        try:
            return self.identify(sent)
        except AuthenticationError as exc:
            if watch is not None and exc.error_code in COUNTED_FAILURES:
                watch.failed(sent.address, now)
            raise

    def identify(self, sent: Credentials) -> Principal | None:
        """Who `sent` names, raising for invalid credentials (uncounted: see `authenticate`)."""
        if sent.in_query:
            raise AuthenticationError(
                "credentials are never accepted in the query string; send the Authorization "
                "or X-API-Key header",
                error_code=Code.INVALID_TOKEN,
            )
        by_token = self._from_bearer(sent.authorization)
        by_key = self._from_api_key(sent.api_key)
        if by_token and by_key:
            if by_token.id != by_key.id:
                raise AuthenticationError(
                    "the bearer token and the API key belong to different users",
                    error_code=Code.INVALID_CREDENTIALS,
                )
            by_token = Principal(
                user=by_token.user,
                scopes=by_token.scopes & by_key.scopes,
                via="jwt",
                session_id=by_token.session_id,
                key=by_key.key,
                models=by_token.models + by_key.models,
            )
        principal = by_token or by_key
        if principal is not None:
            self.check_default_admin(principal.user, sent.address)
        return principal

    def _from_bearer(self, header: str | None) -> Principal | None:
        if header is None:
            return None
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer":
            # A credential that is sent is checked, never ignored in favour of another one.
            raise AuthenticationError("the Authorization header must be 'Bearer <access token>'")
        if self.signer is None:
            raise AuthenticationError(
                "bearer tokens are not accepted", error_code=Code.INVALID_TOKEN
            )
        now = self.now()
        claims = self.signer.decode(token.strip(), token_type="access", now=now)
        versions = (self.sessions.version(), self.users.version(), self.keys.version())
        kept = self._by_session.get(claims["sid"], versions)
        session = kept[0] if kept is not None else self.sessions.get(claims["sid"])
        if sessions.live_session(session, claims["sub"], now, self.session_max_age) is None:
            raise AuthenticationError(SESSION_ENDED, error_code=Code.INVALID_TOKEN)
        if kept is not None:
            principal = kept[1]
            if principal.key is not None:  # expiry comes with time alone
                self.usable_key(principal.key, error_code=Code.INVALID_TOKEN)
            return principal
        assert session is not None
        user = self.active_user(claims["sub"], error_code=Code.INVALID_TOKEN)
        key_id = session.get("key_id")
        key = self.live_key(key_id, error_code=Code.INVALID_TOKEN) if key_id else None
        principal = Principal.of(
            frozen(user),
            self.session_scopes(user, session),
            "jwt",
            above=self.keys_above(key),
            session_id=claims["sid"],
            key=frozen(key),
        )
        self._by_session.keep(claims["sid"], versions, (frozen(session), principal))
        return principal

    def session_scopes(self, user: dict[str, Any], session: dict[str, Any]) -> frozenset[str]:
        """A password session holds the role's scopes (only the account's own while an admin-set
        password awaits its change); a session from a key login holds that key's scopes."""
        scopes = ROLE_SCOPES[user["role"]]
        if session["scopes"] is not None:
            return scopes & frozenset(session["scopes"])
        if password_change_due(user):
            return scopes & PASSWORD_CHANGE_SCOPES
        return scopes

    def session_end(self, created_at: int, key: dict[str, Any] | None) -> int:
        """When a session must end whatever its refreshes: its absolute lifetime, and no later
        than the expiry of the key it was started with."""
        end = created_at + self.session_max_age
        if key is not None and key.get("expires_at"):
            end = min(end, epoch(key["expires_at"]))
        return end

    def _from_api_key(self, key: str | None) -> Principal | None:
        if key is None:
            return None
        digest = self.key_digest(key.strip())
        versions = (self.keys.version(), self.users.version())
        principal = self._by_key.get(digest, versions)
        if principal is None:
            record = self.usable_key(self.keys.find("hash", digest))
            user = self.active_user(record["user_id"], error_code=Code.INVALID_API_KEY)
            scopes = ROLE_SCOPES[user["role"]] & frozenset(record["scopes"])
            above = self.keys_above(record)
            principal = self._by_key.keep(
                digest,
                versions,
                Principal.of(frozen(user), scopes, "api_key", above=above, key=frozen(record)),
            )
        else:
            self.usable_key(principal.key)  # expiry comes with time alone
        self.key_usage.note(principal.key["id"], self.now())  # type: ignore[index]
        return principal

    def keys_above(self, key: dict[str, Any] | None) -> list[dict[str, Any]]:
        """The keys `key` was made through, nearest first (none for most keys)."""
        found: list[dict[str, Any]] = []
        while key is not None and key.get("parent_id") and len(found) < MAX_KEY_DEPTH:
            key = self.keys.get(key["parent_id"])
            if key is not None:
                found.append(key)
        return found

    def find_key(self, key: str) -> dict[str, Any]:
        """The live record of API key `key`; raises INVALID_API_KEY for anything else."""
        return self.usable_key(self.keys.find("hash", self.key_digest(key)))

    def key_digest(self, key: str) -> str:
        """What API key `key` is found by; raises INVALID_API_KEY when keys are off or it is
        not one."""
        if not self.settings.api_keys_enabled:
            raise AuthenticationError("API keys are disabled", error_code=Code.INVALID_API_KEY)
        digest = api_keys.lookup_digest(key)
        if digest is None:
            raise AuthenticationError("malformed API key", error_code=Code.INVALID_API_KEY)
        return digest

    def live_key(self, key_id: str, *, error_code: str = Code.INVALID_API_KEY) -> dict[str, Any]:
        """The record of key `key_id` if it is active and unexpired; raises 401 otherwise."""
        return self.usable_key(self.keys.get(key_id), error_code=error_code)

    def usable_key(
        self, record: dict[str, Any] | None, *, error_code: str = Code.INVALID_API_KEY
    ) -> dict[str, Any]:
        """`record` if it is a key that is active and unexpired; raises 401 otherwise."""
        if record is None or not record["is_active"]:
            raise AuthenticationError("invalid or revoked API key", error_code=error_code)
        expires_at = record.get("expires_at")
        if expires_at and epoch(expires_at) <= self.now():
            raise AuthenticationError("this API key has expired", error_code=error_code)
        return record

    def active_user(self, user_id: str, *, error_code: str) -> dict[str, Any]:
        """The user `user_id` if it exists and is enabled; raises 401 with `error_code`."""
        user = self.users.get(user_id)
        if user is None or not user["is_active"]:
            raise AuthenticationError("this account is disabled or deleted", error_code=error_code)
        return user

    def check_default_admin(self, user: dict[str, Any], address: str | None = None) -> None:
        if self.remote_default_password(user, address):
            raise PermissionDenied(
                "this account still has its default password; change it from the server "
                "machine (loopback) before using it remotely"
            )

    def start_background(self) -> None:
        """This worker's background work: writing key use, sweeping ended sessions, the
        storage's upkeep (off the loop, on one background thread)."""
        self.key_usage.start(self.run_storage_work)
        self.ledger.start(self.run_storage_work)
        sweep = functools.partial(self.run_storage_work, self.sweep_sessions)
        run_every(self.sweep_seconds, sweep, name="session-sweep")
        upkeep = functools.partial(self.run_storage_work, self.storage.maintain)
        run_every(MAINTAIN_SECONDS, upkeep, name="storage-upkeep")

    def flush(self) -> None:
        """Write what this process keeps in memory of bookkeeping: key use and usage counts."""
        self.key_usage.flush()
        self.ledger.flush()

    def run_storage_work(self, job: Callable[[], T]) -> T:
        """Run background `job` where the storage's calls belong: on a real thread when they
        block (file locks, fsync), on the event loop when they cooperate with it (Redis's
        sockets under gevent, which a real thread must not touch)."""
        return self.offload.run(job) if self.storage.blocking else job()

    def warm(self) -> None:
        """Load what every request reads (users, keys and their hashes, sessions) before the
        first request; the indexes that only logins, listings and revocations consult are
        built just after, on the background thread. Then hand the load's scratch memory back
        to the system."""
        self.users.warm([])
        self.keys.warm(["hash"])
        self.sessions.warm([])
        _trim_heap()

        def rest() -> None:
            for store in (self.users, self.keys, self.sessions):
                store.warm()
            _trim_heap()

        self.in_background(rest)

    def storage_problems(self) -> list[str]:
        """Why any store cannot be read or written now (for readiness checks)."""
        return self.storage.problems()

    def in_background(self, job: Callable[[], Any]) -> None:
        """Run `job` soon in this worker's background; the caller does not wait."""
        run_soon(functools.partial(self.run_storage_work, job), name="background")

    def sweep_sessions(self) -> int:
        return sessions.sweep(self.sessions, now=self.now())

    def remote_default_password(self, user: dict[str, Any], address: str | None = None) -> bool:
        """True if `user` still has the default password and the request (from `address`,
        default this request's client) is not from loopback."""
        return has_default_password(user) and not is_loopback(address or client_address())


def open_state(
    *,
    settings: AuthSettings,
    data_dir: Path,
    storage: Storage | None = None,
    trusted_proxies: Sequence[str] = (),
    rate_limits: RateLimitSettings | None = None,
    quotas: QuotaSettings | None = None,
    usage: UsageSettings | None = None,
    lock_timeout: float = 10.0,
    usage_flush_seconds: float = 5.0,
    sweep_seconds: float = 600.0,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] | None = None,
) -> AuthState:
    """The stores and helpers, opened (StoreCorrupt on bad data), without any Flask app.

    The command line uses this to work on the same data, under the same locks, as the server.
    `storage` defaults to the JSON files in `data_dir`; `rate_limits`, `quotas` and `usage`
    to the defaults; `clock` and `sleep` are for tests.
    """
    data_dir = secure_dir(Path(data_dir))
    if storage is None:
        storage = open_storage(data_dir=data_dir, lock_timeout=lock_timeout)
    store = storage.store
    slots = Slots(secure_dir(data_dir / "slots"))
    state = AuthState(
        settings=settings,
        data_dir=data_dir,
        clock=clock,
        storage=storage,
        users=store(
            "users", collection="users", shape=USER_SHAPE, indexes=USER_INDEXES, intern_ids=True
        ),
        keys=store(
            "api_keys",
            collection="keys",
            shape=api_keys.key_shape(ALL_SCOPES),
            indexes=api_keys.KEY_INDEXES,
        ),
        key_usage=KeyUsage(
            store("api_key_usage", collection="keys", shape=api_keys.USAGE_SHAPE),
            flush_seconds=usage_flush_seconds,
        ),
        ledger=Ledger(
            store("usage", collection="usage", shape=DAY_SHAPE),
            flush_seconds=(usage or UsageSettings()).flush_seconds,
        ),
        sessions=store(
            "sessions",
            collection="sessions",
            shape=sessions.SESSION_SHAPE,
            indexes=sessions.SESSION_INDEXES,
        ),
        audit=AuditLog(storage.audit),
        password_gate=PasswordGate(slots, settings.password_hash_slots),
        slots=slots,
        trusted_proxies=tuple(trusted_proxies),
        rate_limits=rate_limits or RateLimitSettings(),
        quotas=quotas or QuotaSettings(),
        sleep=sleep or _sleep,
        sweep_seconds=sweep_seconds,
    )
    for each in storage.stores():
        each.open()
    return state


def auth_state() -> AuthState:
    return current_app.extensions["auth"]


def may_call(model: str) -> bool:
    """True if this request's credential may call `model` (always, in simple mode)."""
    principal = g.get("principal")
    return principal is None or principal.may_call(model)


def check_model(model: str) -> None:
    """403 INSUFFICIENT_PERMISSIONS unless this request's credential may call `model`."""
    principal = g.get("principal")
    if principal is not None:
        principal.check_model(model)


def check_quota(samples: int) -> None:
    """429 QUOTA_EXCEEDED unless this request's user's quotas can take `samples` more samples
    (and a request) now; nothing is counted (a job checks at submission, counts as it runs)."""
    principal = g.get("principal")
    if principal is not None:
        state = auth_state()
        quota_check(state, principal.user, samples, state.clock())


def admit_prediction(model: str, samples: int = 1) -> Admission | None:
    """Call where the application has chosen the model of a prediction, before it runs: 403
    unless the credential may call `model` (`access.py`), 429 QUOTA_EXCEEDED when the user's
    quotas cannot take one more request of `samples` samples (`quotas.py`), 429
    CONCURRENCY_LIMIT_EXCEEDED when its key has `max_concurrent` predictions in flight already
    (the slot is held until the request ends). The request is counted in the usage ledger when
    it ends, with the `inference_ms` the application sets on the admission returned (None in
    simple mode, where nobody is counted)."""
    guard = auth_state().guard
    assert guard is not None, "admit_prediction needs an app served by Auth"
    guard.admit(model, samples)
    return g.get("admitted")


@dataclass(frozen=True, slots=True)
class EndpointPolicy:
    """What an endpoint needs, read from its view's markers (`decorators.py`) at its first
    request. A view put in `app.view_functions` after that keeps the policy read then: replace
    views before serving, as Flask expects of every setup."""

    public: bool
    exempt: bool  # outside the per-user budget
    at_admission: bool  # its budget is counted where it admits a prediction
    needs: frozenset[str]  # scopes
    admin: bool
    checks_password: bool

    @classmethod
    def of(cls, app: Flask, endpoint: str, public_endpoints: frozenset[str]) -> EndpointPolicy:
        view = app.view_functions[endpoint]
        blueprint = endpoint.rpartition(".")[0]
        parents = [blueprint.rsplit(".", i)[0] for i in range(blueprint.count(".") + 1)]
        public = (
            _serves_static_files(app, endpoint, view)
            or endpoint in public_endpoints
            or getattr(view, PUBLIC_ATTR, False)
            or any(getattr(app.blueprints.get(name), PUBLIC_ATTR, False) for name in parents)
        )
        return cls(
            public=bool(public),
            exempt=bool(getattr(view, EXEMPT_ATTR, False)),
            at_admission=bool(getattr(view, ADMISSION_ATTR, False)),
            needs=frozenset(getattr(view, SCOPES_ATTR, ())),
            admin=bool(getattr(view, ADMIN_ATTR, False)),
            checks_password=bool(getattr(view, PASSWORD_ATTR, False)),
        )


def _serves_static_files(app: Flask, endpoint: str, view: Any) -> bool:
    """True for the view Flask adds for an app's or a blueprint's static folder (public, as a
    site's files are); a view of the application's that happens to be named `static` is not.
    (An app with a static folder cannot have another view called `static`.)"""
    if endpoint == "static":
        return app.has_static_folder
    owner = getattr(view, "__self__", None)
    return isinstance(owner, Blueprint) and view.__func__ is Blueprint.send_static_file


class Guard:
    """The pipeline's two hooks (see the module docstring)."""

    def __init__(
        self,
        app: Flask,
        state: AuthState,
        budget: RequestBudget,
        *,
        public_endpoints: frozenset[str],
    ) -> None:
        self._app = app
        self._state = state
        self._budget = budget
        self._limiter = budget.limiter
        self.admissions: Admissions | None = None  # once flask-limiter built its strategy
        self._public = public_endpoints
        self._policies: dict[str, EndpointPolicy] = {}

    def policy(self, endpoint: str) -> EndpointPolicy:
        policy = self._policies.get(endpoint)
        if policy is None:
            policy = self._policies[endpoint] = EndpointPolicy.of(self._app, endpoint, self._public)
        return policy

    def before(self) -> None:
        req, scratch, state = request._get_current_object(), g._get_current_object(), self._state
        scratch.principal = None
        endpoint = req.endpoint
        if endpoint is None:
            return  # no route: a 404 or 405, which costs no budget
        if _is_preflight(req):
            return  # a browser sends no credentials here; Flask answers the allowed methods
        policy = self.policy(endpoint)
        try:
            state.storage.sync()  # one look at shared storage: the request then reads copies
        except StorageUnavailable:
            if not policy.public:
                raise  # a public route (health, docs) that reads nothing still answers
        enabled = state.settings.enabled
        address = scratch.client_address = client_address_of(req.environ, state.trusted_proxies)
        principal = None
        if enabled and not policy.public:
            principal = state.authenticate(Credentials.of(req, address))
            if principal is None:
                raise AuthenticationError(CREDENTIALS_REQUIRED)
            scratch.principal = principal
        if policy.checks_password and enabled:
            scratch.password_arrived = state.clock()
        if policy.exempt:
            pass
        elif policy.at_admission and principal is not None:
            scratch.budget_due = True  # counted by `admit`, or when the request ends
        else:
            scratch.limit_headers = self._budget.count(principal, address)
        if principal is not None and (policy.needs or policy.admin):
            check_scopes(principal, policy.needs, policy.admin)
        scratch.auth_checked = (policy.needs, policy.admin) if enabled else _EVERYTHING
        self._limiter.before_view(endpoint)

    def admit(self, model: str, samples: int) -> None:
        """A prediction of `samples` samples of `model` is about to run (`admit_prediction`)."""
        scratch = g._get_current_object()
        principal = scratch.get("principal")
        if principal is None or scratch.get("admitted") is not None:
            return  # simple mode: nobody to hold to anything; or admitted already
        principal.check_model(model)
        due = scratch.pop("budget_due", False)
        assert self.admissions is not None
        grant = self.admissions.admit(
            principal, scratch.client_address, samples, self._state.clock(), budget=due
        )
        if due:
            scratch.limit_headers = grant.limit_headers
        scratch.quota_headers = grant.quota_headers
        scratch.slot = grant.slot
        scratch.admitted = Admission(principal, model, samples, give_back=grant.give_back)

    def teardown(self, _exc: BaseException | None) -> None:
        """Free what the request held, however it ended."""
        held = g.pop("slot", None)
        if held is not None:
            held.release()

    def after(self, response: Response) -> Response:
        self._state.storage.end_request()
        scratch = g._get_current_object()
        if scratch.pop("budget_due", False):
            scratch.limit_headers = self._count_late(scratch.principal, scratch.client_address)
        limits = self._limiter.after_view(response) or scratch.get("limit_headers", {})
        extra: list[tuple[str, str]] = list(limits.items())
        principal = scratch.get("principal")
        if principal is not None and principal.user.get("must_change_password"):
            extra.append((PASSWORD_CHANGE_HEADER, "true"))
        admitted = scratch.get("admitted")
        if admitted is not None:
            self._count(admitted, response.status_code)
            extra.extend(scratch.quota_headers)
        errors.stamp(response, extra)
        arrived = scratch.get("password_arrived")
        if arrived is not None:
            hold_failed_login(self._state, arrived, response.status_code)
        return response

    def _count_late(self, principal: Principal, address: str | None) -> dict[str, str]:
        """Count a request in its budget after its answer (one that ended before its view
        admitted a prediction): its headers, even when it spent the last of it."""
        try:
            return self._budget.count(principal, address)
        except RateLimited as refused:
            return {k: v for k, v in refused.extra_headers.items() if k != "Retry-After"}
        except StorageError:
            return {}  # it was answered already; a refusal now would say nothing

    def _count(self, admitted: Admission, status: int) -> None:
        state = self._state
        if admitted.give_back is not None and not 200 <= status < 300:
            admitted.give_back()  # quotas count answered predictions
        principal = admitted.principal
        state.ledger.add(
            principal.id,
            credential=principal.key_id or "session",
            model=admitted.model,
            status=status,
            samples=admitted.samples,
            inference_ms=admitted.inference_ms,
            now=state.clock(),
        )


@dataclass(slots=True)
class Admission:
    """A prediction let in by `admit_prediction`; the application adds its inference time."""

    principal: Principal
    model: str
    samples: int
    inference_ms: float = 0.0
    give_back: Callable[[], None] | None = None  # the quota counts of a prediction that failed


def _is_preflight(req: Any) -> bool:
    """A CORS preflight that Flask answers itself (its automatic OPTIONS answer)."""
    return (
        req.method == "OPTIONS"
        and "HTTP_ACCESS_CONTROL_REQUEST_METHOD" in req.environ
        and getattr(req.url_rule, "provide_automatic_options", False)
    )


def init_core(
    app: Flask,
    state: AuthState,
    *,
    default_admin: bool = True,
    public_endpoints: frozenset[str] = frozenset(),
) -> AuthState:
    """Serve `state` (see `open_state`) from `app`: the signing secret, the default admin of
    an empty users store (unless told not to), the pipeline and flask-limiter."""
    settings, limits = state.settings, state.rate_limits
    app.extensions["auth"] = state
    errors.init_app(app)
    if settings.enabled:
        state.signer = TokenSigner(
            secret=load_secret(
                settings.jwt_secret, state.storage, may_create=lambda: len(state.sessions) == 0
            ),
            algorithm=settings.jwt_algorithm,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
        )
        if default_admin:
            _ensure_default_admin(state)
    limiter = state.limiter = build_limiter(limits)
    budget = RequestBudget(limiter, state)
    guard = state.guard = Guard(app, state, budget, public_endpoints=public_endpoints)
    app.before_request(guard.before)
    app.after_request(guard.after)
    app.teardown_request(guard.teardown)
    init_limiter(app, limiter)  # its steps run in the guard's hooks, after authentication
    guard.admissions = state.admissions = admissions_for(budget, state)
    fail_open = limits.on_storage_error == "open"
    state.failed_logins = FailureBudget(
        limiter,
        limits.login_failures,
        namespace="login-failures",
        message="too many failed logins for this account; try again later",
        fail_open=fail_open,
    )
    state.bad_credentials = BadCredentialWatch(
        FailureBudget(
            limiter,
            limits.invalid_credentials,
            namespace="bad-credentials",
            message="too many invalid tokens or API keys from this address; try again later",
            fail_open=fail_open,
        )
    )
    return state


def _ensure_default_admin(state: AuthState) -> None:
    spec = state.settings.default_admin
    if spec is None:
        return
    if len(state.users):
        admins = (state.users.get(i) for i in state.users.ids("active_admin", "yes"))
        if any(admin is not None and has_default_password(admin) for admin in admins):
            log.warning(
                "an admin still has the DEFAULT PASSWORD: change it (POST /auth/change-password); "
                "until then it can only be used from this machine"
            )
        return
    password_hash = hash_password(spec.password, rounds=state.settings.bcrypt_rounds)

    def change(items: Transaction) -> bool:
        if items:
            return UNCHANGED  # another worker was first
        user = new_user(
            username=spec.username,
            email=spec.email,
            password_hash=password_hash,
            role="admin",
            now_iso=iso(state.now()),
            must_change_password=True,
            default_password=True,
        )
        items[user["id"]] = user
        return True

    if state.users.update(change) is not UNCHANGED:
        log.warning(
            "created default admin %r with the DEFAULT PASSWORD: it can only be used from this "
            "machine until the password is changed (POST /auth/change-password)",
            spec.username,
        )
        state.audit.record("user.default_admin_created", username=spec.username)
