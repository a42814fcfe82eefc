"""`Client`: the server's API from Python, with its credentials, retries and errors handled.

One `httpx.Client` per `Client` keeps its connections open (pooled, and safe to share between
threads). Each call:

- sends the credentials: an API key (`X-API-Key`), or the access token of a login;
- on 401 `TOKEN_EXPIRED` renews the tokens with the refresh token and sends the call again,
  once. Renewing runs once however many threads meet the expired token together (single
  flight): the server rotates a refresh token on use and treats a second use as theft, ending
  the session, so the threads wait for the one that renews and then use its tokens;
- on 429 and 503 waits and sends again, `Retry-After` seconds when the server says (else a
  doubling pause with jitter), as long as the next try starts within `retry_seconds` of the
  first; a GET is also tried again when the connection fails. Otherwise it raises the error of
  the answer's code family (`errors.py`).

The clock and the pause are injectable (`clock=`, `sleep=`), so that tests need not wait.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from .errors import ConnectionFailed, ServerError, error_for

FINISHED = frozenset({"completed", "failed", "cancelled"})
RETRIED_STATUSES = frozenset({429, 503})


class _Tokens:
    """A login's tokens, renewed by one thread at a time."""

    def __init__(self, answer: dict[str, Any]) -> None:
        self.access: str = answer["access_token"]
        self.refresh: str = answer["refresh_token"]
        self._lock = threading.Lock()

    def renew(self, client: Client, expired: str) -> None:
        """Renew the tokens, unless another thread has since `expired` was sent."""
        with self._lock:
            if self.access != expired:
                return  # renewed while this thread waited: use the new token
            answer = client._call(
                "POST", "/auth/refresh", json={"refresh_token": self.refresh}, signed=False
            )
            self.access, self.refresh = answer["access_token"], answer["refresh_token"]


class Client:
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
        self.base_url = base_url.rstrip("/")
        self.retry_seconds = retry_seconds
        self._api_key = api_key
        self._tokens: _Tokens | None = None
        self._clock, self._sleep = clock, sleep
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, transport=transport)
        self.keys = Keys(self)
        self.jobs = Jobs(self)

    @classmethod
    def login(cls, base_url: str, username: str, password: str, **options: Any) -> Client:
        """A client of `username`'s session (`username` may be an email)."""
        client = cls(base_url, **options)
        try:
            answer = client._call(
                "POST", "/auth/login", json={"username": username, "password": password}
            )
        except BaseException:
            client.close()
            raise
        client._tokens = _Tokens(answer)
        return client

    # -- the API ----------------------------------------------------------------------------

    def predict(self, data: Any, *, model: str | None = None) -> dict[str, Any]:
        """Predictions for `data` (a list of samples) by `model` (default: the server's)."""
        return self._call("POST", "/predict", json=_without_none(data=data, model=model))

    def predict_batch(self, inputs: list[Any], *, model: str | None = None) -> dict[str, Any]:
        """One answer per input (`predictions`, or its own `error`)."""
        return self._call("POST", "/predict/batch", json=_without_none(inputs=inputs, model=model))

    def models(self) -> list[dict[str, Any]]:
        """The models these credentials may call."""
        return self._call("GET", "/models")["models"]

    def me(self) -> dict[str, Any]:
        """Your profile, with today's usage and what is left of your quotas."""
        return self._call("GET", "/auth/me")

    def usage(self, **query: Any) -> dict[str, Any]:
        """Your usage (`from_`, `to`, `group_by`: day, hour, model or key) and quotas."""
        params = {name.rstrip("_"): value for name, value in query.items() if value is not None}
        return self._call("GET", "/auth/usage", params=params)

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

    # -- the calls --------------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        signed: bool = True,
    ) -> Any:
        """Send one call as the module docstring says; its JSON answer."""
        started = self._clock()
        renewed, tries = False, 0
        while True:
            headers, sent_token = self._credentials() if signed else ({}, None)
            try:
                response = self._http.request(
                    method, path, json=json, params=params, headers=headers
                )
            except httpx.TransportError as exc:
                error: ServerError = ConnectionFailed(0, "CONNECTION_FAILED", str(exc))
            else:
                if response.is_success:
                    return response.json() if response.content else None
                error = error_for(response.status_code, _body(response), response.headers)
            if error.code == "TOKEN_EXPIRED" and sent_token is not None and not renewed:
                assert self._tokens is not None
                self._tokens.renew(self, sent_token)
                renewed = True
                continue
            pause = self._pause(error, method, tries)
            if pause is None or self._clock() + pause > started + self.retry_seconds:
                raise error
            self._sleep(pause)
            tries += 1

    def _credentials(self) -> tuple[dict[str, str], str | None]:
        if self._tokens is not None:
            token = self._tokens.access
            return {"Authorization": f"Bearer {token}"}, token
        if self._api_key is not None:
            return {"X-API-Key": self._api_key}, None
        return {}, None

    @staticmethod
    def _pause(error: ServerError, method: str, tries: int) -> float | None:
        """How long to wait before trying `error`'s call again; None: do not."""
        if error.status in RETRIED_STATUSES or (error.status == 0 and method == "GET"):
            if error.retry_after is not None:
                return error.retry_after
            return min(8.0, 0.25 * 2**tries) * random.uniform(0.5, 1.0)
        return None


class Keys:
    """Your API keys: `client.keys.create(...)`, `.list()`, `.revoke(id)`."""

    def __init__(self, client: Client) -> None:
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
    ) -> dict[str, Any]:
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

    def list(self) -> list[dict[str, Any]]:
        return self._client._call("GET", "/auth/api-keys")["keys"]

    def revoke(self, key_id: str) -> dict[str, Any]:
        return self._client._call("DELETE", f"/auth/api-keys/{key_id}")


class Jobs:
    """Your prediction jobs: `client.jobs.submit(...)`, `.wait(id)`, `.result(id)`, ..."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def submit(
        self,
        inputs: list[Any] | None = None,
        *,
        data: list[Any] | None = None,
        model: str | None = None,
        project: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Submit `inputs` (as `predict_batch` takes them) or `data` (samples, each one input)."""
        body = _without_none(
            inputs=inputs, data=data, model=model, project=project, metadata=metadata
        )
        return self._client._call("POST", "/jobs", json=body)

    def get(self, job_id: str) -> dict[str, Any]:
        return self._client._call("GET", f"/jobs/{job_id}")

    def list(self, *, status: str | None = None, project: str | None = None) -> list[dict]:
        """Your jobs, newest first (every page)."""
        return list(self._pages(_without_none(status=status, project=project)))

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
            if progress is not None:
                progress(job)
            if job["status"] in FINISHED:
                return job
            if timeout is not None and client._clock() - started + poll_seconds > timeout:
                raise TimeoutError(f"job {job_id} is still {job['status']} after {timeout} s")
            client._sleep(poll_seconds)

    def result(self, job_id: str) -> dict[str, Any]:
        """Its answers so far: `results` (one per input), `succeeded`, `failed`, `partial`."""
        return self._client._call("GET", f"/jobs/{job_id}/result")

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._client._call("POST", f"/jobs/{job_id}/cancel")

    def delete(self, job_id: str) -> None:
        self._client._call("DELETE", f"/jobs/{job_id}")

    def _pages(self, query: dict[str, Any]) -> Iterator[dict[str, Any]]:
        offset = 0
        while True:
            page = self._client._call(
                "GET", "/jobs", params={**query, "limit": 500, "offset": offset}
            )
            yield from page["jobs"]
            offset += len(page["jobs"])
            if not page["jobs"] or offset >= page["total"]:
                return


def _without_none(**fields: Any) -> dict[str, Any]:
    return {name: value for name, value in fields.items() if value is not None}


def _body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None
