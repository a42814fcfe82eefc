"""GET /ready: 200 only when models, stores and the rate limit storage can do their work.

(Redis going away is tested against a real redis-server in test_redis_limits.py; a worker that
cannot load its data at all, in test_faults.py.)"""

from __future__ import annotations

from tests.conftest import DEMO_MODEL, assert_error, compacted


def test_a_server_that_can_work_is_ready(client):
    answer = client.get("/ready")
    assert answer.status_code == 200
    assert answer.get_json() == {
        "status": "ready",
        "checks": {"storage": "ok", "models": "ok", "rate_limits": "ok"},
    }


def test_a_store_broken_while_serving_makes_the_server_not_ready(app, actor, data_dir):
    actor.register("kim")
    compacted(data_dir, "users").write_text("{broken by hand")
    error = assert_error(actor.client.get("/ready"), 503, "SERVICE_UNAVAILABLE")
    assert list(error["details"]) == ["storage"]
    assert "users.json" in error["message"] and str(data_dir) not in error["message"]
    assert actor.client.get("/health").status_code == 200  # liveness: the process answers


def test_a_model_that_failed_to_load_makes_the_server_not_ready(make_app, tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text("not a model")
    registry = [
        {"name": "demo", "backend": "builtin", "path": DEMO_MODEL},
        {"name": "broken", "backend": "builtin", "path": str(broken)},
        {"name": "later", "backend": "builtin", "path": str(broken), "lazy": True},
    ]
    client = make_app(models={"registry": registry}).test_client()
    error = assert_error(client.get("/ready"), 503, "SERVICE_UNAVAILABLE")
    assert list(error["details"]) == ["models"]
    assert len(error["details"]["models"]) == 1  # a lazy model is not loaded until asked for
    assert "'broken' failed to load" in error["message"]
