"""JWT access and refresh tokens, and the secret that signs them.

Every token carries `sub` (user id), `sid` (the login session it belongs to), `jti`, `type`
("access" or "refresh"), `iat`, `exp`, `iss` and `aud`; decoding pins the algorithm and requires all
of them, and a token of the wrong type is refused, so access and refresh tokens are never
interchangeable. Expiry, `iat` and `nbf` (in the future beyond a small leeway: refused) are checked
here against an injected clock rather than by PyJWT, so tests freeze time instead of sleeping.

Revocation is not in the token: a token is only honoured while its session is live (see
`sessions.py`), which is what makes logout and password change take effect at once.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from typing import Any

import jwt

from .errors import AuthenticationError, Code
from .storage import Storage

REQUIRED_CLAIMS = ["sub", "sid", "exp", "iat", "jti", "type", "iss", "aud"]
MIN_SECRET_BYTES = 32
CLOCK_LEEWAY = 10  # seconds a token's iat or nbf may be ahead of our clock (skew between hosts)
_PLACEHOLDER = re.compile(r"change|secret|your[-_ ]|example|placeholder|default", re.IGNORECASE)


class SecretError(Exception):
    """The configured signing secret is too weak to start with."""


class TokenSigner:
    """Signs and verifies tokens with one secret and algorithm.

    Verifying a signature with PyJWT costs tens of microseconds of pure Python, the largest share
    of a request's auth cost; the same token arrives again and again, so verified claims are
    kept by token string (a token either verifies or it does not, forever). Expiry and type are
    still checked on every call, and the session check happens after this, so caching changes
    no answer, only the cost of reaching it.
    """

    CACHE_SIZE = 4096

    def __init__(self, *, secret: str, algorithm: str, issuer: str, audience: str) -> None:
        self.secret = secret
        self.algorithm = algorithm
        self.issuer = issuer
        self.audience = audience
        self._verified: dict[str, dict[str, Any]] = {}

    def encode(self, *, sub: str, sid: str, token_type: str, now: int, ttl: int) -> tuple[str, str]:
        """Sign a token; returns (token, jti)."""
        jti = secrets.token_urlsafe(16)
        claims = {
            "sub": sub,
            "sid": sid,
            "jti": jti,
            "type": token_type,
            "iat": now,
            "exp": now + ttl,
            "iss": self.issuer,
            "aud": self.audience,
        }
        return jwt.encode(claims, self.secret, algorithm=self.algorithm), jti

    def decode(self, token: str, *, token_type: str, now: int) -> dict[str, Any]:
        """The claims of a valid token of `token_type`; raises AuthenticationError otherwise."""
        claims = self._verified.get(token)
        if claims is None:
            claims = self._verify(token)
            if len(self._verified) >= self.CACHE_SIZE:
                self._verified.clear()
            self._verified[token] = claims
        if claims["type"] != token_type:
            raise AuthenticationError(
                f"expected an {token_type} token, got a {claims['type']!r} token",
                error_code=Code.INVALID_TOKEN,
            )
        if claims["exp"] <= now:
            raise AuthenticationError("token has expired", error_code=Code.TOKEN_EXPIRED)
        if claims["iat"] > now + CLOCK_LEEWAY or claims.get("nbf", now) > now + CLOCK_LEEWAY:
            raise AuthenticationError("token is not valid yet", error_code=Code.INVALID_TOKEN)
        return claims

    def _verify(self, token: str) -> dict[str, Any]:
        try:
            claims = jwt.decode(
                token,
                self.secret,
                algorithms=[self.algorithm],
                audience=self.audience,
                issuer=self.issuer,
                options={
                    "require": REQUIRED_CLAIMS,
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except jwt.PyJWTError:
            raise AuthenticationError("invalid token", error_code=Code.INVALID_TOKEN) from None
        if not all(isinstance(claims[c], str) for c in ("sub", "sid", "jti", "type")) or not all(
            isinstance(claims[c], int) and not isinstance(claims[c], bool)
            for c in ("exp", "iat", "nbf")
            if c in claims
        ):
            raise AuthenticationError("invalid token claims", error_code=Code.INVALID_TOKEN)
        return claims


def secret_problem(secret: str) -> str | None:
    """Why `secret` must not sign tokens, or None."""
    if len(secret.encode("utf-8")) < MIN_SECRET_BYTES:
        return f"auth.jwt_secret must be at least {MIN_SECRET_BYTES} bytes of random data"
    if _PLACEHOLDER.search(secret) or len(set(secret)) < 10:
        return "auth.jwt_secret looks like a placeholder; generate one with `openssl rand -hex 32`"
    return None


def load_secret(
    configured: str | None, storage: Storage, *, may_create: Callable[[], bool] = lambda: True
) -> str:
    """The configured secret if strong enough, else the one `storage` keeps (made once for every
    process and host, with 32 random bytes).

    A secret is made only while no token can be alive (`may_create()`, asked only when none is
    kept: there are no sessions): one that vanished after that stops the start, since a process
    making a new one would disagree with every other about every token."""
    if configured is not None:
        problem = secret_problem(configured)
        if problem:
            raise SecretError(problem)
        return configured
    secret = storage.kept_secret()
    if secret is None and not may_create():
        raise SecretError(
            f"{storage.secret_place()} is missing, but tokens were signed with it (there are "
            "sessions): restore it from a backup, or delete the sessions to end every session "
            "and start with a new secret"
        )
    if secret is None:
        # Hex, not base64: letters a-f cannot spell a placeholder word, which base64 text did
        # about once in half a million secrets (and the start then failed).
        secret = storage.kept_secret(make=lambda: secrets.token_hex(32))
    assert secret is not None
    problem = secret_problem(secret)
    if problem:
        raise SecretError(f"{storage.secret_place()}: {problem}")
    return secret
