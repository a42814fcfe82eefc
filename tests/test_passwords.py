"""SPEC 4, password rules: the pre-hash, length bounds, common passwords."""

from __future__ import annotations

import bcrypt

from auth.passwords import hash_password, password_problem, verify_password
from tests.conftest import assert_error

ROUNDS = 4


def test_bytes_after_the_72nd_count():
    base = "p" * 72
    hashed = hash_password(base + "A", rounds=ROUNDS)
    assert verify_password(base + "A", hashed, rounds=ROUNDS)
    assert not verify_password(base + "B", hashed, rounds=ROUNDS)
    # Plain bcrypt would have ignored the difference: this is what the pre-hash is for.
    raw = bcrypt.hashpw(base.encode(), bcrypt.gensalt(ROUNDS))
    assert bcrypt.checkpw(base[:72].encode(), raw)


def test_passwords_differing_after_byte_72_are_not_interchangeable_over_http(client, actor):
    long_a, long_b = "k" * 80 + "-first", "k" * 80 + "-other"
    actor.register("longpw", password=long_a)
    ok = client.post("/auth/login", json={"username": "longpw", "password": long_a})
    assert ok.status_code == 200
    bad = client.post("/auth/login", json={"username": "longpw", "password": long_b})
    assert_error(bad, 401, "INVALID_CREDENTIALS")


def test_sixty_four_accented_characters_work(client, actor):
    password = "é" * 64  # 128 bytes of UTF-8, within the 128-character limit
    actor.register("accent", password=password)
    assert (
        client.post("/auth/login", json={"username": "accent", "password": password}).status_code
        == 200
    )


def test_ten_kilobyte_password_is_a_400_everywhere(client, actor):
    huge = "x" * 10 * 1024
    admin = actor.admin_headers()
    register = client.post(
        "/auth/register",
        json={"username": "huge", "password": huge, "email": "huge@example.org"},
        headers=admin,
    )
    assert_error(register, 400, "VALIDATION_ERROR")
    login = client.post("/auth/login", json={"username": "admin", "password": huge})
    assert_error(login, 400, "VALIDATION_ERROR")
    change = client.post(
        "/auth/change-password",
        json={"current_password": "admin123", "new_password": huge},
        headers=admin,
    )
    assert_error(change, 400, "VALIDATION_ERROR")


def test_policy_bounds_and_common_list():
    assert password_problem("Tr0ub4dor&3xyz", min_length=8) is None
    assert "at least 12" in password_problem("abcdefgh1", min_length=12)
    assert "at most 128" in password_problem("a" * 129, min_length=8)
    assert "common" in password_problem("iloveyou", min_length=8)
    assert "common" in password_problem("Password1", min_length=8)


def test_unknown_user_verification_spends_a_bcrypt_check(monkeypatch):
    seen = []
    real = bcrypt.checkpw
    monkeypatch.setattr(bcrypt, "checkpw", lambda pw, h: seen.append(h) or real(pw, h))
    assert verify_password("anything at all", None, rounds=ROUNDS) is False
    assert len(seen) == 1 and seen[0].startswith(b"$2b$04$")


def test_corrupt_hash_does_not_crash():
    assert verify_password("whatever", "not-a-bcrypt-hash", rounds=ROUNDS) is False
