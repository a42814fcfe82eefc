"""The command line: `python run.py [COMMAND]`, or the installed `inference-server` script.

`serve` is the default command, so `python run.py --port 9000` serves on port 9000.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

import click

from auth import SecretError, StoreCorrupt
from auth.limits import LimiterConfigError

from .settings import ConfigError, Settings, load_settings

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _load(config: str | None, **server: object) -> Settings:
    overrides = {"server": {k: v for k, v in server.items() if v is not None}}
    try:
        return load_settings(config, overrides=overrides)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@click.group()
def cli() -> None:
    """Model inference server with authentication."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)


@cli.command()
@click.option(
    "--config",
    "config",
    envvar="INFERENCE_CONFIG",
    type=click.Path(dir_okay=False),
    help="YAML file layered over config/default.yaml",
)
@click.option("--host", help="address to bind (default from config: 127.0.0.1)")
@click.option("--port", type=int, help="TCP port (default from config: 8000)")
@click.option("--workers", type=int, help="worker processes (default from config: 1)")
def serve(config: str | None, host: str | None, port: int | None, workers: int | None) -> None:
    """Serve the API (the default command)."""
    from .serve import serve as run_server

    settings = _load(config, host=host, port=port, workers=workers)
    try:
        run_server(settings)
    except (StoreCorrupt, SecretError, LimiterConfigError) as exc:
        raise click.ClickException(f"{exc}; refusing to start") from None


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or (args[0].startswith("-") and args[0] not in ("--help", "-h")):
        args.insert(0, "serve")
    cli.main(args=args, prog_name="inference-server")
