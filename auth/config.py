"""The auth extension's settings: every key, its default, its bounds and its meaning.

The extension is configured with an `AuthSettings` object, never with `app.config` (Flask drops
lower-case keys). An application that reads YAML validates it against these dataclasses; the
bounds live in each field's metadata so that validation and documentation share one source.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from limits import parse_many
from limits.storage import storage_from_string

from .passwords import MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH
from .quotas import check_tiers
from .tokens import MIN_SECRET_BYTES, secret_problem


def setting(default: Any = None, *, help: str, factory: Any = None, **bounds: Any) -> Any:
    """Declare a settings field: its default, what it means, and the bounds it must respect.

    Recognised bounds: `min`, `max` (numbers), `min_len` (strings), `check` (a callable raising
    ValueError with a human message).
    """
    metadata = {"help": help, **bounds}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def check_bounds(value: Any, meta: Mapping[str, Any]) -> str | None:
    """What `value` should be instead, if it breaks the bounds of its field's `meta`."""
    if "min" in meta and value < meta["min"]:
        return f"a value >= {meta['min']}"
    if "max" in meta and value > meta["max"]:
        return f"a value <= {meta['max']}"
    if "min_len" in meta and len(value) < meta["min_len"]:
        return f"at least {meta['min_len']} character(s)"
    if "check" in meta:
        try:
            meta["check"](value)
        except ValueError as exc:
            return str(exc)
    return None


def _fits(tp: Any, value: Any) -> bool:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return value in args
    if origin in (typing.Union, types.UnionType):
        return any(_fits(arg, value) for arg in args)
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return tp is Any or isinstance(value, origin or tp)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def shown(value: Any, meta: Mapping[str, Any]) -> str:
    """How a refused value is quoted in a message: never, for a secret."""
    return "a value not shown here" if meta.get("secret") else repr(value)


def _shown(field_: dataclasses.Field, value: Any) -> str:
    return shown(value, field_.metadata)


class Checked:
    """Settings that refuse a wrong value when they are built, whoever builds them: an
    application configuring `AuthSettings(registration="admin-only")` in code gets the same
    refusal as an operator's YAML, instead of a typo that quietly means something else."""

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        problems = []
        for each in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, each.name)
            tp = hints[each.name]
            if not _fits(tp, value):
                allowed = typing.get_args(tp) if typing.get_origin(tp) is Literal else None
                wanted = f"one of {', '.join(map(repr, allowed))}" if allowed else str(tp)
                problems.append(f"{each.name}: expected {wanted}, got {_shown(each, value)}")
            elif value is not None and (problem := check_bounds(value, each.metadata)):
                problems.append(f"{each.name}: expected {problem}, got {_shown(each, value)}")
        if problems:
            raise ValueError(f"{type(self).__name__}: " + "; ".join(problems))


MAX_LIMIT_AMOUNT = 10**9


def rate_limit(value: str) -> None:
    """Refuse anything the `limits` library could not parse as a rate limit, and amounts of
    0 (nothing could ever pass) or beyond a billion."""
    try:
        items = parse_many(value)
    except ValueError:
        items = []
    if not items or not all(1 <= item.amount <= MAX_LIMIT_AMOUNT for item in items):
        raise ValueError(
            f"a rate limit such as '100/minute' or '10 per second' (1 to {MAX_LIMIT_AMOUNT:,} "
            "requests)"
        )


def rate_limit_problem(value: str) -> str | None:
    """What a stored rate limit should have been (`storage.shapes`), None if it parses."""
    try:
        rate_limit(value)
    except ValueError as exc:
        return str(exc)
    return None


def strong_secret(value: str) -> None:
    if secret_problem(value):
        raise ValueError(
            f"at least {MIN_SECRET_BYTES} random bytes, not a placeholder (generate one with "
            "`openssl rand -hex 32`)"
        )


REDIS_LIMIT_URIS = ("redis://", "rediss://", "unix://")  # limit storage URIs served by Redis


def limit_storage(uri: str) -> None:
    """Refuse a URI that the rate limiter's own storage factory (the `limits` library) would
    refuse when the server starts; nothing is connected to."""
    if uri.startswith(REDIS_LIMIT_URIS):
        try:
            import redis  # noqa: F401
        except ImportError:
            raise ValueError(
                "the redis package for a Redis URI: pip install -e '.[redis]'"
            ) from None
    try:
        storage_from_string(uri)
    except Exception as exc:  # the factory raises ValueError, ConfigurationError, ...
        raise ValueError(
            f"a storage URI such as memory:// or redis://host:6379/0 ({exc})"
        ) from None


def limit_string(value: Any) -> str:
    """A user's rate limit as the `limits` library reads it, from an integer (per minute, as
    `auth.rate_limit_per_minute`) or a limits string such as '100/minute'."""
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_LIMIT_AMOUNT:
        return f"{value}/minute"
    if isinstance(value, str):
        rate_limit(value)
        return value
    raise ValueError("an integer (per minute) or a rate limit such as '100/minute'")


def limit_rate(value: str) -> float:
    """How many requests a second a limit string lets through, at most (its strictest item)."""
    return min(item.amount / item.get_expiry() for item in parse_many(value))


@dataclass(frozen=True)
class RateLimitSettings(Checked):
    storage_uri: str = setting(
        "memory://",
        check=limit_storage,
        help="where counters live: memory:// (per process) or redis://host:6379/0",
    )
    strategy: Literal["moving-window", "fixed-window", "sliding-window-counter"] = setting(
        "sliding-window-counter", help="how requests are counted (strategies of the limits library)"
    )
    roles: dict[str, Any] = setting(
        factory=lambda: {"admin": "1000/minute"},
        check=lambda roles: [limit_string(v) for v in roles.values()],
        help="per-role limit replacing auth.rate_limit_per_minute: requests per minute (200) "
        "or a limit ('1000/hour')",
    )
    login: str = setting("10/minute", check=rate_limit, help="per client address, /auth/login")
    login_failures: str = setting(
        "100/hour",
        check=rate_limit,
        help="failed password checks per account before it is blocked for new addresses",
    )
    invalid_credentials: str = setting(
        "60/minute",
        check=rate_limit,
        help="invalid tokens or API keys per client address before it gets 429",
    )
    on_storage_error: Literal["closed", "open"] = setting(
        "closed", help="counters unreachable: closed = answer 503, open = serve unlimited"
    )


@dataclass(frozen=True)
class QuotaSettings(Checked):
    tiers: dict[str, Any] = setting(
        factory=dict,
        check=check_tiers,
        help="named tiers of quotas per UTC day and month, e.g. free: {requests_per_day: 1000, "
        "samples_per_month: 100000}; a quota left out is unlimited",
    )
    default_tier: str | None = setting(
        None, help="the tier of users an admin gave none; null = no quota"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.default_tier is not None and self.default_tier not in self.tiers:
            raise ValueError(
                f"QuotaSettings: default_tier: expected one of the tiers "
                f"({', '.join(sorted(self.tiers)) or 'none defined'}), got {self.default_tier!r}"
            )


@dataclass(frozen=True)
class UsageSettings(Checked):
    flush_seconds: float = setting(
        5,
        min=0.1,
        max=3600,
        help="how often each worker writes its usage counts (at most this much is lost if a "
        "worker is killed)",
    )


@dataclass(frozen=True)
class DefaultAdmin(Checked):
    username: str = setting("admin", help="username of the admin created on first start")
    password: str = setting(
        "admin123", secret=True, help="its password; must be changed before remote use"
    )
    email: str = setting("admin@localhost", help="its email address")


@dataclass(frozen=True)
class AuthSettings(Checked):
    enabled: bool = setting(True, help="false = open simple mode: no credentials anywhere")
    jwt_secret: str | None = setting(
        None,
        check=strong_secret,
        secret=True,
        help="HMAC secret (>= 32 bytes); null = generate once into the data dir (0600)",
    )
    jwt_algorithm: Literal["HS256", "HS384", "HS512"] = setting(
        "HS256", help="JWT signing algorithm, pinned on decode"
    )
    jwt_issuer: str = setting("inference-server", help="the iss claim issued and required")
    jwt_audience: str = setting("inference-api", help="the aud claim issued and required")
    access_token_expire_minutes: int = setting(
        30, min=1, max=24 * 60, help="lifetime of an access token"
    )
    refresh_token_expire_days: int = setting(
        7, min=1, max=365, help="lifetime of a refresh token (each refresh starts a new one)"
    )
    session_max_days: int = setting(
        30,
        min=1,
        max=3650,
        help="absolute lifetime of a login session: refreshing never extends it past this, "
        "after which a password (or key) login is needed",
    )
    api_keys_enabled: bool = setting(True, help="accept X-API-Key and allow creating keys")
    rate_limit_per_minute: int = setting(
        100, min=1, help="requests per minute per user, across all their tokens and keys"
    )
    registration: Literal["open", "admin_only", "closed"] = setting(
        "admin_only", help="who may call POST /auth/register"
    )
    password_min_length: int = setting(
        MIN_PASSWORD_LENGTH,
        min=MIN_PASSWORD_LENGTH,
        max=MAX_PASSWORD_LENGTH,
        help="shortest password accepted",
    )
    bcrypt_rounds: int = setting(12, min=4, max=16, help="bcrypt cost factor (log2 rounds)")
    password_hash_slots: int = setting(
        1,
        min=1,
        max=64,
        help="password hashes computed at once across all workers; more "
        "logins at that moment get 429 at once instead of queueing in front of predictions",
    )
    failed_login_delay_seconds: float = setting(
        1.0,
        min=0,
        max=30,
        help="a login that fails (any answer but 200) is answered no sooner than this after it "
        "arrived: guessing slows down and a flood waits instead of spinning; 0 = off",
    )
    default_admin: DefaultAdmin | None = setting(
        factory=DefaultAdmin,
        help="the admin created when no user exists; null = never create one",
    )
