"""`Client` and `AsyncClient`: the API from Python, credentials, retries and errors handled.

One `httpx.Client` (or `httpx.AsyncClient`) per client keeps its connections open (pooled; a
`Client` is safe to share between threads, an `AsyncClient` between tasks). Each call:

- sends the credentials: an API key (`X-API-Key`), or the access token of a login;
- on 401 `TOKEN_EXPIRED` renews the tokens with the refresh token and sends the call again,
  once. Renewing runs once however many threads (tasks) meet the expired token together
  (single flight): the server rotates a refresh token on use and treats a second use as
  theft, ending the session, so the others wait for the one that renews and use its tokens;
- on 429 and 503 waits and sends again, `Retry-After` seconds when the server says (else a
  doubling pause with jitter), as long as the next try starts within `retry_seconds` of the
  first; a GET is also tried again when the connection fails. Otherwise it raises the error of
  the answer's code family (`errors.py`).

The two clients share every call (`_Api`, `Keys`, `Jobs`): each call returns what the client's
`_call` returns, a value for `Client` and an awaitable for `AsyncClient`; only sending, waiting
and the loops (`wait`, `list`) are written twice. The clock and the pause are injectable
(`clock=`, `sleep=`), so that tests need not wait.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from .errors import ConnectionFailed, ServerError, error_for

FINISHED = frozenset({"completed", "failed", "cancelled"})
RETRIED_STATUSES = frozenset({429, 503})
PAGE = 500


@dataclass
class _Attempt:
    """One call's tries: what to do with each answer (`judge`)."""

    method: str
    deadline: float
    clock: Callable[[], float]
    renewed: bool = False
    tries: int = 0
    sent_token: str | None = field(default=None)

    def judge(self, answer: httpx.Response | Exception, pick: str | None) -> tuple[str, Any]:
        """("answer", the JSON answer), ("renew", None) or ("pause", seconds); else raises."""
        if isinstance(answer, Exception):
            error: ServerError = ConnectionFailed(0, "CONNECTION_FAILED", str(answer))
        elif answer.is_success:
            value = answer.json() if answer.content else None
            return "answer", value[pick] if pick else value
        else:
            error = error_for(answer.status_code, _body(answer), answer.headers)
        if error.code == "TOKEN_EXPIRED" and self.sent_token is not None and not self.renewed:
            self.renewed = True
            return "renew", None
        pause = _pause(error, self.method, self.tries)
        if pause is None or self.clock() + pause > self.deadline:
            raise error
        self.tries += 1
        return "pause", pause


def _pause(error: ServerError, method: str, tries: int) -> float | None:
    """How long to wait before trying `error`'s call again; None: do not."""
    if error.status in RETRIED_STATUSES or (error.status == 0 and method == "GET"):
        if error.retry_after is not None:
            return error.retry_after
        return min(8.0, 0.25 * 2**tries) * random.uniform(0.5, 1.0)
    return None


class _Api:
    """The calls both clients make, and what they hold: the server, the credentials, the
    retry deadline, the clock and the pause."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None,
        retry_seconds: float,
        clock: Callable[[], float],
        sleep: Callable[[float], Any],
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry_seconds = retry_seconds
        self._api_key = api_key
        self._tokens: Any = None  # a login's, once logged in
        self._clock, self._sleep = clock, sleep

    def _call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        pick: str | None = None,
        signed: bool = True,
    ) -> Any:
        raise NotImplementedError

    def predict(self, data: Any, *, model: str | None = None) -> Any:
        """Predictions for `data` (a list of samples) by `model` (default: the server's)."""
        return self._call("POST", "/predict", json=_without_none(data=data, model=model))

    def predict_batch(self, inputs: list[Any], *, model: str | None = None) -> Any:
        """One answer per input (`predictions`, or its own `error`)."""
        return self._call("POST", "/predict/batch", json=_without_none(inputs=inputs, model=model))

    def models(self) -> Any:
        """The models these credentials may call."""
        return self._call("GET", "/models", pick="models")

    def me(self) -> Any:
        """Your profile, with today's usage and what is left of your quotas."""
        return self._call("GET", "/auth/me")

    def usage(self, **query: Any) -> Any:
        """Your usage (`from_`, `to`, `group_by`: day, hour, model or key) and quotas."""
        params = {name.rstrip("_"): value for name, value in query.items() if value is not None}
        return self._call("GET", "/auth/usage", params=params)

    def _credentials(self) -> tuple[dict[str, str], str | None]:
        if self._tokens is not None:
            token = self._tokens.access
            return {"Authorization": f"Bearer {token}"}, token
        if self._api_key is not None:
            return {"X-API-Key": self._api_key}, None
        return {}, None


class Keys:
    """Your API keys: `client.keys.create(...)`, `.list()`, `.revoke(id)`."""

    def __init__(self, client: _Api) -> None:
        self._client = client

    def create(
        self,
        name: str,
        *,
        description: str | None = None,
        scopes: list[str] | None = None,
        models: list[str] | None = None,
        expires_days: int | None = None,
        rate_limit: str | None = None,
        max_concurrent: int | None = None,
    ) -> Any:
        """A new key; its secret (`key`) is in this answer only."""
        body = _without_none(
            name=name,
            description=description,
            scopes=scopes,
            models=models,
            expires_days=expires_days,
            rate_limit=rate_limit,
            max_concurrent=max_concurrent,
        )
        return self._client._call("POST", "/auth/api-keys", json=body)

    def list(self) -> Any:
        return self._client._call("GET", "/auth/api-keys", pick="keys")

    def revoke(self, key_id: str) -> Any:
        return self._client._call("DELETE", f"/auth/api-keys/{key_id}")


class Jobs:
    """Your prediction jobs: `client.jobs.submit(...)`, `.wait(id)`, `.result(id)`, ..."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def submit(
        self,
        inputs: list[Any] | None = None,
        *,
        data: list[Any] | None = None,
        model: str | None = None,
        project: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Any:
        """Submit `inputs` (as `predict_batch` takes them) or `data` (samples, each one input)."""
        body = _without_none(
            inputs=inputs, data=data, model=model, project=project, metadata=metadata
        )
        return self._client._call("POST", "/jobs", json=body)

    def get(self, job_id: str) -> Any:
        return self._client._call("GET", f"/jobs/{job_id}")

    def result(self, job_id: str) -> Any:
        """Its answers so far: `results` (one per input), `succeeded`, `failed`, `partial`."""
        return self._client._call("GET", f"/jobs/{job_id}/result")

    def cancel(self, job_id: str) -> Any:
        return self._client._call("POST", f"/jobs/{job_id}/cancel")

    def delete(self, job_id: str) -> Any:
        return self._client._call("DELETE", f"/jobs/{job_id}")

    def list(self, *, status: str | None = None, project: str | None = None) -> list[dict]:
        """Your jobs, newest first (every page)."""
        found: list[dict] = []
        while True:
            page = self._client._call("GET", "/jobs", params=_page(status, project, found))
            found += page["jobs"]
            if not page["jobs"] or len(found) >= page["total"]:
                return found

    def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        poll_seconds: float = 1.0,
        progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll the job until it has finished (completed, failed or cancelled) and answer it;
        `progress(job)` after each poll; TimeoutError after `timeout` seconds."""
        client = self._client
        started = client._clock()
        while True:
            job = self.get(job_id)
            if _finished(job, progress, started, client._clock(), timeout, poll_seconds):
                return job
            client._sleep(poll_seconds)


class AsyncJobs(Jobs):
    """`Jobs` for `AsyncClient`: every call awaitable."""

    async def list(self, *, status: str | None = None, project: str | None = None) -> list[dict]:  # type: ignore[override]
        found: list[dict] = []
        while True:
            page = await self._client._call("GET", "/jobs", params=_page(status, project, found))
            found += page["jobs"]
            if not page["jobs"] or len(found) >= page["total"]:
                return found

    async def wait(  # type: ignore[override]
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        poll_seconds: float = 1.0,
        progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        client = self._client
        started = client._clock()
        while True:
            job = await self.get(job_id)
            if _finished(job, progress, started, client._clock(), timeout, poll_seconds):
                return job
            await client._sleep(poll_seconds)


class Client(_Api):
    """The server at `base_url`, called with `api_key` (or use `Client.login`)."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        retry_seconds: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(
            base_url, api_key=api_key, retry_seconds=retry_seconds, clock=clock, sleep=sleep
        )
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, transport=transport)
        self.keys = Keys(self)
        self.jobs = Jobs(self)

    @classmethod
    def login(cls, base_url: str, username: str, password: str, **options: Any) -> Client:
        """A client of `username`'s session (`username` may be an email)."""
        client = cls(base_url, **options)
        try:
            answer = client._call("POST", "/auth/login", json=_login(username, password))
        except BaseException:
            client.close()
            raise
        client._tokens = _Tokens(answer)
        return client

    def logout(self) -> None:
        """End this login's session (its tokens stop working everywhere)."""
        if self._tokens is not None:
            self._call("POST", "/auth/logout")
            self._tokens = None

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        pick: str | None = None,
        signed: bool = True,
    ) -> Any:
        attempt = _Attempt(method, self._clock() + self.retry_seconds, self._clock)
        while True:
            headers, attempt.sent_token = self._credentials() if signed else ({}, None)
            try:
                answer: Any = self._http.request(
                    method, path, json=json, params=params, headers=headers
                )
            except httpx.TransportError as exc:
                answer = exc
            verdict, value = attempt.judge(answer, pick)
            if verdict == "answer":
                return value
            if verdict == "renew":
                assert self._tokens is not None and attempt.sent_token is not None
                self._tokens.renew(self, attempt.sent_token)
            else:
                self._sleep(value)


class AsyncClient(_Api):
    """`Client`'s twin for asyncio: the same calls, each awaited."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        retry_seconds: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        super().__init__(
            base_url, api_key=api_key, retry_seconds=retry_seconds, clock=clock, sleep=sleep
        )
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout, transport=transport)
        self.keys = Keys(self)
        self.jobs = AsyncJobs(self)

    @classmethod
    async def login(
        cls, base_url: str, username: str, password: str, **options: Any
    ) -> AsyncClient:
        client = cls(base_url, **options)
        try:
            answer = await client._call("POST", "/auth/login", json=_login(username, password))
        except BaseException:
            await client.close()
            raise
        client._tokens = _AsyncTokens(answer)
        return client

    async def logout(self) -> None:
        if self._tokens is not None:
            await self._call("POST", "/auth/logout")
            self._tokens = None

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        pick: str | None = None,
        signed: bool = True,
    ) -> Any:
        attempt = _Attempt(method, self._clock() + self.retry_seconds, self._clock)
        while True:
            headers, attempt.sent_token = self._credentials() if signed else ({}, None)
            try:
                answer: Any = await self._http.request(
                    method, path, json=json, params=params, headers=headers
                )
            except httpx.TransportError as exc:
                answer = exc
            verdict, value = attempt.judge(answer, pick)
            if verdict == "answer":
                return value
            if verdict == "renew":
                assert self._tokens is not None and attempt.sent_token is not None
                await self._tokens.renew(self, attempt.sent_token)
            else:
                await self._sleep(value)


class _Tokens:
    """A login's tokens, renewed by one thread at a time."""

    def __init__(self, answer: dict[str, Any]) -> None:
        self.access: str = answer["access_token"]
        self.refresh: str = answer["refresh_token"]
        self._lock = threading.Lock()

    def _keep(self, answer: dict[str, Any]) -> None:
        self.access, self.refresh = answer["access_token"], answer["refresh_token"]

    def renew(self, client: Client, expired: str) -> None:
        """Renew the tokens, unless another thread has since `expired` was sent."""
        with self._lock:
            if self.access == expired:  # else renewed while this thread waited: use it
                body = {"refresh_token": self.refresh}  # sent unsigned: never renewed again
                self._keep(client._call("POST", "/auth/refresh", json=body, signed=False))


class _AsyncTokens(_Tokens):
    """A login's tokens, renewed by one task at a time."""

    def __init__(self, answer: dict[str, Any]) -> None:
        super().__init__(answer)
        self._async_lock = asyncio.Lock()

    async def renew(self, client: AsyncClient, expired: str) -> None:  # type: ignore[override]
        async with self._async_lock:
            if self.access == expired:
                body = {"refresh_token": self.refresh}
                self._keep(await client._call("POST", "/auth/refresh", json=body, signed=False))


def _finished(
    job: dict[str, Any],
    progress: Callable[[dict[str, Any]], None] | None,
    started: float,
    now: float,
    timeout: float | None,
    poll_seconds: float,
) -> bool:
    """Whether polling `job` is over; TimeoutError if another poll would pass `timeout`."""
    if progress is not None:
        progress(job)
    if job["status"] in FINISHED:
        return True
    if timeout is not None and now - started + poll_seconds > timeout:
        raise TimeoutError(f"job {job['id']} is still {job['status']} after {timeout} s")
    return False


def _page(status: str | None, project: str | None, found: list[dict]) -> dict[str, Any]:
    return {**_without_none(status=status, project=project), "limit": PAGE, "offset": len(found)}


def _login(username: str, password: str) -> dict[str, str]:
    return {"username": username, "password": password}


def _without_none(**fields: Any) -> dict[str, Any]:
    return {name: value for name, value in fields.items() if value is not None}


def _body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None
