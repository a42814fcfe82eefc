"""JSON Schemas of the /auth and /admin bodies and answers, for the API description.

Bounds and enums are the ones the code checks (`users.USERNAME`, `passwords`, `inputs.text`
lengths, `ALL_SCOPES`, `ROLE_SCOPES`); a request body declares `additionalProperties: false`
and the server refuses any other field by name (`inputs.refuse_unknown_fields`).
"""

from __future__ import annotations

from typing import Any

from .access import MAX_PATTERNS, PATTERN
from .api_keys import MAX_CONCURRENT
from .ledger import GROUPS
from .passwords import MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH
from .quotas import QUOTAS
from .users import ALL_SCOPES, ROLE_SCOPES

Schema = dict[str, Any]

TIMESTAMP = {"type": "string", "format": "date-time"}
NULLABLE_TIMESTAMP = {"type": ["string", "null"], "format": "date-time"}
ROLE = {"type": "string", "enum": sorted(ROLE_SCOPES)}
SCOPE = {"type": "string", "enum": sorted(ALL_SCOPES)}
PASSWORD = {"type": "string", "minLength": 1, "maxLength": MAX_PASSWORD_LENGTH}
NEW_PASSWORD = {
    **PASSWORD,
    "minLength": MIN_PASSWORD_LENGTH,
    "description": "at least auth.password_min_length characters, not a common password",
}
USERNAME = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{2,31}$"}
EMAIL = {"type": "string", "format": "email", "maxLength": 255}
MODELS = {
    "type": ["array", "null"],
    "items": {"type": "string", "pattern": PATTERN.pattern},
    "minItems": 1,
    "maxItems": MAX_PATTERNS,
    "description": "model names or glob patterns ('churn-*') it may call; null: every model "
    "(for a key made or changed through a restricted key: that key's list)",
}
RATE_LIMIT = {
    "anyOf": [{"type": "integer", "minimum": 1}, {"type": "string"}, {"type": "null"}],
    "description": "requests per minute, or a limit such as '1000/hour'; null = the role's",
}


def body(properties: Schema, *required: str, **extra: Any) -> Schema:
    """A request body: an object of exactly these fields."""
    schema: Schema = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = list(required)
    return {**schema, **extra}


def answer(properties: Schema, *required: str) -> Schema:
    """An answer: an object holding at least the `required` fields."""
    return {"type": "object", "properties": properties, "required": list(required or properties)}


MESSAGE = answer({"message": {"type": "string"}})

# -- requests ----------------------------------------------------------------------------------

REGISTER = body(
    {
        "username": USERNAME,
        "password": NEW_PASSWORD,
        "email": EMAIL,
        "full_name": {"type": ["string", "null"], "minLength": 1, "maxLength": 200},
        "role": ROLE,
    },
    "username",
    "password",
    "email",
)
LOGIN = body(
    {
        "username": {
            "type": "string",
            "minLength": 1,
            "maxLength": 256,
            "description": "your username; or send `email` instead",
        },
        "email": {
            "type": "string",
            "minLength": 1,
            "maxLength": 256,
            "description": "your email, instead of `username`",
        },
        "password": {**PASSWORD, "description": "with `username` or `email`"},
        "api_key": {
            "type": "string",
            "minLength": 1,
            "description": "alone, instead of a username and password: tokens for an API key",
        },
    },
    anyOf=[
        {"required": ["username", "password"]},
        {"required": ["email", "password"]},
        {"required": ["api_key"]},
    ],
)
REFRESH = body({"refresh_token": {"type": "string", "minLength": 1}}, "refresh_token")
CHANGE_PASSWORD = body(
    {"current_password": PASSWORD, "new_password": NEW_PASSWORD},
    "current_password",
    "new_password",
)
KEY_NAME = {"type": "string", "minLength": 1, "maxLength": 100}
TIER = {"type": ["string", "null"], "minLength": 1, "maxLength": 100}
QUOTA_OVERRIDE = {
    "type": ["object", "null"],
    "properties": {name: {"type": "integer", "minimum": 0} for name in QUOTAS},
    "additionalProperties": False,
}
KEY_DESCRIPTION = {"type": ["string", "null"], "minLength": 1, "maxLength": 500}
KEY_LIMITS = {
    "models": MODELS,
    "rate_limit": {
        **RATE_LIMIT,
        "description": "at most the owner's own rate limit (and that of the key it was made "
        "through or changed with); null: only the owner's (or that key's)",
    },
    "max_concurrent": {
        "type": ["integer", "null"],
        "minimum": 1,
        "maximum": MAX_CONCURRENT,
        "description": "predictions this key may have in flight at once; null: no limit (or "
        "that of the key it was made through or changed with)",
    },
}
CREATE_KEY = body(
    {
        "name": KEY_NAME,
        "description": KEY_DESCRIPTION,
        "expires_days": {"type": ["integer", "null"], "minimum": 1, "maximum": 3650},
        "scopes": {"type": ["array", "null"], "items": SCOPE},
        **KEY_LIMITS,
    },
    "name",
)
UPDATE_KEY = body({"name": KEY_NAME, "description": KEY_DESCRIPTION, **KEY_LIMITS}, minProperties=1)
UPDATE_USER = body(
    {
        "role": ROLE,
        "is_active": {"type": "boolean"},
        "rate_limit": RATE_LIMIT,
        "models": MODELS,
        "tier": {**TIER, "description": "a tier of quotas.tiers; null: quotas.default_tier"},
        "quota": {
            **QUOTA_OVERRIDE,
            "description": "quotas of this user's own, over their tier's; null: none",
        },
        "email": EMAIL,
        "full_name": {"type": ["string", "null"], "maxLength": 200},
    },
    minProperties=1,
)
RESET_PASSWORD = body({"new_password": NEW_PASSWORD}, "new_password")

# -- answers -----------------------------------------------------------------------------------

QUOTA_STATE = answer(
    {
        "quota": {"type": "string", "enum": list(QUOTAS)},
        "limit": {"type": "integer"},
        "used": {"type": "integer"},
        "remaining": {"type": "integer"},
        "resets_at": TIMESTAMP,
    }
)
USAGE_TODAY = answer(
    {
        "today": answer({"requests": {"type": "integer"}, "samples": {"type": "integer"}}),
        "quotas": {"type": "array", "items": QUOTA_STATE},
    }
)
USAGE_FIGURES = {
    "requests": {"type": "integer", "description": "predictions, whatever their answer"},
    "failed": {"type": "integer", "description": "those answered 4xx or 5xx"},
    "samples": {"type": "integer", "description": "samples of the answered ones"},
    "inference_ms": {"type": "number"},
}
USAGE = answer(
    {
        "user_id": {"type": ["string", "null"]},
        "from": {"type": "string", "format": "date"},
        "to": {"type": "string", "format": "date"},
        "group_by": {"type": "string", "enum": list(GROUPS)},
        "rows": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    **{group: {"type": "string"} for group in GROUPS},
                    **USAGE_FIGURES,
                },
                "required": list(USAGE_FIGURES),
            },
        },
        "totals": answer(USAGE_FIGURES),
        "quotas": {"type": "array", "items": QUOTA_STATE},
    }
)
USAGE_QUERY = {
    "from": {
        "type": "string",
        "format": "date",
        "description": "first day (UTC); default: the first of this month",
    },
    "to": {"type": "string", "format": "date", "description": "last day; default: today"},
    "group_by": {"type": "string", "enum": list(GROUPS), "description": "default: day"},
}

TOKENS = answer(
    {
        "access_token": {"type": "string"},
        "refresh_token": {"type": "string"},
        "token_type": {"const": "bearer"},
        "expires_in": {"type": "integer", "description": "seconds the access token lives"},
        "password_change_required": {"type": "boolean"},
        "usage": USAGE_TODAY,
    },
    "access_token",
    "refresh_token",
    "token_type",
    "expires_in",
)
REGISTERED = answer({"message": {"type": "string"}, "user_id": {"type": "string"}})
PROFILE = answer(
    {
        "id": {"type": "string"},
        "username": {"type": "string"},
        "email": {"type": "string"},
        "full_name": {"type": ["string", "null"]},
        "role": ROLE,
        "scopes": {"type": "array", "items": SCOPE},
        "is_active": {"type": "boolean"},
        "must_change_password": {"type": "boolean"},
        "rate_limit": {"type": ["string", "null"]},
        "models": {"type": ["array", "null"], "items": {"type": "string"}},
        "tier": TIER,
        "quota": QUOTA_OVERRIDE,
        "created_at": TIMESTAMP,
        "updated_at": TIMESTAMP,
    }
)
ME = {
    **PROFILE,
    "properties": {
        **PROFILE["properties"],
        "auth_method": {"type": "string", "enum": ["jwt", "api_key"]},
        "usage": USAGE_TODAY,
    },
    "required": [*PROFILE["required"], "auth_method", "usage"],
}
ADMIN_USER = {
    **PROFILE,
    "properties": {**PROFILE["properties"], "api_keys": {"type": "integer", "minimum": 0}},
}
USER_PAGE = answer(
    {
        "users": {"type": "array", "items": PROFILE},
        "total": {"type": "integer"},
        "limit": {"type": "integer"},
        "offset": {"type": "integer"},
    }
)
KEY = answer(
    {
        "id": {"type": "string"},
        "name": {"type": "string"},
        "description": {"type": ["string", "null"]},
        "prefix": {"type": "string"},
        "scopes": {"type": "array", "items": SCOPE},
        "is_active": {"type": "boolean"},
        "created_at": TIMESTAMP,
        "expires_at": NULLABLE_TIMESTAMP,
        "revoked_at": NULLABLE_TIMESTAMP,
        "last_used": NULLABLE_TIMESTAMP,
        "user_id": {"type": "string"},
        "models": {"type": ["array", "null"], "items": {"type": "string"}},
        "rate_limit": {"type": ["string", "null"]},
        "max_concurrent": {"type": ["integer", "null"]},
    }
)
NEW_KEY = {
    **KEY,
    "properties": {
        **KEY["properties"],
        "key": {"type": "string", "description": "the key itself: shown only in this answer"},
    },
    "required": [*KEY["required"], "key"],
}
KEY_LIST = answer({"keys": {"type": "array", "items": KEY}, "total": {"type": "integer"}})
REVOKED = {
    **KEY,
    "properties": {**KEY["properties"], "message": {"type": "string"}},
}
SESSIONS_ENDED = answer({"message": {"type": "string"}, "sessions_ended": {"type": "integer"}})
USER_DELETED = answer({"message": {"type": "string"}, "user_id": {"type": "string"}})
