"""Users: validation of what clients send, records in the users store, and their public view.

Usernames and emails are unique without regard to case; the index maps both, lower-cased, to the
user id, so login by either is one dict access. A user's role decides the widest set of scopes
any of their tokens or keys can carry.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Any

from .errors import Conflict, ValidationError
from .store import Items

ROLE_SCOPES: dict[str, frozenset[str]] = {
    "user": frozenset({"predict", "models:read"}),
    "admin": frozenset({"predict", "models:read", "models:manage", "admin"}),
}
ALL_SCOPES = frozenset().union(*ROLE_SCOPES.values())
USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{2,31}$")
EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,190}$")


@dataclass(frozen=True)
class UserIndex:
    by_username: dict[str, str]
    by_email: dict[str, str]


def index_users(items: Items) -> UserIndex:
    return UserIndex(
        by_username={u["username"].lower(): uid for uid, u in items.items()},
        by_email={u["email"].lower(): uid for uid, u in items.items() if u.get("email")},
    )


def find_user(items: Items, index: UserIndex, identifier: str) -> dict[str, Any] | None:
    """The user whose username or email is `identifier` (any case), or None."""
    key = identifier.lower()
    uid = index.by_username.get(key) or index.by_email.get(key)
    return items.get(uid) if uid else None


def check_username(value: Any) -> str:
    if not isinstance(value, str) or not USERNAME.match(value):
        raise ValidationError(
            "username must be 3-32 characters: letters, digits, '_', '.', '-', "
            "starting with a letter or digit",
            details={"field": "username"},
        )
    return value


def check_email(value: Any) -> str:
    if not isinstance(value, str) or not EMAIL.match(value):
        raise ValidationError("email must look like name@example.org", details={"field": "email"})
    return value


def check_role(value: Any) -> str:
    if value not in ROLE_SCOPES:
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
        "rate_limit": None,
        "created_at": now_iso,
        "updated_at": now_iso,
        "password_changed_at": now_iso,
    }


def add_user(items: Items, user: dict[str, Any]) -> None:
    """Insert `user` into `items` (inside a store update), refusing duplicates of name or email."""
    index = index_users(items)
    if user["username"].lower() in index.by_username:
        raise Conflict("username is already taken", details={"field": "username"})
    if user["email"].lower() in index.by_email:
        raise Conflict("email is already registered", details={"field": "email"})
    items[user["id"]] = user


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
        "created_at": user["created_at"],
        "updated_at": user["updated_at"],
    }
