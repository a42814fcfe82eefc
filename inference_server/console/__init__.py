"""GET /console: a web console for people, over the same JSON API (`console.enabled`).

The page and its two assets are files of this package (`static/`), served by this server: no
CDN, no build step. The page itself is public (it holds nothing); everything it shows comes from
the API with the access token of the user who signs in on it, kept in the page's memory. Its
answers carry a strict Content-Security-Policy: scripts, styles and connections to this server
only, no inline script, no framing, so that a value rendered by mistake could not run even if
the page did not already put every value in as text.
"""

from __future__ import annotations

import functools
from pathlib import Path

from flask import Blueprint, Flask, Response

from auth import NotFound, doc, exempt, public

bp = Blueprint("console", __name__, url_prefix="/console")

STATIC = Path(__file__).parent / "static"
ASSETS = {"console.js": "text/javascript", "console.css": "text/css"}
POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
TEXT = {"type": "string"}


def init_app(app: Flask) -> None:
    if app.extensions["settings"].console.enabled:
        app.register_blueprint(bp)


@bp.after_request
def guard_the_page(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = POLICY
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Frame-Options"] = "DENY"
    return response


@bp.get("")
@doc("The web console: keys, usage, jobs and users", responses={200: TEXT}, media=("text/html",))
@public
@exempt
def page():
    return _served("index.html", "text/html")


@bp.get("/<asset>")
@doc(
    "The console's script and style",
    path={"asset": {"type": "string", "enum": sorted(ASSETS)}},
    path_examples={"asset": "console.js"},
    responses={200: TEXT},
    media=("text/css", "text/javascript"),
)
@public
@exempt
def asset(asset: str):
    if asset not in ASSETS:
        raise NotFound(f"no asset {asset!r}")
    return _served(asset, ASSETS[asset])


@functools.cache
def _file(name: str) -> bytes:
    return (STATIC / name).read_bytes()  # read once: three small files


def _served(name: str, mimetype: str) -> Response:
    response = Response(_file(name), mimetype=mimetype)
    response.headers["Cache-Control"] = "no-cache"  # a new release's page at the next load
    return response
