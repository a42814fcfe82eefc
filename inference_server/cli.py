"""The command line: `python run.py [COMMAND]`, or the installed `inference-server` script.

`serve` is the default command, so `python run.py --port 9000` serves on port 9000. The other
commands work directly on the data files, under the same locks as the server, so they are safe
while it runs and what they change reaches every worker at once:

    create-admin                    the first admin, without ever having a default password
    users list|show|disable|enable|delete|set-role|reset-password|set-password
    keys list|create|revoke         a new key is printed once
    backup DIR, restore DIR         copy the data out (while serving), and back (server stopped)
    storage compact                 fold each journal into its snapshot (as a clean stop does)
    config check                    validate the config and print it, secrets masked
    audit tail                      recent audit events

`--config FILE` may come before the command (`python run.py --config FILE config check`): the
group takes it and each command's own `--config` falls back to it, so a command's own wins.

Exit codes: 0 done, 1 refused (the message says why), 2 bad usage.
"""

from __future__ import annotations

import csv
import functools
import getpass
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click
import yaml
from click.core import ParameterSource

from auth import (
    ALL_SCOPES,
    USAGE_GROUPS,
    ApiError,
    AuthState,
    LimiterConfigError,
    SecretError,
    StorageUnavailable,
    StoreCorrupt,
    accounts,
    check_email,
    check_username,
    profile,
    usage_range,
)

from . import logs
from .jobs.records import STATUSES, public
from .settings import ConfigError, Settings, load_settings

MASK = "********"


def _config(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A command's own --config, else the one given before the command (`--config FILE CMD`),
    which the top-level group parsed first; each also reads INFERENCE_CONFIG."""
    if ctx.get_parameter_source(param.name) is ParameterSource.COMMANDLINE:
        return value
    return ctx.find_root().params.get("config", value)


config_option = click.option(
    "--config",
    "config",
    envvar="INFERENCE_CONFIG",
    type=click.Path(dir_okay=False),
    callback=_config,
    help="YAML file layered over config/default.yaml",
)


def _load(config: str | None, **server: object) -> Settings:
    overrides = {"server": {k: v for k, v in server.items() if v is not None}}
    try:
        return load_settings(config, overrides=overrides)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def _state(config: str | None) -> AuthState:
    from .app import open_auth_state

    try:
        return open_auth_state(_load(config))
    except StoreCorrupt as exc:
        raise click.ClickException(f"{exc}; fix or restore it first") from None
    except StorageUnavailable as exc:
        raise click.ClickException(exc.description) from None


def _actor() -> str:
    return f"cli:{getpass.getuser()}"


def refusals(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the API's refusals (validation, conflicts, missing users) into exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ApiError as exc:
            raise click.ClickException(exc.description or exc.error_code) from None

    return wrapper


def _new_password(password_stdin: bool, password: str | None, label: str = "Password") -> str:
    if password is not None:
        return password
    if password_stdin:
        return sys.stdin.readline().rstrip("\n")
    return click.prompt(label, hide_input=True, confirmation_prompt=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="inference-server", prog_name="inference-server")
@config_option
def cli(config: str | None) -> None:
    """Model inference server with authentication.

    Without a command it serves (the `serve` command):

        python run.py [--config FILE] [--host HOST] [--port PORT] [--workers N]
    """
    logs.configure("text")


@cli.command()
@config_option
@click.option("--host", help="address to bind (default from config: 127.0.0.1)")
@click.option("--port", type=int, help="TCP port (default from config: 8000)")
@click.option("--workers", type=int, help="worker processes (default from config: 1)")
def serve(config: str | None, host: str | None, port: int | None, workers: int | None) -> None:
    """Serve the API (the default command)."""
    from .serve import PortUnavailable
    from .serve import serve as run_server

    settings = _load(config, host=host, port=port, workers=workers)
    logs.configure(settings.server.log_format)
    try:
        run_server(settings, config_file=config)
    except PortUnavailable as exc:
        raise BadAddress(str(exc)) from None
    except (StoreCorrupt, SecretError, LimiterConfigError) as exc:
        raise click.ClickException(f"{exc}; refusing to start") from None
    except StorageUnavailable as exc:
        raise click.ClickException(f"{exc.description}; refusing to start") from None


class BadAddress(click.ClickException):
    exit_code = 2  # bad usage: the address given (or configured) cannot be served on


def _ask(prompt: str, check: Callable[[str], Any], given: str | None) -> Any:
    """`check(given)`, or, when nothing was given, ask until the answer passes `check`."""
    if given is not None:
        return check(given)
    while True:
        try:
            return check(click.prompt(prompt))
        except ApiError as exc:
            click.echo(f"Error: {exc.description}", err=True)


def _create_user(state: AuthState, role: str, *, username, email, password, password_stdin):
    """Create a user from options, asking for what is missing (again after a refusal)."""
    username = _ask("Username", check_username, username)
    email = _ask("Email", check_email, email)
    asking = password is None and not password_stdin
    while True:
        secret = _new_password(password_stdin, password)
        try:
            return accounts.create_user(
                state, username=username, email=email, password=secret, role=role, actor=_actor()
            )
        except ApiError as exc:
            if not asking or (exc.details or {}).get("field") != "password":
                raise
            click.echo(f"Error: {exc.description}", err=True)


def _print_key(key: str, record: dict[str, Any], owner: str) -> None:
    """The key on standard output (for a script to capture), what it is on standard error."""
    click.echo(f"API key {record['id']} for {owner} (shown once, keep it safe):", err=True)
    click.echo(key)


user_options = [
    config_option,
    click.option("--username", help="prompted for when missing"),
    click.option("--email", help="prompted for when missing"),
    click.option("--password", help="prefer --password-stdin: options show up in process lists"),
    click.option("--password-stdin", is_flag=True, help="read the password from standard input"),
]


def with_user_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(user_options):
        fn = option(fn)
    return fn


def _scopes(ctx: click.Context, param: click.Parameter, value: str | None) -> list[str] | None:
    """--scopes 'a,b' as a list; None when not given (a new key's default scopes)."""
    if not value:
        return None
    scopes = [s.strip() for s in value.split(",") if s.strip()]
    unknown = sorted(set(scopes) - ALL_SCOPES)
    if unknown:
        # Refused before anything is made: create-admin would otherwise leave an admin behind
        # without the key it was asked for.
        raise click.ClickException(f"unknown scope(s): {', '.join(unknown)}")
    return scopes


scopes_option = click.option(
    "--scopes",
    callback=_scopes,
    help=f"comma-separated, from: {', '.join(sorted(ALL_SCOPES))} (default: the owner's role's "
    "scopes except admin and account management)",
)


@cli.command("create-admin")
@with_user_options
@click.option("--with-key", metavar="NAME", help="also create an API key and print it once")
@scopes_option
@refusals
def create_admin(config, username, email, password, password_stdin, with_key, scopes) -> None:
    """Create an admin. Used before the first start, no default admin is ever created."""
    if scopes is not None and not with_key:
        raise click.UsageError("--scopes is for the key of --with-key")
    state = _state(config)
    user = _create_user(
        state,
        "admin",
        username=username,
        email=email,
        password=password,
        password_stdin=password_stdin,
    )
    click.echo(f"created admin {user['username']} ({user['id']})")
    if with_key:
        key, record = accounts.create_key(state, user, name=with_key, actor=_actor(), scopes=scopes)
        _print_key(key, record, user["username"])


# -- users -------------------------------------------------------------------------------


@cli.group()
def users() -> None:
    """Manage users."""


USER_COLUMNS = "{:<22}  {:<20} {:<30} {:<6} {:<8} {}"
json_option = click.option(
    "--json", "as_json", is_flag=True, help="print JSON for scripts instead of a table"
)


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2))


@users.command("list")
@config_option
@json_option
def users_list(config, as_json) -> None:
    """List every user."""
    found = accounts.list_users(_state(config))
    if as_json:
        _echo_json([profile(user) for user in found])
        return
    click.echo(USER_COLUMNS.format("ID", "USERNAME", "EMAIL", "ROLE", "STATE", "RATE LIMIT"))
    for user in found:
        state = "active" if user["is_active"] else "disabled"
        limit = user.get("rate_limit") or "role default"
        click.echo(
            USER_COLUMNS.format(
                user["id"], user["username"], user["email"], user["role"], state, limit
            )
        )


@users.command("create")
@with_user_options
@click.option("--role", type=click.Choice(["user", "admin"]), default="user", show_default=True)
@refusals
def users_create(config, username, email, password, password_stdin, role) -> None:
    """Create a user (or an admin with --role admin)."""
    user = _create_user(
        _state(config),
        role,
        username=username,
        email=email,
        password=password,
        password_stdin=password_stdin,
    )
    click.echo(f"created {role} {user['username']} ({user['id']})")


@users.command("show")
@config_option
@click.argument("user")
@refusals
def users_show(config, user) -> None:
    """Show one user (by id, username or email)."""
    _echo_json(profile(accounts.find(_state(config), user)))


def _update(config: str | None, user: str, changes: dict[str, Any], done: str) -> None:
    state = _state(config)
    record = accounts.find(state, user)
    accounts.update_user(state, record["id"], changes, actor=_actor())
    click.echo(f"{record['username']}: {done}")


@users.command("disable")
@config_option
@click.argument("user")
@refusals
def users_disable(config, user) -> None:
    """Disable a user: their sessions end and their keys stop at once."""
    _update(config, user, {"is_active": False}, "disabled")


@users.command("enable")
@config_option
@click.argument("user")
@refusals
def users_enable(config, user) -> None:
    """Enable a disabled user."""
    _update(config, user, {"is_active": True}, "enabled")


@users.command("set-role")
@config_option
@click.argument("user")
@click.argument("role", type=click.Choice(["user", "admin"]))
@refusals
def users_set_role(config, user, role) -> None:
    """Make a user an admin, or an admin a user."""
    _update(config, user, {"role": role}, f"role is now {role}")


@users.command("set-rate-limit")
@config_option
@click.argument("user")
@click.argument("limit")
@refusals
def users_set_rate_limit(config, user, limit) -> None:
    """Set a user's own rate limit: requests per minute (100) or a limit ('1000/hour');
    'none' gives them their role's again."""
    value: Any = None if limit.lower() == "none" else int(limit) if limit.isdigit() else limit
    done = "rate limit is now the role's" if value is None else f"rate limit is now {limit}"
    _update(config, user, {"rate_limit": value}, done)


@users.command("set-models")
@config_option
@click.argument("user")
@click.argument("models")
@refusals
def users_set_models(config, user, models) -> None:
    """Limit the models a user (and so every key of theirs) may call: names or patterns,
    comma-separated ('demo,churn-*'); 'all' lifts the limit."""
    value = _models_arg(models)
    done = "may call every model" if value is None else f"may call {', '.join(value)}"
    _update(config, user, {"models": value}, done)


@users.command("set-tier")
@config_option
@click.argument("user")
@click.argument("tier")
@refusals
def users_set_tier(config, user, tier) -> None:
    """Put a user in a tier of quotas.tiers; 'none' gives them quotas.default_tier again."""
    value = _cleared(tier)
    done = "tier is now the default tier" if value is None else f"tier is now {value}"
    _update(config, user, {"tier": value}, done)


@users.command("set-quota")
@config_option
@click.argument("user")
@click.argument("quotas", nargs=-1, required=True)
@refusals
def users_set_quota(config, user, quotas) -> None:
    """Give a user quotas of their own over their tier's, as NAME=NUMBER
    ('requests_per_day=500 samples_per_month=100000'); 'none' removes them."""
    if [part.lower() for part in quotas] == ["none"]:
        _update(config, user, {"quota": None}, "quotas are now their tier's")
        return
    value: dict[str, Any] = {}
    for part in quotas:
        name, sign, amount = part.partition("=")
        if not sign or not amount.strip().isdigit():
            raise click.BadParameter(f"{part!r}: expected NAME=NUMBER", param_hint="QUOTAS")
        value[name.strip()] = int(amount)
    shown = " ".join(f"{name}={amount}" for name, amount in value.items())
    _update(config, user, {"quota": value}, f"quotas are now {shown} over their tier's")


def _models_arg(value: str) -> list[str] | None:
    """A --models value: comma-separated names or patterns, or 'all' (None)."""
    if value.strip().lower() == "all":
        return None
    return sorted({part.strip() for part in value.split(",") if part.strip()})


def _cleared(value: str) -> str | None:
    """An option value where 'none' clears the setting."""
    return None if value.strip().lower() == "none" else value


@users.command("delete")
@config_option
@click.argument("user")
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
@refusals
def users_delete(config, user, yes) -> None:
    """Delete a user; their sessions end and their keys are revoked."""
    state = _state(config)
    record = accounts.find(state, user)
    if not yes:
        click.confirm(f"delete {record['username']} ({record['id']})?", abort=True)
    accounts.delete_user(state, record["id"], actor=_actor())
    click.echo(f"{record['username']}: deleted")


@users.command("reset-password")
@config_option
@click.argument("user")
@click.option("--password-stdin", is_flag=True, help="read the new password from standard input")
@refusals
def users_reset_password(config, user, password_stdin) -> None:
    """Set a temporary password: the user's sessions end and they must change it at next login."""
    record, ended = _set_password(config, user, password_stdin, permanent=False)
    click.echo(
        f"{record['username']}: password reset, {ended} session(s) ended; "
        "they must change it at their next login"
    )


@users.command("set-password")
@config_option
@click.argument("user")
@click.option("--password-stdin", is_flag=True, help="read the new password from standard input")
@refusals
def users_set_password(config, user, password_stdin) -> None:
    """Set a permanent password (asked for twice, never on the command line): the user's
    sessions end; no change is asked of them at their next login."""
    record, ended = _set_password(config, user, password_stdin, permanent=True)
    click.echo(f"{record['username']}: password set, {ended} session(s) ended")


def _set_password(
    config: str | None, user: str, password_stdin: bool, *, permanent: bool
) -> tuple[dict[str, Any], int]:
    state = _state(config)
    record = accounts.find(state, user)
    secret = _new_password(password_stdin, None, "New password")
    ended = accounts.set_password(state, record["id"], secret, actor=_actor(), permanent=permanent)
    return record, ended


# -- keys --------------------------------------------------------------------------------


@cli.group()
def keys() -> None:
    """Manage API keys."""


KEY_COLUMNS = "{:<20}  {:<14} {:<22} {:<20} {:<30} {:<8} {:<21} {}"


@keys.command("list")
@config_option
@click.option("--user", help="only this user's keys")
@json_option
@refusals
def keys_list(config, user, as_json) -> None:
    """List keys (never the keys themselves)."""
    state = _state(config)
    owner = accounts.find(state, user)["id"] if user else None
    if as_json:
        _echo_json(accounts.list_keys(state, owner))
        return
    click.echo(
        KEY_COLUMNS.format(
            "ID", "PREFIX", "USER", "NAME", "SCOPES", "STATE", "EXPIRES", "LAST USED"
        )
    )
    for key in accounts.list_keys(state, owner):
        click.echo(
            KEY_COLUMNS.format(
                key["id"],
                key["prefix"] + "…",
                key["user_id"],
                key["name"],
                ",".join(key["scopes"]),
                "active" if key["is_active"] else "revoked",
                key["expires_at"] or "never",
                key["last_used"] or "never",
            )
        )


models_option = click.option(
    "--models", help="model names or patterns it may call, comma-separated ('demo,churn-*')"
)
key_rate_option = click.option(
    "--rate-limit", help="its own rate limit ('10/second'), at most its owner's"
)
concurrency_option = click.option(
    "--max-concurrent", help="predictions it may have in flight at once"
)


@keys.command("create")
@config_option
@click.option("--user", required=True, help="owner (id, username or email)")
@click.option("--name", required=True)
@scopes_option
@click.option("--expires-days", type=click.IntRange(1, 3650))
@models_option
@key_rate_option
@concurrency_option
@refusals
def keys_create(
    config, user, name, scopes, expires_days, models, rate_limit, max_concurrent
) -> None:
    """Create a key; it is printed once, here, and never stored."""
    state = _state(config)
    owner = accounts.find(state, user)
    key, record = accounts.create_key(
        state,
        owner,
        name=name,
        actor=_actor(),
        expires_days=expires_days,
        scopes=scopes,
        limits=_key_limits(models, rate_limit, max_concurrent),
    )
    _print_key(key, record, owner["username"])


def _key_limits(
    models: str | None, rate_limit: str | None, max_concurrent: str | None
) -> dict[str, Any]:
    """The key limits named by options ('all' or 'none' clear one)."""
    limits: dict[str, Any] = {}
    if models is not None:
        limits["models"] = _models_arg(models)
    if rate_limit is not None:
        limits["rate_limit"] = _cleared(rate_limit)
    if max_concurrent is not None:
        most = _cleared(max_concurrent)
        limits["max_concurrent"] = int(most) if most and most.isdigit() else most
    return limits


@keys.command("update")
@config_option
@click.argument("key_id")
@click.option("--name")
@models_option
@key_rate_option
@concurrency_option
@refusals
def keys_update(config, key_id, name, models, rate_limit, max_concurrent) -> None:
    """Change a key's name, models ('all'), rate limit or max concurrent ('none' clears)."""
    changes = _key_limits(models, rate_limit, max_concurrent)
    if name is not None:
        changes["name"] = name
    record = accounts.update_key(_state(config), key_id, changes, actor=_actor())
    shown = ("id", "name", "models", "rate_limit", "max_concurrent")
    click.echo(json.dumps({field: record.get(field) for field in shown}, indent=2))


@keys.command("revoke")
@config_option
@click.argument("key_id")
@refusals
def keys_revoke(config, key_id) -> None:
    """Revoke a key by id; it stops working at once."""
    accounts.revoke_key(_state(config), key_id, actor=_actor())
    click.echo(f"{key_id}: revoked")


# -- usage --------------------------------------------------------------------------------


@cli.group()
def usage() -> None:
    """Usage of the predictions (what the workers have written: each writes its counts every
    usage.flush_seconds)."""


USAGE_FIELDS = ("requests", "failed", "samples", "inference_ms")


@usage.command("report")
@config_option
@click.option("--user", help="one user (id, username or email); default: everyone")
@click.option("--by", "group_by", type=click.Choice(USAGE_GROUPS), default="day", show_default=True)
@click.option("--from", "first", metavar="DAY", help="first day, 2026-12-01; default: the 1st")
@click.option("--to", "last", metavar="DAY", help="last day; default: today (UTC)")
@json_option
@click.option("--csv", "as_csv", is_flag=True, help="the rows as CSV")
@refusals
def usage_report(config, user, group_by, first, last, as_json, as_csv) -> None:
    """Predictions by day, hour, model, key or user, with the totals (and a user's quotas)."""
    state = _state(config)
    owner = accounts.find(state, user) if user else None
    first_day, last_day, group_by = usage_range(first, last, group_by, now=state.clock())
    report = accounts.usage_report(state, owner, first_day, last_day, group_by)
    if as_json:
        _echo_json(report)
        return
    if as_csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow((group_by, *USAGE_FIELDS))
        for row in report["rows"]:
            writer.writerow((row[group_by], *(row[f] for f in USAGE_FIELDS)))
        return
    columns = "{:<24} {:>10} {:>8} {:>12} {:>14}"
    click.echo(f"usage {report['from']} .. {report['to']}, by {group_by}")
    click.echo(columns.format(group_by.upper(), "REQUESTS", "FAILED", "SAMPLES", "INFERENCE MS"))
    for row in [*report["rows"], {group_by: "total", **report["totals"]}]:
        click.echo(columns.format(row[group_by], *(row[f] for f in USAGE_FIELDS)))
    for quota in report["quotas"]:
        click.echo(
            f"quota {quota['quota']}: {quota['used']} of {quota['limit']} used, "
            f"{quota['remaining']} left, resets {quota['resets_at']}"
        )


# -- data ---------------------------------------------------------------------------------


@cli.command()
@config_option
@click.argument("destination", type=click.Path(file_okay=False))
@refusals
def backup(config, destination) -> None:
    """Copy the data into DESTINATION, a new or empty directory; safe while the server runs.

    The stores (each under its lock, so its snapshot and journal are one consistent version),
    the secret, the audit log and its rotated generations, the downloaded models, and a
    manifest of their sizes and SHA-256 sums that `restore` checks."""
    from .backup import BackupError, make_backup

    settings = _load(config)
    try:
        copied = make_backup(_state(config), settings.data_dir, Path(destination))
    except BackupError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"copied {', '.join(copied)} to {Path(destination).resolve()}")


@cli.command()
@config_option
@click.argument("source", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--force",
    is_flag=True,
    help="replace the data the data dir holds (moved aside into DATA/replaced-*/, not deleted)",
)
@refusals
def restore(config, source, force) -> None:
    """Copy the backup in SOURCE into the data dir, with the server stopped.

    Every file is checked against the backup's manifest and the stores are opened before the
    data dir changes. Refused while a process has the data dir's stores open (seen through
    /proc on Linux), and over a data dir that holds a store or the secret unless --force.
    Downloaded models are found in the restored data dir wherever it is."""
    from .backup import BackupError, restore_backup

    settings = _load(config)
    try:
        done = restore_backup(settings, Path(source), force=force)
    except BackupError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"restored {', '.join(done.files)} into {settings.data_dir}")
    if not done.checked:
        click.echo(
            "the backup has no manifest (made by an older release): its files were not "
            "checked against one, but its stores open",
            err=True,
        )
    if done.aside:
        click.echo(
            f"what the data dir held ({', '.join(done.replaced)}) was moved to {done.aside}; "
            "delete it once the restored data is checked",
            err=True,
        )
    if done.rebased:
        click.echo(
            f"paths of model(s) {', '.join(done.rebased)} are now kept relative to the data dir",
            err=True,
        )


# -- storage ------------------------------------------------------------------------------


@cli.group("storage")
def storage_group() -> None:
    """Maintain the stored data."""


@storage_group.command("compact")
@config_option
@refusals
def storage_compact(config) -> None:
    """Fold every store's journal into its snapshot, as a clean stop of the server does, so
    that the data files read as whole JSON documents (to read, or edit by hand); safe while
    the server runs."""
    folded = _state(config).storage.shutdown()
    for each in folded:
        click.echo(f"folded {each}")
    if not folded:
        click.echo("nothing to fold: every journal is empty")


@storage_group.command("migrate")
@config_option
@click.option("--to", "to", type=click.Choice(["json", "redis"]), required=True)
@click.option("--redis-url", help="the Redis to copy into (default: storage.redis_url)")
@click.option("--data-dir", help="the data dir to copy into (default: storage.data_dir)")
@click.option("--force", is_flag=True, help="replace what the target already holds")
@refusals
def storage_migrate(config, to, redis_url, data_dir, force) -> None:
    """Copy every record, the token signing secret and the audit events from the configured
    backend into the other one, then read each record back and compare. Stop the servers
    first; afterwards set storage.backend to the target and start them again."""
    from auth import MigrationRefused, Storage, migrate, open_storage

    settings = _load(config)
    if to == settings.storage.backend:
        raise click.UsageError(f"the configured backend is {to} already: nothing to copy")
    stored = settings.storage
    url = redis_url or stored.redis_url
    if to == "redis" and not url:
        raise click.UsageError("give --redis-url or set storage.redis_url")

    def target() -> Storage:
        return open_storage(
            backend=to,
            data_dir=Path(data_dir) if data_dir else settings.data_dir,
            lock_timeout=stored.lock_timeout_seconds,
            redis_url=url,
            redis_prefix=stored.redis_prefix,
        )

    source = _state(config).storage
    into = target()
    try:
        copied = migrate(source, into, force=force, reopen=target)
    except MigrationRefused as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        into.close()
        source.close()
    for each in copied:
        what = "events copied" if each.store == "audit" else "records copied and checked"
        click.echo(f"{each.store}: {each.records} {what}")
    click.echo(f"done: set storage.backend: {to} and start the servers")


# -- config and audit ----------------------------------------------------------------------


@cli.group("config")
def config_group() -> None:
    """Inspect the configuration."""


def masked(settings: Settings) -> dict[str, Any]:
    """The effective settings as plain data, with every secret replaced by a mask."""
    import dataclasses

    data = dataclasses.asdict(settings)
    for section, key in (("auth", "jwt_secret"), ("metrics", "token")):
        if data[section][key]:
            data[section][key] = MASK
    if data["auth"]["default_admin"]:
        data["auth"]["default_admin"]["password"] = MASK
    for section, key in (("rate_limits", "storage_uri"), ("storage", "redis_url")):
        if data[section][key]:  # a password in the URL
            data[section][key] = re.sub(r"(//[^:/@]*:)[^@]*@", rf"\g<1>{MASK}@", data[section][key])
    return data


@config_group.command("check")
@config_option
def config_check(config) -> None:
    """Validate the config files and INFERENCE_* variables as the server does at start (every
    layer, the secret's strength, the rate limit storage URI, readable model files); print the
    result, secrets masked."""
    settings = _load(config)
    unreadable = [
        f"models.registry[{i}].path: model {spec.name!r}: cannot read {spec.path}"
        for i, spec in enumerate(settings.models.registry)
        if not (os.path.isfile(spec.path) and os.access(spec.path, os.R_OK))
    ]
    if unreadable:
        raise click.ClickException("invalid configuration:\n  - " + "\n  - ".join(unreadable))
    click.echo(yaml.safe_dump(masked(settings), sort_keys=False), nl=False)
    click.echo("# configuration is valid", err=True)


@cli.group()
def jobs() -> None:
    """Prediction jobs: run their consumer, list, show and cancel them."""


def _jobs(config: str | None, *, serving: bool = False) -> Any:
    """The jobs of the configured server; `serving`: with its models loaded, to run them (and
    this process's log lines in the server's format)."""
    from .app import create_app, open_app_storage, open_auth_state
    from .jobs.service import Jobs

    settings = _load(config)
    if serving:
        logs.configure(settings.server.log_format)
    if not settings.jobs.enabled:
        raise click.ClickException("jobs are off (jobs.enabled)")
    try:
        if serving:
            return create_app(settings).extensions["jobs"]
        storage = open_app_storage(settings)
        state = open_auth_state(settings, storage=storage)
        return Jobs(settings, storage=storage, auth_state=state)
    except StoreCorrupt as exc:
        raise click.ClickException(f"{exc}; fix or restore it first") from None


@jobs.command("worker")
@config_option
@click.option("--workers", type=int, help="threads running jobs (default: jobs.workers)")
@click.option(
    "--nice",
    type=click.IntRange(0, 19),
    default=0,
    help="lower this process's CPU priority (the server starts its consumer at 10)",
)
def jobs_worker(config, workers, nice) -> None:
    """Run jobs until stopped (Ctrl-C or SIGTERM): what `python run.py` starts beside the
    server; run more of them for more capacity."""
    from .jobs.queue import run_consumer

    os.nice(nice)  # beside a server's workers, predictions first: jobs take the CPU left
    service = _jobs(config, serving=True)
    service.recover()
    run_consumer(
        service.huey, workers=workers or service.settings.workers, on_stop=service.stopping.set
    )


@jobs.command("list")
@config_option
@click.option("--user", help="one user's jobs (id, username or email)")
@click.option("--status", type=click.Choice(STATUSES))
@json_option
@refusals
def jobs_list(config, user, status, as_json) -> None:
    """Jobs, newest first: id, user, status, model, done/total, created."""
    service = _jobs(config)
    user_id = accounts.find(_state(config), user)["id"] if user else None
    found = service.list(None, user=user_id, status=status, project=None)
    if as_json:
        _echo_json([public(job_id, job) for job_id, job in found])
        return
    for job_id, job in found:
        done = job["completed"] + job["failed"]
        created = public(job_id, job)["created_at"]
        click.echo(
            f"{job_id}  {job['user_id']}  {job['status']:<11} {job['model']}  "
            f"{done}/{job['total']}  {created}"
        )


@jobs.command("show")
@config_option
@click.argument("job_id")
@refusals
def jobs_show(config, job_id) -> None:
    """One job, as the API shows it."""
    click.echo(json.dumps(public(job_id, _jobs(config).get(None, job_id)), indent=2))


@jobs.command("cancel")
@config_option
@click.argument("job_id")
@refusals
def jobs_cancel(config, job_id) -> None:
    """Cancel a job: a queued one at once, a running one after its current chunk."""
    job = _jobs(config).cancel(None, job_id)
    click.echo(f"{job_id}: {job['status']}")


@cli.group()
def audit() -> None:
    """Read the audit log."""


@audit.command("tail")
@config_option
@click.option("-n", "count", type=click.IntRange(1, 100_000), default=20, show_default=True)
@click.option("--user", help="events about or by this user (id, username or email)")
@click.option("--event", help="only this event, e.g. auth.login")
@refusals
def audit_tail(config, count, user, event) -> None:
    """Print the most recent audit events, one JSON object per line."""
    state = _state(config)
    names: tuple[str, ...] = ()
    if user:
        record = accounts.find(state, user)
        names = (record["id"], record["username"])
    entries = state.audit.read(count=count, user=names, event=event)
    for entry in entries:
        click.echo(json.dumps(entry, sort_keys=True))
    if not entries:
        click.echo("no audit events match", err=True)


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    at = 0  # where the default command goes: after a --config given first, which is the group's
    if args[:1] == ["--config"]:
        at = 2
    elif args[:1] and args[0].startswith("--config="):
        at = 1
    first = args[at] if at < len(args) else None
    if first is None or (first.startswith("-") and first not in ("--help", "-h", "--version")):
        args.insert(at, "serve")
    cli.main(args=args, prog_name="inference-server")
