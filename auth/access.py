"""Which models a credential may call: the `models` lists of its user and of its key.

A user (set by an admin) and a key (set by its owner, within their own rights) may each carry
`models`: model names or glob patterns (`churn-*`; `*` any run of characters, `?` one). No list
means every model. A request may call a model only if every list its credential carries allows
it: the user's, and the key's (the key presented, or the key a session was started with). The
application checks once, where it chooses the model for any route (`Principal.check_model`), on
the name asked for before it looks the model up, so a model that may not be called answers 403
whether or not it exists.

Matching is case-sensitive, as model names are, and cached: a service calls the same model on
every request.
"""

from __future__ import annotations

import re
from fnmatch import fnmatchcase
from functools import lru_cache
from typing import Any

from .errors import PermissionDenied, ValidationError

PATTERN = re.compile(r"^[A-Za-z0-9_.*?-]{1,64}$")
MAX_PATTERNS = 100
GLOB = frozenset("*?")

Rules = tuple[tuple[str, ...], ...]  # one list per layer (user, key); every one must allow


def check_models(value: Any, field: str = "models") -> list[str] | None:
    """`value` as a list of model names and patterns (None: every model); 400 otherwise."""
    if value is None:
        return None
    if not isinstance(value, list) or not value or len(value) > MAX_PATTERNS:
        raise ValidationError(
            f"'{field}' must be null (every model) or a list of 1 to {MAX_PATTERNS} model names "
            "or patterns such as 'churn-*'",
            details={"field": field},
        )
    for item in value:
        if not isinstance(item, str) or not PATTERN.fullmatch(item):
            raise ValidationError(
                f"'{field}' holds {item!r}: a model name or pattern is 1-64 letters, digits, "
                "'_', '.', '-', with '*' for any run of characters and '?' for one",
                details={"field": field},
            )
    return sorted(set(value))


def pattern_list(value: Any) -> str | None:
    """The check of a stored `models` list (`storage.shapes`)."""
    if value and all(isinstance(v, str) and PATTERN.fullmatch(v) for v in value):
        return None
    return "a non-empty list of model names or patterns such as 'churn-*'"


def rules_of(*records: dict[str, Any] | None) -> Rules:
    """The model lists that `records` (a user, a key) carry, in order."""
    return tuple(tuple(record["models"]) for record in records if record and record.get("models"))


@lru_cache(maxsize=4096)
def _allows(patterns: tuple[str, ...], name: str) -> bool:
    return any(fnmatchcase(name, pattern) for pattern in patterns)


def allows(rules: Rules, name: str) -> bool:
    """True if every layer of `rules` lets `name` be called."""
    return all(_allows(patterns, name) for patterns in rules)


def covered(rules: Rules, pattern: str) -> bool:
    """True if a key may carry `pattern` when made or changed by a credential bound by `rules`:
    the pattern is one of each layer's own, or a plain name each layer allows."""
    if not GLOB.isdisjoint(pattern):
        return all(pattern in patterns for patterns in rules)
    return allows(rules, pattern)


def within(
    rules: Rules, models: list[str] | None, *, inherited: list[str] | None
) -> list[str] | None:
    """The `models` a key gets from a credential bound by `rules` (403 for a pattern it could
    not grant). With none asked for, the key takes `inherited`, the list of the key the
    credential was made from, so a restricted key never makes an unrestricted one (the user's
    own list binds every key of theirs anyway)."""
    if models is None:
        return inherited
    beyond = [pattern for pattern in models if not covered(rules, pattern)]
    if beyond:
        raise PermissionDenied(
            f"a key cannot be given models the credential changing it may not call: "
            f"{', '.join(beyond)}",
            details={"field": "models", "allowed": [list(layer) for layer in rules]},
        )
    return models
