"""Login sessions: what makes a JWT revocable at once, in every worker process.

A login starts a session; its access and refresh tokens name it in their `sid` claim, and a token
is honoured only while its session is live. The session remembers the one refresh token (by jti)
that may be used next:

- refresh with that jti: a new jti is recorded (rotation) and new tokens are issued;
- refresh with any other jti of the session: a used token was replayed, so the whole session (the
  token family) is revoked, the thief's tokens and the owner's alike;
- logout: that session is revoked; a password change: every session of the user but the one
  the owner changed it from (an admin's reset revokes all); disabling or deleting the user: all;
- a session lives at most `auth.session_max_days` from its login however often it is refreshed,
  and one started by a key login lives no longer than the key (see `AuthState.session_end`).

Every change happens inside a store update, under the file lock, so of two concurrent refreshes
with the same token exactly one finds its jti current. Ended sessions of a user are pruned when
a session of the user starts or the user's sessions are revoked, and everyone's by a timed sweep
(`sweep`).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from .storage import UNCHANGED, Store, Transaction
from .storage.indexes import Index
from .storage.shapes import Field, strings

REVOKED_KEEP_SECONDS = 24 * 3600
SESSION_SHAPE = {
    "user_id": Field((str,)),
    "refresh_jti": Field((str,)),
    "created_at": Field((int,)),
    "refreshed_at": Field((int,)),
    "expires_at": Field((int,)),
    "revoked_at": Field((int, None)),
    "revoked_reason": Field((str, None)),
    "scopes": Field((list, None), check=strings),
    "key_id": Field((str, None), required=False),
}
SESSION_INDEXES = {"user": Index(lambda s: (s["user_id"],), unique=False)}


@dataclass(frozen=True)
class Rotation:
    """Outcome of presenting a refresh token: the new jti, or why it was refused."""

    new_jti: str | None = None
    refused: str | None = None  # "unknown", "revoked", "reused"


def new_session_id() -> str:
    return "ses_" + secrets.token_hex(12)


def _ended(session: dict[str, Any], now: int) -> bool:
    revoked = session["revoked_at"]
    return session["expires_at"] < now or bool(revoked and revoked < now - REVOKED_KEEP_SECONDS)


def _prune_user(items: Transaction, user_id: str, now: int) -> None:
    for sid in items.ids("user", user_id):
        if _ended(items[sid], now):
            del items[sid]


def sweep(store: Store, *, now: int) -> int:
    """Drop expired and long-revoked sessions; writes only if there were any. Returns how many.

    The scan reads every session (O(N)) outside the lock; the write deletes only those found,
    checked again under the lock. The worker runs this on a timer, off its event loop; the
    sessions of one user are also pruned whenever that user logs in or sessions are revoked.
    """
    found = [sid for sid, session in store.records() if _ended(session, now)]

    def change(items: Transaction) -> int:
        gone = [sid for sid in found if sid in items and _ended(items[sid], now)]
        for sid in gone:
            del items[sid]
        return len(gone) or UNCHANGED

    dropped = store.update(change) if found else UNCHANGED
    return 0 if dropped is UNCHANGED else dropped


def start_session(
    store: Store,
    *,
    sid: str,
    user_id: str,
    refresh_jti: str,
    now: int,
    expires_at: int,
    scopes: list[str] | None,
    key_id: str | None = None,
) -> None:
    def change(items: Transaction) -> None:
        _prune_user(items, user_id, now)
        items[sid] = {
            "user_id": user_id,
            "refresh_jti": refresh_jti,
            "created_at": now,
            "refreshed_at": now,
            "expires_at": expires_at,
            "revoked_at": None,
            "revoked_reason": None,
            "scopes": scopes,
            "key_id": key_id,
        }

    store.update(change)


def rotate_refresh(
    store: Store, *, sid: str, user_id: str, jti: str, new_jti: str, now: int, expires_at: int
) -> Rotation:
    def change(items: Transaction) -> Rotation:
        session = items.get(sid)
        if session is None or session["user_id"] != user_id:
            return Rotation(refused="unknown")
        if session["revoked_at"]:
            return Rotation(refused="revoked")
        if session["refresh_jti"] != jti:
            session["revoked_at"], session["revoked_reason"] = now, "refresh_reuse"
            return Rotation(refused="reused")
        session.update(refresh_jti=new_jti, refreshed_at=now, expires_at=expires_at)
        return Rotation(new_jti=new_jti)

    return store.update(change)


def revoke_sessions(
    store: Store,
    *,
    now: int,
    reason: str,
    user_id: str,
    only: str | None = None,
    keep: str | None = None,
) -> int:
    """Revoke the user's live sessions (just `only`, or all but `keep`); returns how many."""

    def change(items: Transaction) -> int:
        _prune_user(items, user_id, now)
        count = 0
        for sid in items.ids("user", user_id):
            session = items[sid]
            if session["revoked_at"]:
                continue
            if (only is not None and sid != only) or sid == keep:
                continue
            session["revoked_at"], session["revoked_reason"] = now, reason
            count += 1
        return count

    return store.update(change)


def live_session(
    session: dict[str, Any] | None, user_id: str, now: int, max_age: int
) -> dict[str, Any] | None:
    """`session` if it is one of `user_id`'s and neither revoked, expired nor past `max_age`."""
    if (
        session is None
        or session["user_id"] != user_id
        or session["revoked_at"]
        or session["expires_at"] <= now
        or session["created_at"] + max_age <= now
    ):
        return None
    return session
