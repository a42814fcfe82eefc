"""Account operations shared by the HTTP API and the command line.

Each function validates its input, changes the stores under their locks and writes the audit
log; callers only translate requests or command-line arguments into calls. Because the CLI works
on the same files under the same locks, it is safe to use while the server runs, and what it
changes reaches every worker at once (they re-read a store when its stat changes).

Invariants kept here: usernames and emails are unique; there is always at least one active admin
once one exists; disabling or deleting a user ends their sessions and stops their keys.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from datetime import date
from typing import Any

from . import access, api_keys, sessions
from .config import limit_rate, limit_string
from .core import AuthState
from .errors import Conflict, NotFound, PermissionDenied, StorageBusy, ValidationError
from .passwords import password_problem
from .quotas import quota_state, quota_values
from .storage import Transaction
from .storage.shapes import epoch, iso
from .users import (
    ALL_SCOPES,
    DEFAULT_KEY_EXCLUDES,
    ROLE_SCOPES,
    add_user,
    check_email,
    check_role,
    check_username,
    find_user,
    fold_name,
    new_user,
)

log = logging.getLogger(__name__)

KNOWN_ADDRESSES = 10  # login addresses remembered per account


def check_password(state: AuthState, password: str, *, username: str, field: str) -> None:
    problem = password_problem(
        password, min_length=state.settings.password_min_length, username=username
    )
    if problem:
        raise ValidationError(problem, details={"field": field})


def audit_identity(user: dict[str, Any] | None, name: str) -> dict[str, str]:
    """How a failed login names its account in the audit log: the id if the account exists,
    else a hash of the name typed (a password typed into the username field must not land in
    the log)."""
    if user is not None:
        return {"user_id": user["id"]}
    digest = hashlib.sha256(fold_name(name).encode()).hexdigest()
    return {"name_sha256": digest[:16]}


def remember_address(state: AuthState, user: dict[str, Any], address: str) -> None:
    """Keep the last few addresses `user` logged in from (see `limits.password_failure_key`);
    writes only when the address is new, and never fails the login over it."""
    if address in user.get("known_addresses", ()):
        return

    def change(items: Transaction) -> None:
        record = items.get(user["id"])
        if record is not None:
            known = [a for a in record.get("known_addresses", []) if a != address]
            record["known_addresses"] = [*known, address][-KNOWN_ADDRESSES:]

    try:
        state.users.update(change)
    except StorageBusy:
        log.warning("could not remember a login address of user %s", user["id"])


def list_users(state: AuthState) -> list[dict[str, Any]]:
    """Every user, oldest first (ties by username)."""
    users = [user for _, user in state.users.records()]
    return sorted(users, key=lambda u: (u["created_at"], u["username"].lower()))


def find(state: AuthState, ref: str) -> dict[str, Any]:
    """A user by id, username or email; 404 otherwise."""
    user = state.users.get(ref) or find_user(state.users, ref)
    if user is None:
        raise NotFound(f"no user {ref!r}")
    return user


def create_user(
    state: AuthState,
    *,
    username: Any,
    email: Any,
    password: str,
    role: Any = "user",
    full_name: str | None = None,
    actor: str | None = None,
) -> dict[str, Any]:
    username, email, role = check_username(username), check_email(email), check_role(role)
    check_password(state, password, username=username, field="password")
    user = new_user(
        username=username,
        email=email,
        full_name=full_name,
        role=role,
        password_hash=state.hash_password(password),
        now_iso=iso(state.now()),
    )
    state.users.update(lambda items: add_user(items, user))
    state.audit.record(
        "user.registered", user_id=user["id"], username=username, role=role, actor=actor
    )
    return user


def _keep_an_admin(items: Transaction, user_id: str, after: dict[str, Any] | None) -> None:
    """Refuse a change that would leave no active admin (`after` None = the user is deleted)."""
    admins = set(items.ids("active_admin", "yes"))
    still_admin = after is not None and after["role"] == "admin" and after["is_active"]
    if admins == {user_id} and not still_admin:
        raise Conflict("this is the last active admin; make another admin first")


def update_user(state: AuthState, user_id: str, changes: dict[str, Any], *, actor: str | None):
    """Apply admin changes (role, is_active, rate_limit, models, tier, quota, email,
    full_name); returns the user."""
    allowed = {"role", "is_active", "rate_limit", "models", "tier", "quota", "email", "full_name"}
    unknown = set(changes) - allowed
    if unknown or not changes:
        raise ValidationError(
            f"send one or more of: {', '.join(sorted(allowed))}",
            details={"field": sorted(unknown)[0] if unknown else None},
        )
    clean = dict(changes)
    if "role" in clean:
        check_role(clean["role"])
    if "is_active" in clean and not isinstance(clean["is_active"], bool):
        raise ValidationError("'is_active' must be true or false", details={"field": "is_active"})
    if "email" in clean:
        clean["email"] = check_email(clean["email"])
    if "full_name" in clean and not (
        clean["full_name"] is None
        or isinstance(clean["full_name"], str)
        and len(clean["full_name"]) <= 200
    ):
        raise ValidationError(
            "'full_name' must be text up to 200 characters", details={"field": "full_name"}
        )
    if "models" in clean:
        clean["models"] = access.check_models(clean["models"])
    if clean.get("tier") is not None and clean["tier"] not in state.quotas.tiers:
        tiers = ", ".join(sorted(state.quotas.tiers)) or "none are configured (quotas.tiers)"
        raise ValidationError(
            f"'tier' must name a tier of quotas.tiers ({tiers}) or be null",
            details={"field": "tier"},
        )
    if clean.get("quota") is not None:
        try:
            clean["quota"] = quota_values(clean["quota"], "'quota'")
        except ValueError as exc:
            raise ValidationError(str(exc), details={"field": "quota"}) from None
    if clean.get("rate_limit") is not None:
        try:
            clean["rate_limit"] = limit_string(clean["rate_limit"])
        except ValueError as exc:
            raise ValidationError(
                f"'rate_limit' must be {exc}", details={"field": "rate_limit"}
            ) from None
    now_iso = iso(state.now())

    def change(items: Transaction) -> dict[str, Any]:
        user = items.get(user_id)
        if user is None:
            raise NotFound(f"no user {user_id!r}")
        if "email" in clean:
            holder = find_user(items, clean["email"])
            if holder is not None and holder["id"] != user_id:
                raise Conflict("email is already registered", details={"field": "email"})
        _keep_an_admin(items, user_id, {**user, **clean})
        user.update(clean, updated_at=now_iso)
        return dict(user)

    user = state.users.update(change)
    if clean.get("is_active") is False:
        sessions.revoke_sessions(
            state.sessions, now=state.now(), reason="user_disabled", user_id=user_id
        )
    state.audit.record(
        "user.updated",
        user_id=user_id,
        actor=actor,
        changes=sorted(clean),
        role=user["role"],
        is_active=user["is_active"],
    )
    return user


def delete_user(state: AuthState, user_id: str, *, actor: str | None) -> None:
    def change(items: Transaction) -> None:
        if user_id not in items:
            raise NotFound(f"no user {user_id!r}")
        _keep_an_admin(items, user_id, None)
        del items[user_id]

    state.users.update(change)
    now = state.now()
    sessions.revoke_sessions(state.sessions, now=now, reason="user_deleted", user_id=user_id)
    revoked = _revoke_keys_of(state, user_id, now)
    state.audit.record("user.deleted", user_id=user_id, actor=actor, keys_revoked=revoked)


def set_password(
    state: AuthState,
    user_id: str,
    new_password: str,
    *,
    actor: str | None,
    keep_session: str | None = None,
    by_owner: bool = False,
    permanent: bool = False,
) -> int:
    """Set a password (policy enforced) and end the user's other sessions; returns how many.

    A password set by someone else (an admin's reset, `users reset-password`) is temporary:
    the owner must change it at their next login (see `users.password_change_due`), unless it
    is set `permanent` (`users set-password`, an operator's own account say).
    """
    user = find(state, user_id)
    check_password(state, new_password, username=user["username"], field="new_password")
    new_hash = state.hash_password(new_password)
    now_iso = iso(state.now())

    def change(items: Transaction) -> None:
        if user_id not in items:
            raise NotFound(f"no user {user_id!r}")
        items[user_id].update(
            password_hash=new_hash,
            must_change_password=not (by_owner or permanent),
            default_password=False,
            password_changed_at=now_iso,
            updated_at=now_iso,
        )

    state.users.update(change)
    ended = sessions.revoke_sessions(
        state.sessions,
        now=state.now(),
        reason="password_change",
        user_id=user_id,
        keep=keep_session,
    )
    event = "user.password_changed" if by_owner else "user.password_reset"
    if permanent and not by_owner:
        event = "user.password_set"
    state.audit.record(event, user_id=user_id, actor=actor, sessions_ended=ended)
    return ended


# -- API keys -------------------------------------------------------------------------------


def create_key(
    state: AuthState,
    user: dict[str, Any],
    *,
    name: str,
    held_scopes: frozenset[str] | None = None,
    parent_id: str | None = None,
    scopes: list[str] | None = None,
    description: str | None = None,
    expires_days: int | None = None,
    limits: dict[str, Any] | None = None,
    held_models: access.Rules = (),
    actor: str | None = None,
) -> tuple[str, dict[str, Any]]:
    """Make a key for `user`; returns (the key, shown once; its record).

    `held_scopes` and `held_models` are those of the credential asking (default: the user's
    role, every model). `limits` may hold the key's `models`, `rate_limit` and
    `max_concurrent` (`key_limits`). A key made through another key (`parent_id`, directly or
    through a session from a key login) is never wider than it, expires no later, and is
    revoked with it.
    """
    if not state.settings.api_keys_enabled:
        raise PermissionDenied("API keys are disabled on this server")
    held = ROLE_SCOPES[user["role"]] if held_scopes is None else held_scopes
    if scopes is None:
        scopes = sorted(held - DEFAULT_KEY_EXCLUDES)
    unknown = set(scopes) - ALL_SCOPES
    if unknown:
        raise ValidationError(
            f"unknown scope(s): {', '.join(sorted(unknown))}", details={"field": "scopes"}
        )
    beyond = set(scopes) - held
    if beyond:
        raise PermissionDenied(
            f"a key cannot carry scopes the credential creating it does not hold: "
            f"{', '.join(sorted(beyond))}",
            details={"field": "scopes", "allowed": sorted(held)},
        )
    now = state.now()
    expires = now + expires_days * 86400 if expires_days else None
    parent = state.live_key(parent_id) if parent_id is not None else None
    if parent is not None:
        parent_expiry = parent.get("expires_at")
        if parent_expiry and (expires is None or epoch(parent_expiry) < expires):
            expires = epoch(parent_expiry)
    bounds = key_limits(
        state, user, {**KEY_LIMITS, **(limits or {})}, rules=held_models, parent=parent
    )
    key = api_keys.generate_key()
    record = {
        "id": "key_" + secrets.token_hex(8),
        "user_id": user["id"],
        "name": name,
        "description": description,
        "prefix": key[: api_keys.DISPLAY_LENGTH],
        "hash": api_keys.hash_key(key),
        "scopes": sorted(scopes),
        "is_active": True,
        "created_at": iso(now),
        "expires_at": iso(expires) if expires else None,
        "revoked_at": None,
        "parent_id": parent_id,
        **bounds,
    }
    state.keys.update(lambda items: items.__setitem__(record["id"], record))
    state.audit.record(
        "api_key.created",
        user_id=user["id"],
        key_id=record["id"],
        name=name,
        scopes=record["scopes"],
        parent_id=parent_id,
        actor=actor or user["id"],
    )
    return key, record


KEY_LIMITS = {"models": None, "rate_limit": None, "max_concurrent": None}
KEY_FIELDS = frozenset({"name", "description", *KEY_LIMITS})  # what an update may change


def key_limits(
    state: AuthState,
    owner: dict[str, Any],
    asked: dict[str, Any],
    *,
    rules: access.Rules,
    parent: dict[str, Any] | None,
    held_key: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The `models`, `rate_limit` and `max_concurrent` of `asked` (any of them) checked for a
    key of `owner` made or changed by a credential bound by model `rules` that presented (or
    logged in with) `held_key`: never more than the owner's own rate limit, nor than the key it
    was made through (`parent`) or `held_key`, whose values it takes where none is asked for
    (None asked). 400 for a malformed value, 403 for one beyond those rights.
    """
    bounds = [key for key in (held_key, parent) if key is not None]
    clean: dict[str, Any] = {}
    if "models" in asked:
        bound = rules + access.rules_of(*bounds)
        models = access.check_models(asked["models"])
        clean["models"] = access.within(bound, models, inherited=_inherited(bounds, "models"))
    if "rate_limit" in asked:
        limit = asked["rate_limit"]
        if limit is None:
            limit = _inherited(bounds, "rate_limit")
        if limit is not None:
            try:
                limit = limit_string(limit)
            except ValueError as exc:
                raise ValidationError(
                    f"'rate_limit' must be {exc}", details={"field": "rate_limit"}
                ) from None
            ceilings = [state.rate_limit_of(owner), *(key.get("rate_limit") for key in bounds)]
            for ceiling in filter(None, ceilings):
                if limit_rate(limit) > limit_rate(ceiling):
                    raise PermissionDenied(
                        f"a key's rate limit cannot be above {ceiling}, its owner's or that "
                        "of the key it was made through or changed with",
                        details={"field": "rate_limit", "most": ceiling},
                    )
        clean["rate_limit"] = limit
    if "max_concurrent" in asked:
        most = asked["max_concurrent"]
        if most is None:
            most = _inherited(bounds, "max_concurrent")
        if most is not None and api_keys.concurrency(most):
            raise ValidationError(
                f"'max_concurrent' must be {api_keys.concurrency(most)}",
                details={"field": "max_concurrent"},
            )
        for ceiling in filter(None, (key.get("max_concurrent") for key in bounds)):
            if most > ceiling:
                raise PermissionDenied(
                    f"a key's max_concurrent cannot be above {ceiling}, that of the key it was "
                    "made through or changed with",
                    details={"field": "max_concurrent", "most": ceiling},
                )
        clean["max_concurrent"] = most
    return clean


KEY_TEXTS = {"name": 100, "description": 500}  # longest of each, in characters


def _key_text(value: Any, name: str, most: int) -> str | None:
    if value is None and name == "description":
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= most:
        raise ValidationError(
            f"'{name}' must be text of 1 to {most} characters", details={"field": name}
        )
    return value


def _inherited(keys: list[dict[str, Any]], name: str) -> Any:
    """What a key takes for `name` when none is asked: the first of `keys` that sets it."""
    return next((key[name] for key in keys if key.get(name) is not None), None)


def update_key(
    state: AuthState,
    key_id: str,
    changes: dict[str, Any],
    *,
    actor: str | None,
    owner: str | None = None,
    rules: access.Rules = (),
    held_key: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Change a key's name, description, models, rate_limit or max_concurrent (None clears
    one, or gives it what the keys above it set); with `owner`, only that user's key is found.
    `rules` and `held_key` are the model lists and key of the credential asking (see
    `key_limits`). A revoked key cannot be changed. Returns the record."""
    unknown = set(changes) - KEY_FIELDS
    if unknown or not changes:
        raise ValidationError(
            f"send one or more of: {', '.join(sorted(KEY_FIELDS))}",
            details={"field": sorted(unknown)[0] if unknown else None},
        )
    record = state.keys.get(key_id)
    if record is None or (owner is not None and record["user_id"] != owner):
        raise NotFound(f"no API key with id {key_id!r}")
    if not record["is_active"]:
        raise Conflict("this API key is revoked; a revoked key cannot be changed")
    user = find(state, record["user_id"])
    parent = state.keys.get(record["parent_id"]) if record.get("parent_id") else None
    asked = {name: changes[name] for name in KEY_LIMITS if name in changes}
    clean = key_limits(state, user, asked, rules=rules, parent=parent, held_key=held_key)
    for name, most in KEY_TEXTS.items():
        if name in changes:
            clean[name] = _key_text(changes[name], name, most)

    def change(items: Transaction) -> dict[str, Any]:
        current = items.get(key_id)
        if current is None:
            raise NotFound(f"no API key with id {key_id!r}")
        current.update(clean)
        return dict(current)

    updated = state.keys.update(change)
    state.audit.record(
        "api_key.updated",
        user_id=record["user_id"],
        key_id=key_id,
        changes=sorted(clean),
        actor=actor,
    )
    return updated


def list_keys(state: AuthState, user_id: str | None = None) -> list[dict[str, Any]]:
    """Public views of the keys of one user (or of everyone), oldest first."""
    if user_id is None:
        records = [record for _, record in state.keys.records()]
    else:
        records = [state.keys.get(key_id) for key_id in state.keys.ids("user", user_id)]
    usage = state.key_usage.last_used([r["id"] for r in records if r is not None])
    keys = [
        api_keys.public_view(record, usage.get(record["id"]))
        for record in records
        if record is not None
    ]
    keys.sort(key=lambda k: (k["created_at"], k["id"]))
    return keys


def revoke_key(
    state: AuthState, key_id: str, *, actor: str | None, owner: str | None = None
) -> dict[str, Any]:
    """Revoke a key and every key made through it (all kept as revoked); with `owner`, only
    that user's key is found."""
    now_iso = iso(state.now())

    def change(items: Transaction) -> tuple[dict[str, Any], list[str]]:
        record = items.get(key_id)
        if record is None or (owner is not None and record["user_id"] != owner):
            raise NotFound(f"no API key with id {key_id!r}")
        revoked, doomed = [], {key_id}
        while doomed:
            current = doomed.pop()
            if items[current]["is_active"]:
                items[current].update(is_active=False, revoked_at=now_iso)
                revoked.append(current)
            doomed.update(items.ids("parent", current))
        return dict(record), revoked

    record, revoked = state.keys.update(change)
    state.audit.record(
        "api_key.revoked", user_id=record["user_id"], key_id=key_id, revoked=revoked, actor=actor
    )
    return record


def _revoke_keys_of(state: AuthState, user_id: str, now: int) -> int:
    def change(items: Transaction) -> int:
        count = 0
        for key_id in items.ids("user", user_id):
            record = items[key_id]
            if record["is_active"]:
                record.update(is_active=False, revoked_at=iso(now))
                count += 1
        return count

    return state.keys.update(change)


# -- usage ----------------------------------------------------------------------------------


def usage_report(
    state: AuthState, user: dict[str, Any] | None, first: date, last: date, group_by: str
) -> dict[str, Any]:
    """The usage of `user` (None: everyone) from day `first` to `last` grouped by `group_by`
    (`Ledger.report`), with the user's quotas as they stand now."""
    report = state.ledger.report([user["id"]] if user else None, first, last, group_by)
    now = state.clock()
    quotas = quota_state(state, user, now) if user else []
    return {"user_id": user["id"] if user else None, **report, "quotas": quotas}
