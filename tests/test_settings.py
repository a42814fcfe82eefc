"""Configuration: layers, environment overrides, and start-up errors that name the key."""

from __future__ import annotations

import dataclasses
import typing

import pytest
import yaml

from inference_server.settings import DEFAULT_CONFIG, ConfigError, Settings, load_settings


def _write(tmp_path, text):
    path = tmp_path / "local.yaml"
    path.write_text(text)
    return path


def test_defaults_match_the_spec():
    s = load_settings(environ={})
    assert (s.server.host, s.server.port, s.server.workers) == ("127.0.0.1", 8000, 1)
    assert s.auth.registration == "admin_only" and s.auth.jwt_secret is None
    assert s.auth.access_token_expire_minutes == 30 and s.auth.refresh_token_expire_days == 7
    assert s.auth.default_admin.username == "admin"
    assert s.rate_limits.storage_uri == "memory://"
    assert s.models.default == "demo"


def _keys(cls, prefix=()):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path = (*prefix, f.name)
        # Optional[Section] and list[Section] document the section's own keys.
        inner = [a for a in typing.get_args(hints[f.name]) if dataclasses.is_dataclass(a)]
        target = hints[f.name] if dataclasses.is_dataclass(hints[f.name]) else (inner or [None])[0]
        if target is not None:
            yield from _keys(target, path)
        else:
            yield path


def _yaml_keys(data, prefix=()):
    for key, value in data.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            value = value[0]
        if isinstance(value, dict) and value and key != "roles":
            yield from _yaml_keys(value, (*prefix, key))
        else:
            yield (*prefix, key)


def test_default_yaml_documents_every_key():
    documented = set(_yaml_keys(yaml.safe_load(DEFAULT_CONFIG.read_text())))
    assert documented == set(_keys(Settings))


def test_config_file_then_env_then_flags(tmp_path):
    path = _write(tmp_path, "server: {port: 9000, workers: 3}\nauth: {registration: open}\n")
    env = {"INFERENCE_SERVER__PORT": "9100", "INFERENCE_AUTH__RATE_LIMIT_PER_MINUTE": "5"}
    s = load_settings(path, environ=env)
    assert (s.server.port, s.server.workers) == (9100, 3)
    assert s.auth.registration == "open" and s.auth.rate_limit_per_minute == 5
    s = load_settings(path, environ=env, overrides={"server": {"port": 9200}})
    assert s.server.port == 9200


def test_config_file_from_env_variable(tmp_path):
    path = _write(tmp_path, "storage: {data_dir: /var/lib/infer}\n")
    s = load_settings(environ={"INFERENCE_CONFIG": str(path)})
    assert s.storage.data_dir == "/var/lib/infer"


def test_env_values_are_yaml(tmp_path):
    s = load_settings(
        environ={"INFERENCE_AUTH__ENABLED": "false", "INFERENCE_AUTH__DEFAULT_ADMIN": "null"}
    )
    assert s.auth.enabled is False and s.auth.default_admin is None


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        (
            "auth: {rate_limit_per_minut: 5}\n",
            ["auth.rate_limit_per_minut", "local.yaml", "unknown key"],
        ),
        ("sever: {port: 1}\n", ["sever", "unknown key"]),
        ("server: {port: eighty}\n", ["server.port", "local.yaml", "an integer"]),
        ("server: {port: 70000}\n", ["server.port", "<= 65535"]),
        ("auth: {enabled: yes please}\n", ["auth.enabled", "true or false"]),
        ("auth: {registration: sometimes}\n", ["auth.registration", "'open'"]),
        ("auth: {bcrypt_rounds: 2}\n", ["auth.bcrypt_rounds", ">= 4"]),
        ("rate_limits: {login: lots}\n", ["rate_limits.login", "rate limit"]),
        ("models: {registry: [{name: x}]}\n", ["models.registry.0.path", "required"]),
        ("server: 5\n", ["server", "a mapping"]),
        ("- just\n- a list\n", ["mapping of sections"]),
        ("server: {port: [\n", ["not valid YAML"]),
    ],
)
def test_bad_config_names_key_file_and_expectation(tmp_path, text, fragments):
    with pytest.raises(ConfigError) as info:
        load_settings(_write(tmp_path, text), environ={})
    for fragment in fragments:
        assert fragment in str(info.value)


def test_bad_env_value_names_the_variable():
    with pytest.raises(ConfigError, match="env INFERENCE_SERVER__WORKERS"):
        load_settings(environ={"INFERENCE_SERVER__WORKERS": "many"})
    with pytest.raises(ConfigError, match="unknown key"):
        load_settings(environ={"INFERENCE_AUTH__NOPE": "1"})


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "absent.yaml", environ={})


def test_every_problem_is_reported_at_once(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_settings(_write(tmp_path, "server: {port: x, workers: 0}\n"), environ={})
    assert "server.port" in str(info.value) and "server.workers" in str(info.value)


def test_workers_load_the_settings_the_server_checked(tmp_path, monkeypatch):
    """`serve` execs gunicorn, whose workers load settings from the environment it passes."""
    from inference_server.serve import worker_environment

    config = _write(tmp_path, "server: {port: 9100}\nauth: {rate_limit_per_minute: 7}\n")
    monkeypatch.chdir(tmp_path)
    checked = load_settings(
        config.name, overrides={"server": {"host": "::1", "workers": 3}}, environ={}
    )
    environ = worker_environment(checked, config.name)
    monkeypatch.chdir("/")  # a relative config path must still resolve in the workers
    assert load_settings(environ=environ) == checked


def test_a_default_tier_may_name_a_tier_another_layer_defines_but_never_an_unknown_one(tmp_path):
    path = tmp_path / "quotas.yaml"
    path.write_text("quotas:\n  tiers:\n    free: {requests_per_day: 1000}\n")
    env = {"INFERENCE_QUOTAS__DEFAULT_TIER": "free"}
    assert load_settings(path, environ=env).quotas.default_tier == "free"
    with pytest.raises(ConfigError) as refused:
        load_settings(path, environ={"INFERENCE_QUOTAS__DEFAULT_TIER": "fre"})
    assert "default_tier" in str(refused.value) and "'fre'" in str(refused.value)
    with pytest.raises(ConfigError) as refused:
        load_settings(path, environ={"INFERENCE_QUOTAS__TIERS": "{free: {requests_per_hour: 1}}"})
    assert "unknown quota 'requests_per_hour'" in str(refused.value)
