"""GET /openapi.json and GET /docs: every route described, security read from the code, the page
served from this server alone (checked in a real headless Chromium)."""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest
import requests

from auth.decorators import PUBLIC_ATTR, SCOPES_ATTR
from tests.conftest import assert_error
from tests.live import CHROMIUM, CHROMIUM_FLAGS, live_server

HIDDEN = {"HEAD", "OPTIONS"}


def _openapi_path(rule: str) -> str:
    return re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule)


def test_every_route_is_described_and_every_description_is_a_route(app, client):
    paths = client.get("/openapi.json").get_json()["paths"]
    routes = {
        (_openapi_path(rule.rule), method.lower())
        for rule in app.url_map.iter_rules()
        for method in rule.methods - HIDDEN
    }
    described = {(path, method) for path, ops in paths.items() for method in ops}
    assert described == routes
    assert len(routes) >= 25


def test_every_guarded_operation_declares_the_scopes_its_decorator_enforces(app, client):
    paths = client.get("/openapi.json").get_json()["paths"]
    guarded = 0
    for rule in app.url_map.iter_rules():
        view = app.view_functions[rule.endpoint]
        for method in rule.methods - HIDDEN:
            operation = paths[_openapi_path(rule.rule)][method.lower()]
            if getattr(view, PUBLIC_ATTR, False):
                assert operation["security"] == [], rule.rule
                continue
            scopes = sorted(getattr(view, SCOPES_ATTR, ()))
            assert operation["security"] == [{"bearerAuth": scopes}, {"apiKeyAuth": scopes}]
            assert {"401", "429"} <= set(operation["responses"]), rule.rule
            assert ("403" in operation["responses"]) == bool(scopes), rule.rule
            guarded += 1
    assert guarded >= 18


def test_error_answers_carry_the_codes_of_their_status(client):
    spec = client.get("/openapi.json").get_json()
    login = spec["paths"]["/auth/login"]["post"]["responses"]["401"]
    schema = login["content"]["application/json"]["schema"]
    codes = schema["properties"]["error"]["properties"]["code"]["enum"]
    assert "INVALID_CREDENTIALS" in codes and "TOKEN_EXPIRED" in codes
    assert set(spec["components"]["securitySchemes"]) == {"bearerAuth", "apiKeyAuth"}
    assert spec["openapi"] == "3.1.0"


def test_simple_mode_describes_the_same_routes_without_security(make_app):
    spec = make_app(auth={"enabled": False}).test_client().get("/openapi.json").get_json()
    assert "securitySchemes" not in spec["components"]
    operations = [op for ops in spec["paths"].values() for op in ops.values()]
    assert operations and all(op["security"] == [] for op in operations)


def test_docs_enabled_false_leaves_both_routes_out(make_app):
    client = make_app(docs={"enabled": False}).test_client()
    for path in ("/openapi.json", "/docs"):
        assert_error(client.get(path), 404, "NOT_FOUND")


def test_the_page_and_its_assets_need_no_credentials_and_no_other_host(client):
    page = client.get("/docs")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert "//" not in html  # every reference is relative to this server
    assert "validatorUrl: null" in html  # no validator badge fetched from swagger.io
    for asset in re.findall(r'(?:src|href)="([^"]+)"', html):
        with client.get(f"/{asset}") as served:  # a file answer: closed when read
            assert served.status_code == 200, asset
    assert_error(client.get("/docs/index.html"), 404, "NOT_FOUND")  # only the listed assets


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/predict", {"modle": "demo", "data": [[1.0, 2.0, 3.0]]}, "modle"),
        ("/predict/batch", {"inputs": [[[1.0, 2.0, 3.0]]], "model": "demo", "x": 1}, "x"),
        ("/auth/api-keys", {"name": "k", "expires": 30}, "expires"),
        (
            "/auth/login",
            {"username": "admin", "password": "admin123", "remember": True},
            "remember",
        ),
    ],
)
def test_a_field_the_endpoint_does_not_take_is_refused_by_name(actor, path, body, field):
    answer = actor.client.post(path, json=body, headers=actor.admin_headers())
    error = assert_error(answer, 400, "VALIDATION_ERROR")
    assert error["details"]["field"] == field and repr(field) in error["message"]


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it)")
def test_the_docs_page_renders_every_operation_in_a_real_browser_without_leaving_the_server(
    tmp_path,
):
    with live_server(tmp_path / "data") as server:
        net_log = tmp_path / "net.json"
        shown = subprocess.run(
            [
                CHROMIUM,
                "--headless",
                *CHROMIUM_FLAGS,
                f"--user-data-dir={tmp_path / 'profile'}",
                f"--log-net-log={net_log}",
                "--virtual-time-budget=15000",
                "--dump-dom",
                server.url("/docs"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        dom = shown.stdout
    assert 'data-path="/predict"' in dom and 'data-path="/auth/login"' in dom
    assert "btn authorize" in dom  # the Authorize button: both security schemes
    # What the page asked for (Chromium's own background requests have no page origin).
    log = json.loads(net_log.read_text())
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    asked = {
        event["params"]["url"]
        for event in log["events"]
        if event["type"] == start and event.get("params", {}).get("initiator") == server.base
    }
    assert (
        server.url("/openapi.json") in asked and server.url("/docs/swagger-ui-bundle.js") in asked
    )
    assert all(url.startswith(server.base + "/") for url in asked), asked


# Operations whose example cannot succeed as it stands: it names a file on your own host.
NEEDS_YOUR_OWN = {("POST", "/models/download")}


@pytest.mark.slow
def test_every_pre_filled_example_succeeds_against_a_new_server(tmp_path):
    """Each operation executed as the docs page pre-fills it, on a new server, in the order a
    newcomer would go (log in as the default admin, change its password, ...): 2xx. Only what
    no page can pre-fill is filled in: ids made along the way and the refresh token."""
    with live_server(tmp_path / "data") as server:
        document = requests.get(server.url("/openapi.json"), timeout=60).json()
        operations = {
            (method.upper(), path): operation
            for path, methods in document["paths"].items()
            for method, operation in methods.items()
        }
        made: dict[str, str] = {}
        headers: dict[str, str] = {}
        done = set()

        def execute(method: str, path: str, **filled: str) -> requests.Response:
            operation = operations[(method, path)]
            content = operation.get("requestBody", {}).get("content", {})
            example = content.get("application/json", {}).get("example")
            assert "requestBody" not in operation or example is not None, (method, path)
            body = {**example, **filled} if example is not None else None
            params = {
                p["name"]: p["example"] if "example" in p else made[p["name"]]
                for p in operation.get("parameters", [])
                if p["in"] == "path"
            }
            answer = requests.request(
                method, server.url(path.format(**params)), json=body, headers=headers, timeout=60
            )
            assert 200 <= answer.status_code < 300, (method, path, answer.text)
            done.add((method, path))
            return answer

        tokens = execute("POST", "/auth/login").json()
        headers["Authorization"] = f"Bearer {tokens['access_token']}"
        execute("POST", "/auth/change-password")
        made["user_id"] = execute("POST", "/auth/register").json()["user_id"]
        for method, path in (
            ("GET", "/admin/users"),
            ("GET", "/admin/users/{user_id}"),
            ("PATCH", "/admin/users/{user_id}"),
            ("POST", "/admin/users/{user_id}/reset-password"),
        ):
            execute(method, path)
        made["key_id"] = execute("POST", "/auth/api-keys").json()["id"]
        for method, path in (
            ("GET", "/auth/api-keys"),
            ("PATCH", "/auth/api-keys/{key_id}"),
            ("GET", "/models"),
            ("GET", "/models/{name}"),
            ("POST", "/models/manage"),
            ("POST", "/predict"),
            ("POST", "/{model_name}/predict"),
            ("POST", "/predict/batch"),
        ):
            execute(method, path)
        with server.consumer_paused(tmp_path / "data"):  # the jobs stay queued: one is cancelled
            made["job_id"] = kept = execute("POST", "/jobs").json()["id"]
            made["job_id"] = execute("POST", "/jobs").json()["id"]
            execute("POST", "/jobs/{job_id}/cancel")
        made["job_id"] = kept
        deadline = time.monotonic() + 60
        while execute("GET", "/jobs/{job_id}").json()["status"] != "completed":
            assert time.monotonic() < deadline
        for method, path in (
            ("GET", "/jobs"),
            ("GET", "/jobs/{job_id}/result"),
            ("DELETE", "/jobs/{job_id}"),
            ("GET", "/auth/me"),
            ("GET", "/auth/usage"),
            ("GET", "/admin/usage"),
            ("GET", "/admin/api-keys"),
            ("GET", "/metrics"),
            ("GET", "/health"),
            ("GET", "/ready"),
            ("GET", "/openapi.json"),
            ("GET", "/docs"),
            ("GET", "/docs/{asset}"),
            ("GET", "/console"),
            ("GET", "/console/{asset}"),
        ):
            execute(method, path)
        renewed = execute("POST", "/auth/refresh", refresh_token=tokens["refresh_token"]).json()
        headers["Authorization"] = f"Bearer {renewed['access_token']}"
        execute("DELETE", "/auth/api-keys/{key_id}")
        execute("DELETE", "/admin/users/{user_id}")
        execute("POST", "/auth/logout")
    assert set(operations) - done == NEEDS_YOUR_OWN
