"""The prediction lane answers ordinary predictions beneath Flask, exactly as Flask would, and
hands everything else over, counted once."""

from __future__ import annotations

import pytest

from tests.conftest import Actor, assert_error

GOOD = {"data": [[1.0, 2.0, 3.0]]}


@pytest.fixture
def lane_app(make_app):
    """An app whose users get 5 requests a minute, with the lane's hand-overs counted."""
    app = make_app(auth={"rate_limit_per_minute": 5})
    lane = app.wsgi_app
    handed: list[str] = []
    flask = lane.flask

    def counted_flask(environ, start_response):
        handed.append(environ["PATH_INFO"])
        return flask(environ, start_response)

    lane.flask = counted_flask
    return app, Actor(app.test_client()), handed


def _alice(actor: Actor) -> dict[str, str]:
    headers = actor.user_headers("alice")
    actor.predict(headers)  # the first call of a model runs on a thread: then it is known fast
    return headers


def test_an_ordinary_prediction_is_answered_by_the_lane_as_flask_answers_it(lane_app):
    app, actor, handed = lane_app
    alice = _alice(actor)
    handed.clear()
    by_lane = actor.client.post("/predict", json=GOOD, headers=alice)
    by_name = actor.client.post("/demo/predict", json=GOOD, headers=alice)
    assert handed == []
    by_flask = actor.client.post("/predict?via=flask", json=GOOD, headers=alice)
    assert handed == ["/predict"]
    answers = (by_lane, by_name, by_flask)
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert len({frozenset(a.headers.keys()) for a in answers}) == 1  # the same headers
    bodies = [a.get_json() for a in answers]
    for body in bodies:
        body.pop("inference_time_ms")
    assert bodies[0] == bodies[1] == bodies[2]
    remaining = [int(a.headers["X-RateLimit-Remaining"]) for a in answers]
    assert remaining == [3, 2, 1]  # one count each, whichever path answered (1 spent before)


@pytest.mark.parametrize(
    ("request_kwargs", "status", "code"),
    [
        ({"json": GOOD}, 401, "AUTHENTICATION_REQUIRED"),
        ({"json": GOOD, "headers": {"X-API-Key": "sk_live_nope"}}, 401, "INVALID_API_KEY"),
        ({"json": {"data": [[1.0, 2.0]]}, "auth": True}, 400, "VALIDATION_ERROR"),
        ({"json": {**GOOD, "modle": "demo"}, "auth": True}, 400, "VALIDATION_ERROR"),
        ({"json": {**GOOD, "model": "nope"}, "auth": True}, 404, "NOT_FOUND"),
        ({"data": "{", "content_type": "application/json", "auth": True}, 400, "VALIDATION_ERROR"),
        ({"data": "x=1", "auth": True}, 400, "VALIDATION_ERROR"),
    ],
)
def test_what_is_not_ordinary_is_handed_to_flask_and_answered_in_the_error_shape(
    lane_app, request_kwargs, status, code
):
    app, actor, handed = lane_app
    alice = _alice(actor)
    handed.clear()
    kwargs = dict(request_kwargs)
    if kwargs.pop("auth", False):
        kwargs["headers"] = alice
    assert_error(actor.client.post("/predict", **kwargs), status, code)
    assert handed == ["/predict"]


def test_a_request_handed_over_after_its_budget_was_counted_is_not_counted_again(lane_app):
    app, actor, handed = lane_app
    alice = _alice(actor)  # the first call spent 1 of 5
    first = actor.predict(alice)
    wrong_shape = actor.client.post("/predict", json={"data": [[1.0, 2.0]]}, headers=alice)
    assert_error(wrong_shape, 400, "VALIDATION_ERROR")
    assert handed[-1] == "/predict"  # the lane counted it, then handed it over
    remaining = [int(a.headers["X-RateLimit-Remaining"]) for a in (first, wrong_shape)]
    assert remaining[1] == remaining[0] - 1
    spent = [actor.predict(alice).status_code for _ in range(remaining[1] + 1)]
    assert spent == [200] * remaining[1] + [429]
    refused = actor.predict(alice)
    assert_error(refused, 429, "RATE_LIMIT_EXCEEDED")
    assert refused.headers["Retry-After"] and refused.headers["X-RateLimit-Remaining"] == "0"


def test_a_revoked_key_fails_on_the_next_request_in_the_lane(lane_app):
    app, actor, handed = lane_app
    alice = _alice(actor)
    made = actor.create_key(alice)
    key = {"X-API-Key": made["key"]}
    assert actor.predict(key).status_code == 200
    assert actor.client.delete(f"/auth/api-keys/{made['id']}", headers=alice).status_code == 200
    assert_error(actor.predict(key), 401, "INVALID_API_KEY")


def test_the_default_admin_is_flagged_in_the_lane_too(lane_app):
    app, actor, handed = lane_app
    admin = actor.admin_headers()
    actor.predict(admin)
    handed.clear()
    answer = actor.predict(admin)
    assert answer.status_code == 200 and handed == []
    assert answer.headers["X-Password-Change-Required"] == "true"


def test_simple_mode_predictions_take_the_lane_and_are_limited_per_address(make_app):
    app = make_app(auth={"enabled": False, "rate_limit_per_minute": 2})
    client = app.test_client()
    answers = [client.post("/predict", json=GOOD) for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 429, 429]
    assert_error(answers[-1], 429, "RATE_LIMIT_EXCEEDED")
