"""A Python client of the inference server: `pip install` this package, then

    from inference_server.client import Client

    with Client("http://127.0.0.1:8000", api_key="sk_live_...") as client:
        print(client.predict([[1.0, 2.0, 3.0]])["predictions"])

or `Client.login(base_url, username, password)` for a session that renews its token by
itself; `AsyncClient` is its twin for asyncio (`await AsyncClient.login(...)`, every call
awaited). Errors are raised as `ServerError` subclasses carrying the server's `code`, `message`,
`request_id` and `details`. Importing it starts nothing and needs nothing of the server's
(httpx only).
"""

from .api import AsyncClient, Client
from .errors import (
    AuthenticationError,
    Conflict,
    ConnectionFailed,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    RateLimited,
    ServerError,
    Unavailable,
    ValidationError,
)

__all__ = [
    "AsyncClient",
    "AuthenticationError",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "NotFound",
    "PayloadTooLarge",
    "PermissionDenied",
    "RateLimited",
    "ServerError",
    "Unavailable",
    "ValidationError",
]
