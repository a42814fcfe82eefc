"""Per-key and per-user model access, a key's own rate limit and its predictions in flight.

A key (and a user, set by an admin) may carry `models`, names or glob patterns; every route that
chooses a model checks it in one place, so no route or spelling gets around it. A key may carry
its own `rate_limit` (never above its owner's) and `max_concurrent` predictions in flight.
"""

from __future__ import annotations

import os
import re
import signal
import threading

import pytest
import requests

from tests.conftest import DEMO_MODEL, PASSWORD, Actor, assert_error, bearer
from tests.held_model import HELD, held_model_server

MODELS = ["demo", "churn-a", "churn-b", "other"]


@pytest.fixture
def client(make_app):
    registry = [{"name": name, "backend": "builtin", "path": DEMO_MODEL} for name in MODELS]
    return make_app(models={"registry": registry}).test_client()


@pytest.fixture
def alice(actor):
    return actor.user_headers("alice")


def key_headers(actor: Actor, owner: dict[str, str], **body) -> dict[str, str]:
    return {"X-API-Key": actor.create_key(owner, **body)["key"]}


def calls(client, headers, model: str) -> list[int]:
    """The status of a prediction of `model` by each route and spelling that can name it."""
    data = [[1.0, 2.0, 3.0]]
    return [
        client.post(f"/{model}/predict", json={"data": data}, headers=headers).status_code,
        client.post("/predict", json={"data": data, "model": model}, headers=headers).status_code,
        client.post(
            "/predict/batch", json={"inputs": [data], "model": model}, headers=headers
        ).status_code,
    ]


def test_a_key_limited_to_demo_may_call_only_demo_by_every_route(client, actor, alice):
    headers = key_headers(actor, alice, models=["demo"])
    assert calls(client, headers, "demo") == [200, 200, 200]
    assert client.post("/predict", json={"data": [[1, 2, 3]]}, headers=headers).status_code == 200
    for route in ("/other/predict", "/predict", "/predict/batch"):
        body = {"data": [[1, 2, 3]]} if route != "/predict/batch" else {"inputs": [[[1, 2, 3]]]}
        if route != "/other/predict":
            body["model"] = "other"
        error = assert_error(
            client.post(route, json=body, headers=headers), 403, "INSUFFICIENT_PERMISSIONS"
        )
        assert "'other'" in error["message"] and error["details"]["model"] == "other"
    # A model that does not exist is refused the same way: no oracle of which models exist.
    assert calls(client, headers, "secret") == [403, 403, 403]
    listed = client.get("/models", headers=headers).get_json()["models"]
    assert [m["name"] for m in listed] == ["demo"]
    assert_error(client.get("/models/other", headers=headers), 403, "INSUFFICIENT_PERMISSIONS")
    assert client.get("/models/demo", headers=headers).status_code == 200


def test_patterns_match_as_documented(client, actor, alice):
    headers = key_headers(actor, alice, models=["churn-*"])
    assert calls(client, headers, "churn-a") == [200, 200, 200]
    assert calls(client, headers, "churn-b") == [200, 200, 200]
    assert calls(client, headers, "demo") == [403, 403, 403]
    # The default model is checked like any other.
    response = client.post("/predict", json={"data": [[1, 2, 3]]}, headers=headers)
    assert_error(response, 403, "INSUFFICIENT_PERMISSIONS")
    listed = client.get("/models", headers=headers).get_json()["models"]
    assert [m["name"] for m in listed] == ["churn-a", "churn-b"]
    # An unknown model the key may call is a 404 that lists only what the key may call.
    error = assert_error(
        client.post("/churn-z/predict", json={"data": [[1, 2, 3]]}, headers=headers),
        404,
        "NOT_FOUND",
    )
    assert error["details"]["models"] == ["churn-a", "churn-b"]


def test_a_users_models_bind_every_credential_of_theirs(client, actor):
    user_id = actor.register("bob")
    token = bearer(actor.login("bob", PASSWORD)["access_token"])
    wide = key_headers(actor, token, models=["churn-a", "churn-b"])  # made before the limit
    admin = actor.admin_headers()
    response = client.patch(f"/admin/users/{user_id}", json={"models": ["churn-a"]}, headers=admin)
    assert response.status_code == 200 and response.get_json()["models"] == ["churn-a"]
    key = key_headers(actor, token)
    for headers in (token, key, wide):
        assert calls(client, headers, "churn-a") == [200, 200, 200]
        assert calls(client, headers, "churn-b") == [403, 403, 403]
    assert_error(
        client.post("/auth/api-keys", json={"name": "w", "models": ["demo"]}, headers=token),
        403,
        "INSUFFICIENT_PERMISSIONS",
    )


def test_a_restricted_key_cannot_make_or_widen_a_key_beyond_itself(client, actor, alice):
    parent = actor.create_key(alice, models=["churn-*"], scopes=["predict", "api-keys:manage"])
    headers = {"X-API-Key": parent["key"]}
    child = client.post("/auth/api-keys", json={"name": "child"}, headers=headers).get_json()
    assert child["models"] == ["churn-*"]  # inherited, never wider
    narrower = client.post(
        "/auth/api-keys", json={"name": "a", "models": ["churn-a"]}, headers=headers
    )
    assert narrower.status_code == 201
    assert_error(
        client.post("/auth/api-keys", json={"name": "w", "models": ["demo"]}, headers=headers),
        403,
        "INSUFFICIENT_PERMISSIONS",
    )
    assert_error(
        client.patch(f"/auth/api-keys/{child['id']}", json={"models": ["*"]}, headers=headers),
        403,
        "INSUFFICIENT_PERMISSIONS",
    )
    # Clearing the list of a key made through a restricted key gives it its parent's again.
    cleared = client.patch(f"/auth/api-keys/{child['id']}", json={"models": None}, headers=headers)
    assert cleared.get_json()["models"] == ["churn-*"]


def test_the_owner_changes_a_keys_limits_and_others_cannot(client, actor, alice):
    key = actor.create_key(alice)
    response = client.patch(
        f"/auth/api-keys/{key['id']}",
        json={"name": "renamed", "models": ["demo"], "rate_limit": "5/minute", "max_concurrent": 2},
        headers=alice,
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    view = response.get_json()
    assert (view["name"], view["models"], view["rate_limit"], view["max_concurrent"]) == (
        "renamed",
        ["demo"],
        "5/minute",
        2,
    )
    listed = client.get("/auth/api-keys", headers=alice).get_json()["keys"]
    assert listed[0]["models"] == ["demo"]
    bob = actor.user_headers("bob")
    assert_error(
        client.patch(f"/auth/api-keys/{key['id']}", json={"name": "x"}, headers=bob),
        404,
        "NOT_FOUND",
    )
    admin = actor.admin_headers()
    response = client.patch(f"/auth/api-keys/{key['id']}", json={"models": None}, headers=admin)
    assert response.status_code == 200 and response.get_json()["models"] is None
    for body, field in (
        ({"models": ["no spaces"]}, "models"),
        ({"models": []}, "models"),
        ({"rate_limit": "often"}, "rate_limit"),
        ({"max_concurrent": 0}, "max_concurrent"),
        ({"scopes": ["predict"]}, "scopes"),
        ({}, None),
    ):
        error = assert_error(
            client.patch(f"/auth/api-keys/{key['id']}", json=body, headers=alice),
            400,
            "VALIDATION_ERROR",
        )
        assert error["details"]["field"] == field


def test_a_keys_rate_limit_is_counted_beside_its_owners_and_never_above_it(make_app):
    client = make_app(rate_limits={"roles": {"user": "10/minute"}}).test_client()
    actor = Actor(client)
    alice = actor.user_headers("alice")
    assert_error(
        client.post("/auth/api-keys", json={"name": "k", "rate_limit": "11/minute"}, headers=alice),
        403,
        "INSUFFICIENT_PERMISSIONS",
    )
    limited = key_headers(actor, alice, rate_limit="2/minute")
    other = key_headers(actor, alice)
    for remaining in (1, 0):
        response = actor.predict(limited)
        assert response.status_code == 200
        assert response.headers["X-RateLimit-Limit"] == "2"
        assert response.headers["X-RateLimit-Remaining"] == str(remaining)
    error = assert_error(actor.predict(limited), 429, "RATE_LIMIT_EXCEEDED")
    assert error["details"] == {"limit": "key", "rate_limit": "2/minute"}
    # The user's other key still has the rest of the user's budget, which every request of
    # theirs spends: three to make keys, two predictions; the refused one spent only the key's.
    response = actor.predict(other)
    assert response.status_code == 200
    assert response.headers["X-RateLimit-Remaining"] == "4"


def test_max_concurrent_refuses_a_prediction_beyond_it_and_frees_the_slot_at_the_end(make_app):
    app = make_app()
    actor = Actor(app.test_client())
    key = actor.create_key(actor.user_headers("alice"), max_concurrent=1)
    # Taken as a prediction in flight in another worker takes it.
    held = app.extensions["auth"].slots.take(f"key-{key['id']}", 1)
    assert held is not None
    error = assert_error(
        actor.predict({"X-API-Key": key["key"]}), 429, "CONCURRENCY_LIMIT_EXCEEDED"
    )
    assert error["details"] == {"limit": "max_concurrent", "max_concurrent": 1}
    held.release()
    assert actor.predict({"X-API-Key": key["key"]}).status_code == 200
    assert actor.predict({"X-API-Key": key["key"]}).status_code == 200  # released at its end


def test_cli_sets_models_and_limits(run, make_app, actor):
    make_app()  # the data dir with its default admin
    new_user = ("users", "create", "--username", "carol", "--email", "c@example.org")
    assert run(*new_user, "--password-stdin", input=PASSWORD + "\n").exit_code == 0
    result = run("users", "set-models", "carol", "demo,churn-*")
    assert result.exit_code == 0, result.output
    assert "may call churn-*, demo" in result.output
    result = run(
        "keys",
        "create",
        "--user",
        "carol",
        "--name",
        "svc",
        "--models",
        "churn-*",
        "--rate-limit",
        "5/minute",
        "--max-concurrent",
        "3",
    )
    assert result.exit_code == 0, result.output
    listed = run("keys", "list", "--user", "carol").output
    assert "svc" in listed
    key_id = next(line.split()[0] for line in listed.splitlines() if "svc" in line)
    result = run("keys", "update", key_id, "--max-concurrent", "none", "--models", "churn-a")
    assert result.exit_code == 0, result.output
    assert '"max_concurrent": null' in result.output and '"churn-a"' in result.output
    result = run("keys", "update", key_id, "--rate-limit", "1000/second")
    assert result.exit_code != 0 and "cannot be above" in result.output


@pytest.mark.slow
def test_max_concurrent_holds_across_two_workers_and_frees_with_a_killed_worker(tmp_path):
    with held_model_server(tmp_path, workers=2) as (server, release):
        token = {"Authorization": "Bearer " + server.login_admin()["access_token"]}

        def new_key(**body) -> dict[str, str]:
            response = requests.post(
                server.url("/auth/api-keys"),
                json={"name": "k", **body},
                headers=token,
                timeout=60,
            )
            assert response.status_code == 201, response.text
            return {"X-API-Key": response.json()["key"]}

        single, other = new_key(max_concurrent=1), new_key()
        held_call = {"json": {"model": "held", "data": [[1, 2, 3]]}, "timeout": 120}
        quick = {"json": {"data": [[1, 2, 3]]}, "timeout": 60}
        answers: list[requests.Response] = []

        def call() -> None:
            try:
                answers.append(requests.post(server.url("/predict"), headers=single, **held_call))
            except requests.ConnectionError:  # its worker was killed
                pass

        def hold() -> threading.Thread:
            thread = threading.Thread(target=call)
            thread.start()
            return thread

        first = hold()
        server.wait_for_log(HELD, 1)
        # New connections land on either worker: each refuses while the first is in flight.
        for _ in range(6):
            error = assert_error(
                requests.post(server.url("/predict"), headers=single, **quick),
                429,
                "CONCURRENCY_LIMIT_EXCEEDED",
            )
            assert error["details"]["max_concurrent"] == 1
            assert requests.post(server.url("/predict"), headers=other, **quick).status_code == 200
        release()
        first.join(timeout=120)
        assert answers[0].status_code == 200
        assert requests.post(server.url("/predict"), headers=single, **quick).status_code == 200

        # A worker killed while it holds the slot frees it: the kernel drops its locks.
        second = hold()
        server.wait_for_log(HELD, 2)
        os.kill(_pid_of_last(HELD, server), signal.SIGKILL)
        second.join(timeout=120)
        statuses = {
            requests.post(server.url("/predict"), headers=single, **quick).status_code
            for _ in range(4)
        }
        assert statuses == {200}


def _pid_of_last(text: str, server) -> int:
    """The worker that logged the last line holding `text` (log lines carry '[pid]')."""
    line = [line for line in server.log if text in line][-1]
    return int(re.search(r"\[(\d+)\]", line).group(1))


def test_a_restricted_key_cannot_lift_its_own_limits_or_a_siblings(client, actor, alice):
    scopes = ["predict", "api-keys:manage"]
    limited = actor.create_key(alice, rate_limit="20/minute", max_concurrent=1, scopes=scopes)
    sibling = actor.create_key(alice, rate_limit="10/minute", max_concurrent=1)
    headers = {"X-API-Key": limited["key"]}
    for key_id in (limited["id"], sibling["id"]):
        for body in ({"rate_limit": "1000/minute"}, {"max_concurrent": 1000}):
            response = client.patch(f"/auth/api-keys/{key_id}", json=body, headers=headers)
            assert_error(response, 403, "INSUFFICIENT_PERMISSIONS")
        cleared = client.patch(
            f"/auth/api-keys/{key_id}",
            json={"rate_limit": None, "max_concurrent": None},
            headers=headers,
        ).get_json()
        # Cleared, a limit is that of the key that changed it: never more than its own.
        assert (cleared["rate_limit"], cleared["max_concurrent"]) == ("20/minute", 1)


def test_narrowing_a_key_narrows_the_keys_made_through_it(client, actor, alice):
    scopes = ["predict", "api-keys:manage"]
    parent = actor.create_key(alice, models=["demo", "other"], scopes=scopes)
    child = client.post(
        "/auth/api-keys", json={"name": "child"}, headers={"X-API-Key": parent["key"]}
    ).get_json()
    assert calls(client, {"X-API-Key": child["key"]}, "other") == [200, 200, 200]
    response = client.patch(
        f"/auth/api-keys/{parent['id']}", json={"models": ["demo"]}, headers=alice
    )
    assert response.status_code == 200
    assert calls(client, {"X-API-Key": child["key"]}, "other") == [403, 403, 403]


@pytest.mark.parametrize(
    "body",
    [{"rate_limit": 10**400}, {"rate_limit": "1" * 400 + "/minute"}, {"rate_limit": "0/minute"}],
)
def test_impossible_rate_limits_are_refused(client, actor, alice, body):
    response = client.post("/auth/api-keys", json={"name": "k", **body}, headers=alice)
    assert assert_error(response, 400, "VALIDATION_ERROR")["details"]["field"] == "rate_limit"


def test_a_revoked_key_cannot_be_changed(client, actor, alice):
    key = actor.create_key(alice)
    assert client.delete(f"/auth/api-keys/{key['id']}", headers=alice).status_code == 200
    response = client.patch(f"/auth/api-keys/{key['id']}", json={"name": "x"}, headers=alice)
    assert_error(response, 409, "CONFLICT")
