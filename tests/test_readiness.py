"""GET /ready: 200 only when models, stores and the rate limit storage can do their work.

Anyone may ask (a load balancer does, without credentials) and learns which parts fail; only an
admin learns what is wrong with them, since that names the server's files.

(Redis going away is tested against a real redis-server in test_redis_limits.py; a worker that
cannot load its data at all, in test_faults.py.)"""

from __future__ import annotations

import pytest

from tests.conftest import DEMO_MODEL, Actor, assert_error, bearer, compacted


def test_a_server_that_can_work_is_ready(client):
    answer = client.get("/ready")
    assert answer.status_code == 200
    assert answer.get_json() == {
        "status": "ready",
        "checks": {"storage": "ok", "models": "ok", "rate_limits": "ok"},
    }


def test_a_store_broken_while_serving_makes_the_server_not_ready(app, actor, data_dir):
    admin = actor.admin_headers()
    actor.register("kim")
    compacted(data_dir, "users").write_text("{broken by hand")
    error = assert_error(actor.client.get("/ready", headers=admin), 503, "SERVICE_UNAVAILABLE")
    assert list(error["details"]["problems"]) == ["storage"]
    assert "users.json" in error["message"] and str(data_dir) not in error["message"]
    anonymous = assert_error(actor.client.get("/ready"), 503, "SERVICE_UNAVAILABLE")
    assert anonymous["details"]["checks"] == {
        "storage": "failing",
        "models": "ok",
        "rate_limits": "ok",
    }
    assert "users.json" not in str(anonymous)
    assert actor.client.get("/health").status_code == 200  # liveness: the process answers


def _broken_model_app(make_app, tmp_path, **sections):
    broken = tmp_path / "broken.json"
    broken.write_text("not a model")
    registry = [
        {"name": "demo", "backend": "builtin", "path": DEMO_MODEL},
        {"name": "broken", "backend": "builtin", "path": str(broken)},
        {"name": "later", "backend": "builtin", "path": str(broken), "lazy": True},
    ]
    return make_app(models={"registry": registry}, **sections)


def test_a_model_that_failed_to_load_makes_the_server_not_ready(make_app, tmp_path):
    actor = Actor(_broken_model_app(make_app, tmp_path).test_client())
    answer = actor.client.get("/ready", headers=actor.admin_headers())
    error = assert_error(answer, 503, "SERVICE_UNAVAILABLE")
    assert error["details"]["checks"] == {"storage": "ok", "models": "failing", "rate_limits": "ok"}
    assert list(error["details"]["problems"]) == ["models"]
    assert len(error["details"]["problems"]["models"]) == 1  # a lazy model is not loaded yet
    assert "'broken' failed to load" in error["message"]


CALLERS = {
    "anonymous": lambda actor: {},
    "a user": lambda actor: actor.user_headers("kim"),
    "an invalid token": lambda actor: bearer("not-a-token"),
    "an admin's key without the admin scope": lambda actor: {
        "X-API-Key": actor.create_key(actor.admin_headers(), scopes=["predict"])["key"]
    },
}


@pytest.mark.parametrize("caller", CALLERS)
def test_only_an_admin_learns_what_is_wrong(make_app, tmp_path, caller):
    actor = Actor(_broken_model_app(make_app, tmp_path).test_client())
    answer = actor.client.get("/ready", headers=CALLERS[caller](actor))
    error = assert_error(answer, 503, "SERVICE_UNAVAILABLE")
    assert error["message"] == "not ready: models failing"
    assert error["details"] == {
        "status": "not ready",
        "checks": {"storage": "ok", "models": "failing", "rate_limits": "ok"},
    }
    assert str(tmp_path) not in answer.get_data(as_text=True)
    assert answer.headers["Retry-After"] == "5"


def test_without_authentication_anyone_learns_what_is_wrong(make_app, tmp_path):
    # As with every admin route when auth.enabled is false: the server is open to all.
    client = _broken_model_app(make_app, tmp_path, auth={"enabled": False}).test_client()
    error = assert_error(client.get("/ready"), 503, "SERVICE_UNAVAILABLE")
    assert "'broken' failed to load" in error["message"]
