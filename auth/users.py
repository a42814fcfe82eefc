"""Users: validation of what clients send, records in the users store, and their public view.

Usernames and emails are unique without regard to case; the index maps both, lower-cased, to the
user id, so login by either is one dict access. A user's role decides the widest set of scopes
any of their tokens or keys can carry.
"""

from __future__ import annotations

import re
import secrets
import unicodedata
from typing import Any

from .access import pattern_list
from .config import rate_limit_problem
from .errors import Conflict, ValidationError
from .quotas import quota_problem
from .storage import Store, Transaction
from .storage.indexes import Index
from .storage.shapes import Field, one_of, strings, timestamp

# Managing the account itself (keys, password, profile) is a scope of its own: a password login
# holds these, a key only when it was created with them, so a leaked prediction key cannot mint
# keys or take the account over.
ACCOUNT_SCOPES = frozenset({"api-keys:manage", "user:read", "user:write"})
ROLE_SCOPES: dict[str, frozenset[str]] = {
    "user": frozenset({"predict", "models:read"}) | ACCOUNT_SCOPES,
    "admin": frozenset({"predict", "models:read", "models:manage", "admin"}) | ACCOUNT_SCOPES,
}
ALL_SCOPES = frozenset().union(*ROLE_SCOPES.values())
# What a key gets when its creator names no scopes: the role's service scopes, never admin or
# account management.
DEFAULT_KEY_EXCLUDES = ACCOUNT_SCOPES | {"admin"}


USER_SHAPE = {
    "id": Field((str,)),
    "username": Field((str,)),
    "email": Field((str,)),
    "full_name": Field((str, None), required=False),
    "role": Field((str,), check=one_of(ROLE_SCOPES)),
    "password_hash": Field((str,)),
    "is_active": Field((bool,)),
    "must_change_password": Field((bool,), required=False),
    "default_password": Field((bool,), required=False),
    "rate_limit": Field((str, None), required=False, check=rate_limit_problem),
    "models": Field((list, None), required=False, check=pattern_list),
    "tier": Field((str, None), required=False),
    "quota": Field((dict, None), required=False, check=quota_problem),
    "created_at": Field((str,), check=timestamp),
    "updated_at": Field((str,), check=timestamp),
    "password_changed_at": Field((str,), required=False, check=timestamp),
    "known_addresses": Field((list,), required=False, check=strings),
}
USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{2,31}$")
EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,190}$")


def fold_name(identifier: str) -> str:
    """A username or email as the index keys it: NFKC form, lower case."""
    if identifier.isascii():  # NFKC leaves ASCII as it is: skip the table lookups
        return identifier.lower()
    return unicodedata.normalize("NFKC", identifier).lower()


def find_user(users: Store | Transaction, identifier: str) -> dict[str, Any] | None:
    """The user whose username or email is `identifier` (any case), or None."""
    return users.find("name", fold_name(identifier))


def check_username(value: Any) -> str:
    if not isinstance(value, str) or not USERNAME.match(value):
        raise ValidationError(
            "username must be 3-32 characters: letters, digits, '_', '.', '-', "
            "starting with a letter or digit",
            details={"field": "username"},
        )
    return value


def check_email(value: Any) -> str:
    """The email in NFKC form, so that full-width or compatibility look-alikes of an existing
    address collide with it; invisible characters (zero-width and other format characters)
    are refused outright."""
    if not isinstance(value, str):
        raise ValidationError("email must look like name@example.org", details={"field": "email"})
    if any(unicodedata.category(c) in ("Cf", "Cc", "Co", "Cn") for c in value):
        raise ValidationError(
            "email must not contain invisible or control characters", details={"field": "email"}
        )
    value = unicodedata.normalize("NFKC", value)
    if not EMAIL.match(value):
        raise ValidationError("email must look like name@example.org", details={"field": "email"})
    return value


def check_role(value: Any) -> str:
    if not isinstance(value, str) or value not in ROLE_SCOPES:
        raise ValidationError(
            f"role must be one of: {', '.join(sorted(ROLE_SCOPES))}", details={"field": "role"}
        )
    return value


def new_user(
    *,
    username: str,
    email: str,
    password_hash: str,
    role: str,
    now_iso: str,
    full_name: str | None = None,
    must_change_password: bool = False,
    default_password: bool = False,
) -> dict[str, Any]:
    return {
        "id": "usr_" + secrets.token_hex(8),
        "username": username,
        "email": email,
        "full_name": full_name,
        "role": role,
        "password_hash": password_hash,
        "is_active": True,
        "must_change_password": must_change_password,
        "default_password": default_password,
        "rate_limit": None,
        "created_at": now_iso,
        "updated_at": now_iso,
        "password_changed_at": now_iso,
    }


def has_default_password(user: dict[str, Any]) -> bool:
    """True while the account still has the configured default password (known to anyone who
    read our docs): such an account may only be used from the loopback address."""
    # Transaction written before `default_password` existed flagged only the default admin.
    return bool(user.get("default_password", user.get("must_change_password", False)))


def password_change_due(user: dict[str, Any]) -> bool:
    """True when an admin set this password (a reset): until the owner picks their own, their
    password sessions may only change it and read the profile."""
    return bool(user.get("must_change_password")) and not has_default_password(user)


def add_user(items: Transaction, user: dict[str, Any]) -> None:
    """Insert `user` into `items` (inside a store update), refusing duplicates of name or email."""
    if find_user(items, user["username"]) is not None:
        raise Conflict("username is already taken", details={"field": "username"})
    if find_user(items, user["email"]) is not None:
        raise Conflict("email is already registered", details={"field": "email"})
    items[user["id"]] = user


def _flag(holds: bool) -> tuple[str, ...]:
    return ("yes",) if holds else ()


# Usernames never hold '@' and emails always do, so both share one index.
USER_INDEXES = {
    "name": Index(
        lambda u: (fold_name(u["username"]), fold_name(u["email"])),
        appears=lambda key: f'"{key}"'.encode() if key.isascii() and '"' not in key else None,
    ),
    "active_admin": Index(
        lambda u: _flag(u["role"] == "admin" and u["is_active"]),
        unique=False,
        only_if=b'"role":"admin"',
    ),
}


def profile(user: dict[str, Any]) -> dict[str, Any]:
    """What a user may see about themselves: never the password hash."""
    return {
        "id": user["id"],
        "username": user["username"],
        "email": user["email"],
        "full_name": user.get("full_name"),
        "role": user["role"],
        "scopes": sorted(ROLE_SCOPES[user["role"]]),
        "is_active": user["is_active"],
        "must_change_password": user.get("must_change_password", False),
        "rate_limit": user.get("rate_limit"),
        "models": user.get("models"),
        "tier": user.get("tier"),
        "quota": user.get("quota"),
        "created_at": user["created_at"],
        "updated_at": user["updated_at"],
    }
