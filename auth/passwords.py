"""Password hashing and policy.

bcrypt reads at most 72 bytes (bcrypt 5 raises beyond that), so the password is first reduced to
its SHA-256 digest, base64-encoded (44 bytes, no NUL): every byte of the password counts, and a
64 x "é" password (128 bytes of UTF-8) works. The policy bounds length in characters and refuses
the 30,000 most common passwords from the list that zxcvbn ships.

`verify_password(None, ...)` checks against a dummy hash of the same cost, so a login for an
unknown user takes as long as a wrong password.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import sys

import bcrypt

MAX_PASSWORD_LENGTH = 128
MIN_PASSWORD_LENGTH = 8  # the least auth.password_min_length may be


def _prehash(password: str) -> bytes:
    return base64.b64encode(hashlib.sha256(password.encode("utf-8")).digest())


def hash_password(password: str, *, rounds: int) -> str:
    return bcrypt.hashpw(_prehash(password), bcrypt.gensalt(rounds)).decode("ascii")


@functools.lru_cache(maxsize=8)
def _dummy_hash(rounds: int) -> bytes:
    return bcrypt.hashpw(b"not-a-password", bcrypt.gensalt(rounds))


def verify_password(password: str, hashed: str | None, *, rounds: int) -> bool:
    """True if `password` matches `hashed`; with `hashed=None`, spends the same time and fails."""
    if hashed is None:
        bcrypt.checkpw(_prehash(password), _dummy_hash(rounds))
        return False
    try:
        return bcrypt.checkpw(_prehash(password), hashed.encode("ascii"))
    except ValueError:
        return False


@functools.lru_cache(maxsize=1)
def _common_passwords() -> frozenset[str]:
    # zxcvbn keeps every list it ships in memory (about 13 MB per process, with its dictionaries
    # of words and names); only the passwords are needed, and only when a password is set. So
    # it is imported on first use, the set kept, and the package let go again.
    from zxcvbn.frequency_lists import FREQUENCY_LISTS

    common = frozenset(FREQUENCY_LISTS["passwords"])
    for name in [m for m in sys.modules if m == "zxcvbn" or m.startswith("zxcvbn.")]:
        del sys.modules[name]
    return common


def password_problem(password: str, *, min_length: int, username: str = "") -> str | None:
    """Why `password` is refused by the policy, or None if it is acceptable."""
    if len(password) < min_length:
        return f"password must be at least {min_length} characters"
    if len(password) > MAX_PASSWORD_LENGTH:
        return f"password must be at most {MAX_PASSWORD_LENGTH} characters"
    if password.lower() in _common_passwords():
        return "password is too common; choose one that is not on lists of leaked passwords"
    if username and password.lower() == username.lower():
        return "password must not be the username"
    return None
