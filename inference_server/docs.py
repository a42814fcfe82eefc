"""GET /openapi.json and GET /docs: the API description and a page to try it, both public.

The description is generated from the app's own routes (`auth.openapi`), once per app. The page
is Swagger UI from the assets bundled in the `flask-swagger-ui` package, served by this server:
no CDN, no request leaves for anywhere else (`validatorUrl: null` stops the badge that would
call swagger.io). Its Authorize button takes an access token (`bearerAuth`) or an API key
(`apiKeyAuth`). `docs.enabled: false` leaves both routes out.
"""

from __future__ import annotations

import functools
import importlib.metadata
from pathlib import Path

import flask_swagger_ui
from flask import Blueprint, Flask, Response, current_app, jsonify, send_from_directory

from auth import NotFound, describe, doc, exempt, public

bp = Blueprint("docs", __name__)

ASSETS = Path(flask_swagger_ui.__file__).parent / "dist"
SERVED_ASSETS = frozenset({"swagger-ui.css", "swagger-ui-bundle.js", "favicon-32x32.png"})
PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>inference-server API</title>
  <link rel="stylesheet" href="docs/swagger-ui.css">
  <link rel="icon" type="image/png" href="docs/favicon-32x32.png">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="docs/swagger-ui-bundle.js"></script>
  <script>
    window.ui = SwaggerUIBundle({
      url: "openapi.json",
      dom_id: "#swagger-ui",
      deepLinking: true,
      persistAuthorization: true,
      tryItOutEnabled: true,
      validatorUrl: null
    });
  </script>
</body>
</html>
"""
TEXT = {"type": "string"}
INTRODUCTION = """Every route but `/health`, `/ready`, these docs and the console needs credentials.
To try them on this page:

1. **Log in**: open `POST /auth/login`, *Try it out*, *Execute*. Its body is pre-filled with the
   default admin of a new server (`admin` / `admin123`, which must then be changed with
   `POST /auth/change-password` before anything else); put your own username (or email) and
   password. Only those two fields are needed, as JSON or as a form.
2. Copy the `access_token` of the answer.
3. **Authorize** (the button above): paste the token into `bearerAuth` (the token alone,
   without "Bearer"), or an API key (`sk_live_...`) into `apiKeyAuth`.
4. Try `POST /predict`: its example is a sample shaped for the server's default model.

An access token lasts `auth.access_token_expire_minutes`; `POST /auth/refresh` trades the refresh
token for new ones (the old one then stops working). Every error answers one JSON shape,
`{"error": {"code", "message", "request_id", "details"}}`.
"""


def init_app(app: Flask) -> None:
    if app.extensions["settings"].docs.enabled:
        app.register_blueprint(bp)


@functools.cache
def _version() -> str:
    try:
        return importlib.metadata.version("inference-server")
    except importlib.metadata.PackageNotFoundError:
        return "0"


@bp.get("/openapi.json")
@doc("This description (OpenAPI 3.1)", responses={200: {"type": "object"}})
@public
@exempt
def openapi():
    document = current_app.extensions.get("openapi")
    if document is None:
        settings = current_app.extensions["settings"]
        document = current_app.extensions["openapi"] = describe(
            current_app,
            title="inference-server",
            version=_version(),
            auth_enabled=settings.auth.enabled,
            description=INTRODUCTION if settings.auth.enabled else None,
        )
    return jsonify(document)


@bp.get("/docs")
@doc("Interactive API documentation (Swagger UI)", responses={200: TEXT}, media=("text/html",))
@public
@exempt
def page():
    return Response(PAGE, mimetype="text/html")


@bp.get("/docs/<asset>")
@doc(
    "The page's scripts, styles and icon",
    path={"asset": {"type": "string", "enum": sorted(SERVED_ASSETS)}},
    path_examples={"asset": "swagger-ui.css"},
    responses={200: TEXT},
    media=("text/css", "text/javascript", "image/png"),
)
@public
@exempt
def asset(asset: str):
    if asset not in SERVED_ASSETS:
        raise NotFound(f"no asset {asset!r}")
    return send_from_directory(ASSETS, asset)
