"""One request pipeline through Flask (issue 20): every request, whatever its credential or
model, passes through the app's own hooks, signals and extensions, and answers the same way.

- an app owner's hooks see every request under gunicorn (`tests/owner_app.py`);
- a failing model is called once per request and answered with one clean 500;
- an owner's route limited with the app's limiter answers like the per-user budget and counts
  in it;
- a plain Flask app adopts the `auth` extension: its static files and pages, public or not;
- CORS preflights answer allowed origins only, and never ask for credentials;
- every request writes exactly one access line, whatever its path or headers hold.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import os
import sys
import threading
import time
import weakref
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import pytest
import requests
from flask import Blueprint, Flask, jsonify
from flask.views import MethodView
from limits import parse
from limits.errors import StorageError
from limits.strategies import SlidingWindowCounterRateLimiter

from auth import Auth, AuthSettings, LimiterConfigError, open_state, public, require_auth
from auth.config import DefaultAdmin
from auth.counting import hit_and_window
from auth.errors import loggable
from auth.limits import PacedMemoryStorage, _ExpiryJob
from inference_server.logs import ACCESS, formatter
from inference_server.models import registry
from tests.conftest import ADMIN, Actor, assert_error, bearer
from tests.live import LiveServer, free_port, live_server, served, server_env

ORIGIN = "http://allowed.example"
ROW = {"data": [[1.0, 2.0, 3.0]]}
LIMIT_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")


# -- an app owner's hooks under gunicorn ------------------------------------------------------


@contextmanager
def owner_server(tmp_path: Path, hook_log: Path) -> Iterator[LiveServer]:
    """`tests.owner_app:app` under gunicorn, two workers of the server's worker class, CORS on
    for ORIGIN; yields once both serve and /health answers, and always stops it."""
    port = free_port()
    env = server_env(
        tmp_path / "data",
        INFERENCE_SERVER__CORS_ORIGINS=f"[{ORIGIN}]",
        OWNER_APP_HOOK_LOG=str(hook_log),
    )
    command = [
        *(sys.executable, "-m", "gunicorn", "-w", "2", "-k", "inference_server.worker.Worker"),
        *("--bind", f"127.0.0.1:{port}", "--no-control-socket", "tests.owner_app:app"),
    ]
    with served(command, env, port, workers=2) as server:
        assert requests.get(server.url("/health"), timeout=60).status_code == 200
        yield server


@pytest.mark.slow
def test_an_owners_hooks_and_cors_see_every_prediction_under_gunicorn(tmp_path):
    hook_log = tmp_path / "hooks.log"
    with owner_server(tmp_path, hook_log) as server:
        credentials = server.admin_credentials()  # the default admin, from loopback
        answers = {}
        for kind in ("api-key", "jwt"):
            for i in range(20):
                rid = f"owner-{kind}-{i}"
                headers = {**credentials[kind], "X-Request-ID": rid, "Origin": ORIGIN}
                answers[rid] = requests.post(
                    server.url("/predict"), json=ROW, headers=headers, timeout=60
                )
        blocked = requests.post(
            server.url("/predict"),
            json=ROW,
            headers={**credentials["api-key"], "X-Block": "yes", "X-Request-ID": "owner-blocked"},
            timeout=60,
        )
        log_text = "".join(server.log)
    for rid, answer in answers.items():
        assert answer.status_code == 200, (rid, answer.text[:300])
        assert answer.headers["X-Request-ID"] == rid
        assert answer.headers["X-Owner"] == "seen"
        assert answer.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert blocked.status_code == 403 and blocked.json() == {"blocked": True}
    assert blocked.headers["X-Owner"] == "seen"  # the owner's after hook runs on its own answer
    seen = Counter(hook_log.read_text().splitlines())
    for rid in answers:
        assert (seen[f"request_started {rid}"], seen[f"teardown {rid}"]) == (1, 1), rid
    assert "Traceback" not in log_text


# -- a model that fails ------------------------------------------------------------------------


def test_a_failing_model_is_called_once_per_request_and_answers_one_clean_500(
    make_app, monkeypatch, caplog
):
    calls = []
    failing = {"now": True}
    builtin = registry.LOADERS["builtin"]

    def load(spec):
        model = builtin(spec)

        def run(batch):
            calls.append(len(batch))
            if failing["now"]:
                raise RuntimeError("the model broke")
            return model.run(batch)

        return dataclasses.replace(model, run=run)

    monkeypatch.setitem(registry.LOADERS, "builtin", load)
    client = make_app().test_client()
    headers = Actor(client).admin_headers()

    def predict_failing(n):
        for _ in range(n):
            before = len(calls)
            with caplog.at_level(logging.ERROR, logger="auth.errors"):
                caplog.clear()
                assert_error(
                    client.post("/predict", json=ROW, headers=headers), 500, "INTERNAL_ERROR"
                )
            assert len(calls) == before + 1
            # One line for the operator naming the failure, no traceback (it could carry data).
            [record] = [r for r in caplog.records if r.levelno >= logging.ERROR]
            assert "RuntimeError" in record.getMessage() and record.exc_info is None

    predict_failing(3)  # a model the server knows nothing about yet
    failing["now"] = False
    assert client.post("/predict", json=ROW, headers=headers).status_code == 200  # now known fast
    failing["now"] = True
    predict_failing(3)
    assert len(calls) == 7


# -- an owner's route under the app's limiter ---------------------------------------------------


def test_an_owners_limited_route_answers_like_the_budget_and_counts_in_it(make_app):
    app = make_app(auth={"rate_limit_per_minute": 5})
    limiter = app.extensions["auth"].limiter

    @app.get("/reports")
    @require_auth
    @limiter.limit("3/minute")
    def reports():
        return {"reports": []}

    actor = Actor(app.test_client())
    alice = actor.user_headers("alice")  # a user: 5 requests a minute in all

    served = [actor.client.get("/reports", headers=alice) for _ in range(3)]
    assert [r.status_code for r in served] == [200] * 3
    assert [r.headers["X-RateLimit-Limit"] for r in served] == ["3"] * 3
    assert [r.headers["X-RateLimit-Remaining"] for r in served] == ["2", "1", "0"]
    # The three reports came out of alice's budget too: one request of five is left.
    predicted = actor.predict(alice)
    assert predicted.status_code == 200
    assert [predicted.headers[name] for name in LIMIT_HEADERS[:2]] == ["5", "1"]

    # The fifth request of alice's five: the budget lets it through, the route's limit does not.
    route_refusal = actor.client.get("/reports", headers=alice)
    budget_refusal = actor.predict(alice)
    for response, limit in ((route_refusal, "3"), (budget_refusal, "5")):
        error = assert_error(response, 429, "RATE_LIMIT_EXCEEDED")
        assert error["message"].startswith(f"rate limit of {limit}")
        assert response.headers["X-RateLimit-Limit"] == limit
        assert response.headers["X-RateLimit-Remaining"] == "0"
        assert int(response.headers["X-RateLimit-Reset"]) > 0
        assert int(response.headers["Retry-After"]) > 0
        assert [response.headers.getlist(name) for name in LIMIT_HEADERS] == [
            [response.headers[name]] for name in LIMIT_HEADERS
        ]  # one set of limit headers, not the route's and the budget's


# -- a plain Flask app adopts the extension ----------------------------------------------------


def plain_app(tmp_path: Path, *, public_pages: bool = False) -> Flask:
    static = tmp_path / "static"
    static.mkdir(exist_ok=True)
    (static / "site.css").write_text("body { margin: 0 }\n")
    app = Flask(__name__, static_folder=str(static))
    pages = Blueprint("pages", __name__)

    @pages.get("/")
    def index():
        return "<h1>Home</h1>"

    @pages.get("/about")
    def about():
        return "<h1>About</h1>"

    @app.get("/api/status")
    @public
    def status():
        return {"status": "ok"}

    @app.get("/api/secret")
    def secret():
        return {"secret": 42}

    app.register_blueprint(public(pages) if public_pages else pages)
    settings = AuthSettings(bcrypt_rounds=4, failed_login_delay_seconds=0)
    Auth(public_endpoints={"pages.about"}).init_app(
        app, open_state(settings=settings, data_dir=tmp_path / "data")
    )
    return app


def test_a_plain_flask_app_serves_its_static_files_and_pages_behind_the_extension(tmp_path):
    client = plain_app(tmp_path).test_client()
    with client.get("/static/site.css") as css:
        assert css.status_code == 200 and css.get_data() == b"body { margin: 0 }\n"
        assert "no-store" not in css.headers["Cache-Control"]  # a static file may be cached
    assert client.get("/about").status_code == 200
    assert client.get("/api/status").get_json() == {"status": "ok"}
    for path in ("/", "/api/secret"):
        assert_error(client.get(path), 401, "AUTHENTICATION_REQUIRED")
    login = client.post("/auth/login", json={"username": ADMIN[0], "password": ADMIN[1]})
    assert login.status_code == 200
    token = bearer(login.get_json()["access_token"])
    assert client.get("/api/secret", headers=token).get_json() == {"secret": 42}
    assert client.get("/", headers=token).status_code == 200


def test_public_on_a_blueprint_opens_all_its_pages(tmp_path):
    client = plain_app(tmp_path, public_pages=True).test_client()
    assert [client.get(path).status_code for path in ("/", "/about")] == [200, 200]
    assert_error(client.get("/api/secret"), 401, "AUTHENTICATION_REQUIRED")


def _guarded_app(tmp_path: Path, setup) -> tuple[Flask, dict[str, str], dict[str, str]]:
    """A plain app set up by `setup(app)`, served by `Auth`; the headers of the admin and of
    a user (role user) logged in."""
    app = Flask(__name__, static_folder=None)  # no static view: the name is free
    setup(app)
    settings = AuthSettings(bcrypt_rounds=4, failed_login_delay_seconds=0)
    Auth().init_app(app, open_state(settings=settings, data_dir=tmp_path / "data"))
    actor = Actor(app.test_client())
    return app, actor.admin_headers(), actor.user_headers("ulla")


def test_a_view_merely_named_static_is_not_public(tmp_path):
    def setup(app: Flask) -> None:
        reports = Blueprint("reports", __name__)

        @app.get("/internal/static-report")
        def static():
            return {"internal": True}

        @reports.get("/reports/static")
        def static():  # noqa: F811 - a view of the blueprint, as an owner may name it
            return {"internal": True}

        app.register_blueprint(reports)

    client = _guarded_app(tmp_path, setup)[0].test_client()
    for path in ("/internal/static-report", "/reports/static"):
        assert_error(client.get(path), 401, "AUTHENTICATION_REQUIRED")


def test_scopes_on_a_class_based_view_are_enforced(tmp_path):
    class Things(MethodView):
        @require_auth(scopes=["models:manage"])
        def post(self):
            return {"made": True}

        def get(self):
            return {"things": []}

    app, admin, user = _guarded_app(
        tmp_path, lambda app: app.add_url_rule("/things", view_func=Things.as_view("things"))
    )
    client = app.test_client()
    assert_error(client.post("/things", headers=user), 403, "INSUFFICIENT_PERMISSIONS")
    assert_error(client.post("/things"), 401, "AUTHENTICATION_REQUIRED")
    assert client.post("/things", headers=admin).get_json() == {"made": True}
    assert client.get("/things", headers=user).get_json() == {"things": []}


def test_flask_limiter_switched_off_is_refused_at_start(tmp_path):
    app = Flask(__name__)
    app.config["RATELIMIT_ENABLED"] = False
    with pytest.raises(LimiterConfigError, match="RATELIMIT_ENABLED"):
        Auth().init_app(app, open_state(settings=AuthSettings(), data_dir=tmp_path / "data"))


def test_a_storage_failing_after_the_view_costs_the_headers_not_the_answer(
    make_app, monkeypatch, caplog
):
    app = make_app()
    limiter = app.extensions["auth"].limiter
    done = []

    @app.get("/flaky")
    @limiter.limit("5/minute", deduct_when=lambda response: True)
    def flaky():
        done.append(True)

        def unreachable(*args, **kwargs):
            raise StorageError(ConnectionError("the storage went away"))

        monkeypatch.setattr(limiter.limiter, "hit", unreachable)  # after the check, before
        return {"done": True}  # the deduction

    actor = Actor(app.test_client())
    answer = actor.client.get("/flaky", headers=actor.user_headers("vera"))
    assert answer.status_code == 200 and answer.get_json() == {"done": True}
    assert "X-Request-ID" in answer.headers and done == [True]
    assert "Traceback" not in caplog.text


def test_an_owners_on_breach_answer_is_the_answer(make_app):
    app = make_app()
    limiter = app.extensions["auth"].limiter

    @app.get("/slow-down")
    @limiter.limit("1/minute", on_breach=lambda limit: jsonify(custom="slow down"))
    def slow_down():
        return {"ok": True}

    actor = Actor(app.test_client())
    headers = actor.user_headers("wim")
    answers = [actor.client.get("/slow-down", headers=headers) for _ in range(2)]
    assert answers[0].status_code == 200
    assert answers[1].get_json() == {"custom": "slow down"}
    assert "X-Request-ID" in answers[1].headers  # stamped like every answer


def test_a_missing_token_on_change_password_is_not_held_back(make_app, clock):
    client = make_app(auth={"failed_login_delay_seconds": 1}).test_client()
    body = {"current_password": "a" * 12, "new_password": "b" * 12}
    assert_error(client.post("/auth/change-password", json=body), 401, "AUTHENTICATION_REQUIRED")
    assert clock.slept == []  # only a password that was checked is answered late


def test_a_memory_storage_made_before_a_fork_expires_in_the_child():
    storage = PacedMemoryStorage()
    storage.incr("k", 1)  # the parent's expiry job runs; a fork copies no thread
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # the child: its first hit starts its own expiry job
        storage.incr("k", 1)
        running = any(thread.name == "limits-expiry" for thread in threading.enumerate())
        os.write(writer, b"1" if running else b"0")
        os._exit(0)
    os.waitpid(child, 0)
    assert os.read(reader, 1) == b"1"


def test_one_pass_counting_on_memory_equals_the_strategys_two_calls(monkeypatch):
    """The budget's one-pass count on `memory://` (`counting.hit_and_window`) answers exactly
    what flask-limiter's strategy answers with `hit` then `get_window_stats`: hits, refusals,
    and the window through its sliding into the next minute."""
    clock = [1_800_000_000.0]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    item = parse("3/minute")
    ours = SlidingWindowCounterRateLimiter(PacedMemoryStorage())
    theirs = SlidingWindowCounterRateLimiter(PacedMemoryStorage())
    answers = []
    for step in (0, 1, 1, 1, 30, 5, 25, 1, 40, 90):
        clock[0] += step
        counted = theirs.hit(item, "user", "u1")
        expected = (counted, theirs.get_window_stats(item, "user", "u1"))
        assert hit_and_window(ours, item, "user", "u1") == expected, step
        answers.append(counted)
    assert answers == [True, True, True, False, False, False, True, False, True, True]
    clock[0] += 120  # both windows over: each counter was given its expiry, as `incr` gives it
    PacedMemoryStorage.expire_all()
    assert ours.storage.storage == theirs.storage.storage == {}
    one = parse("1/minute")  # refused in a window of its own with no counter yet:
    assert hit_and_window(ours, one, "user", "u2")[0]
    clock[0] = (clock[0] // 60 + 1) * 60  # the next window starts: the last one weighs whole
    assert not hit_and_window(ours, one, "user", "u2")[0]
    clock[0] += 120
    PacedMemoryStorage.expire_all()
    assert not ours.storage.locks  # ...it leaves no lock behind
    asked = []  # the job that drops expired counters is asked for, as `incr` asks for it
    monkeypatch.setattr(_ExpiryJob, "is_alive", lambda self: asked.append(self) or True)
    hit_and_window(ours, item, "user", "u1")
    assert asked


def test_secrets_are_never_quoted_when_refused():
    with pytest.raises(ValueError) as wrong_type:
        AuthSettings(jwt_secret=b"0123456789abcdef0123456789abcdef-bytes")  # type: ignore[arg-type]
    assert "0123456789abcdef" not in str(wrong_type.value)
    with pytest.raises(ValueError) as wrong_admin:
        AuthSettings(default_admin=DefaultAdmin(password=87654321))  # type: ignore[arg-type]
    assert "87654321" not in str(wrong_admin.value)


def test_auth_settings_refuse_an_unknown_registration_mode():
    with pytest.raises(ValueError, match="registration"):
        AuthSettings(registration="admin-only")  # the setting is spelled admin_only


# -- CORS ---------------------------------------------------------------------------------------

PREFLIGHT = {
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "X-API-Key, Content-Type",
}


def cors_headers(response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.lower().startswith("access-control-")}


def as_set(value: str) -> set[str]:
    return {part.strip().lower() for part in value.split(",")}


def test_a_preflight_from_an_allowed_origin_is_answered_without_credentials(make_app):
    client = make_app(server={"cors_origins": [ORIGIN]}).test_client()
    response = client.options("/predict", headers={"Origin": ORIGIN, **PREFLIGHT})
    assert response.status_code == 204
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "post" in as_set(response.headers["Access-Control-Allow-Methods"])
    assert {"x-api-key", "content-type"} <= as_set(response.headers["Access-Control-Allow-Headers"])


@pytest.mark.parametrize(
    ("cors_origins", "origin"),
    [([ORIGIN], "http://elsewhere.example"), ([], ORIGIN)],
    ids=["other-origin", "cors-off"],
)
def test_a_preflight_from_an_origin_not_allowed_gets_no_cors_headers(
    make_app, cors_origins, origin
):
    client = make_app(server={"cors_origins": cors_origins}).test_client()
    response = client.options("/predict", headers={"Origin": origin, **PREFLIGHT})
    assert response.status_code == 204  # never 401: a preflight carries no credentials
    assert cors_headers(response) == {}
    refused = client.post("/predict", json=ROW, headers={"Origin": origin})
    assert_error(refused, 401, "AUTHENTICATION_REQUIRED")
    assert cors_headers(refused) == {}


def test_an_allowed_origins_scripts_can_read_answers_and_errors(make_app):
    client = make_app(server={"cors_origins": [ORIGIN]}).test_client()
    headers = {"Origin": ORIGIN, **Actor(client).admin_headers()}
    for response in (client.post("/predict", json=ROW, headers=headers), client.get("/models")):
        assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
    refused = client.post("/predict", json=ROW, headers={"Origin": ORIGIN})
    assert_error(refused, 401, "AUTHENTICATION_REQUIRED")
    assert refused.headers["Access-Control-Allow-Origin"] == ORIGIN
    exposed = as_set(refused.headers["Access-Control-Expose-Headers"])
    assert {"x-request-id", "retry-after", "x-ratelimit-remaining"} <= exposed


# -- one access line per request ----------------------------------------------------------------

FORGED = "2026-12-02 06:00:00,000 [1] INFO inference_server.access: POST /admin/users/x 200"
CONTROLS = ("\n", "\r", "\r\n", "\x1b", "\x00", "\x0b", "\x85", "\u2028", "\u2029")


class Lines(logging.Handler):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.setFormatter(formatter(kind))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def access_lines() -> Iterator[dict[str, list[str]]]:
    """The access lines this test's requests write, formatted as text and as JSON."""
    handlers = {kind: Lines(kind) for kind in ("text", "json")}
    level = ACCESS.level
    ACCESS.setLevel(logging.INFO)
    for handler in handlers.values():
        ACCESS.addHandler(handler)
    try:
        yield {kind: handler.lines for kind, handler in handlers.items()}
    finally:
        for handler in handlers.values():
            ACCESS.removeHandler(handler)
        ACCESS.setLevel(level)


def escaped(text: str) -> bool:
    """True if `text` holds no control character (C0, DEL, C1, line and paragraph separators):
    what a client sent of them is written escaped."""
    return not any(c < " " or "\x7f" <= c < "\xa0" or c in "\u2028\u2029" for c in text)


def assert_one_line_each(lines: dict[str, list[str]], response) -> tuple[str, dict]:
    """Exactly one access line per format for `response`, each a single line; the text line and
    the JSON record."""
    rid = response.headers["X-Request-ID"]
    [text], [record_line] = lines["text"], lines["json"]
    for line in (text, record_line):
        assert "\n" not in line and "\r" not in line
        assert line.splitlines() == [line] and escaped(line), line
    assert text.endswith(f"request={rid}") and " INFO inference_server.access: " in text
    record = json.loads(record_line)
    assert record["request_id"] == rid
    return text, record


@pytest.mark.parametrize("control", CONTROLS)
def test_a_path_holding_control_characters_writes_one_access_line(client, access_lines, control):
    path = "/x" + control + FORGED
    response = client.get(quote(path))
    assert response.status_code == 404
    text, record = assert_one_line_each(access_lines, response)
    assert escaped(record["path"]) and record["path"].endswith(FORGED)
    assert record["path"] == loggable(path) and loggable(path) in text
    assert text.count("inference_server.access:") == 2  # the real one and the forged text in it


@pytest.mark.parametrize("sent", ["a\rb", "a\nb", "a\r\n" + FORGED, "a\x1bb"])
def test_a_request_id_holding_control_characters_writes_one_access_line(client, access_lines, sent):
    # What `requests` and http.client refuse to send, put in the environ as a server would.
    response = client.get("/health", environ_overrides={"HTTP_X_REQUEST_ID": sent})
    assert response.status_code == 200
    assert response.headers["X-Request-ID"] != sent  # not a sane label: a new id instead
    text, record = assert_one_line_each(access_lines, response)
    assert record["path"] == "/health"


def test_an_access_line_names_the_key_and_the_client_never_the_key_itself(make_app, access_lines):
    client = make_app(server={"trusted_proxies": ["127.0.0.1"]}).test_client()
    actor = Actor(client)
    created = actor.create_key(actor.user_headers("alice"))
    response = client.post(
        "/predict",
        json={"data": [[1, 2, 3]]},
        headers={"X-API-Key": created["key"], "X-Forwarded-For": "203.0.113.9"},
    )
    assert response.status_code == 200
    text, record = (access_lines["text"][-1], json.loads(access_lines["json"][-1]))
    assert f"key={created['id']} client=203.0.113.9 " in text
    assert (record["key_id"], record["client"]) == (created["id"], "203.0.113.9")
    logged = "".join(access_lines["text"] + access_lines["json"])
    assert created["key"] not in logged and created["key"][12:] not in logged


@pytest.mark.slow
@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_real_server_writes_one_access_line_for_a_path_with_control_characters(
    tmp_path, log_format
):
    env = {"INFERENCE_SERVER__LOG_FORMAT": log_format}
    sent = {}
    with live_server(tmp_path / "data", env=env) as server:
        for i, control in enumerate(CONTROLS):
            rid = f"control-{i}"
            url = server.url("/x" + quote(control + FORGED))
            response = requests.get(url, headers={"X-Request-ID": rid}, timeout=60)
            assert response.status_code == 404
            sent[rid] = "/x" + control + FORGED
        for rid in sent:
            server.wait_for_log(rid, 1)  # the worker writes its access lines in batches
        lines = list(server.log)
    for line in lines:
        assert line.splitlines() == [line.rstrip("\n")] and escaped(line.rstrip("\n")), line
    access = [line for line in lines if "inference_server.access" in line]
    for rid, path in sent.items():
        [line] = [line for line in access if rid in line]
        if log_format == "json":
            logged = json.loads(line)["path"]
            assert escaped(logged) and logged == loggable(path)
        else:
            assert line.rstrip("\n").endswith(f"request={rid}") and loggable(path) in line
    # No line of the server's output begins with the forged text.
    assert not any(line.startswith(FORGED) for line in lines)


def test_a_function_made_for_one_request_is_not_kept_by_the_app(app):
    # The app remembers Flask's ensure_sync answer per function; a hook made for one request
    # (`after_this_request`) must still go when the request is done with it.
    def hook(response):
        return response

    assert app.ensure_sync(hook) is hook
    assert app.ensure_sync(hook) is hook  # remembered
    gone = weakref.ref(hook)
    del hook
    gc.collect()
    assert gone() is None
