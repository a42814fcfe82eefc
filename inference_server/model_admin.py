"""The /models blueprint: list and describe models (models:read), manage and download them
(models:manage, which only admins hold). Every change is written to the audit log."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from flask import Blueprint, current_app, g, jsonify

from auth import (
    PermissionDenied,
    ValidationError,
    auth_state,
    check_model,
    doc,
    json_body,
    may_call,
    require_auth,
    text,
)

from . import schemas
from .models import ACTIONS, load_model
from .models.download import SUFFIXES, Reach, fetch_model
from .predict import registry
from .settings import ConfigError, ModelSpec, parse_section

bp = Blueprint("models", __name__, url_prefix="/models")

# What a download may say about the model; the path is ours to choose.
SPEC_FIELDS = ("name", "backend", "version", "description", "input", "outputs", "options", "lazy")


def _may_manage() -> None:
    """In simple mode nobody is authenticated: changing models is off unless asked for."""
    settings = current_app.extensions["settings"]
    if not settings.auth.enabled and not settings.models.manage_in_simple_mode:
        raise PermissionDenied(
            "model management is off while authentication is disabled (simple mode): anyone "
            "who reaches this port could use it; set models.manage_in_simple_mode: true to allow"
        )


def _audit(event: str, **fields: Any) -> None:
    principal = g.get("principal")
    auth_state().audit.record(event, actor=principal.id if principal else None, **fields)


@bp.get("")
@doc("Every model: status, input shape, version", responses={200: schemas.MODELS})
@require_auth(scopes=["models:read"])
def list_models():
    """The models this credential may call (a key or user with `models` sees only those)."""
    default = registry().default
    return jsonify(
        {
            "default": default if may_call(default) else None,
            "models": registry().describe(listed=may_call),
        }
    )


@bp.get("/<name>")
@doc(
    "One model",
    path={"name": schemas.NAME},
    path_examples={"name": schemas.default_model},
    responses={200: schemas.MODEL},
)
@require_auth(scopes=["models:read"])
def show_model(name: str):
    check_model(name)
    return jsonify(registry().describe(name, listed=may_call))


@bp.post("/manage")
@doc(
    "Load, unload, reload or remove a model, or make it the default",
    body=schemas.MANAGE,
    example=schemas.manage_example,
    responses={200: schemas.MANAGED},
    errors=(403, 404, 409),
)
@require_auth(scopes=["models:manage"])
def manage():
    _may_manage()
    body = json_body()
    action = body.get("action")
    if action not in ACTIONS:
        raise ValidationError(
            f"'action' must be one of: {', '.join(ACTIONS)}", details={"field": "action"}
        )
    name = text(body, "model", max_len=64)
    view = registry().manage(action, name)  # type: ignore[arg-type]
    _audit("model.managed", action=action, model=name)
    return jsonify({"action": action, "model": view})


@bp.post("/download")
@doc(
    "Fetch a model file, check its sha256, load and register it",
    body=schemas.DOWNLOAD,
    example=schemas.DOWNLOAD_EXAMPLE,  # the URL and sha256 of your own model file
    responses={201: schemas.DOWNLOADED},
    errors=(403, 409),
)
@require_auth(scopes=["models:manage"])
def download():
    _may_manage()
    body = json_body()
    url = text(body, "url", max_len=2048)
    sha256 = text(body, "sha256", required=False, max_len=64, min_len=64)
    spec_fields = {k: body[k] for k in SPEC_FIELDS if k in body}
    if "backend" not in spec_fields:
        raise ValidationError("'backend' is required", details={"field": "backend"})
    try:
        spec = parse_section(ModelSpec, {**spec_fields, "path": "-"}, origin="request")
    except ConfigError as exc:
        raise ValidationError(str(exc), details={"field": "spec"}) from None
    settings = current_app.extensions["settings"]
    destination = settings.data_dir / "models" / f"{spec.name}{SUFFIXES[spec.backend]}"
    registry().check_downloadable(spec.name, destination)  # before a byte is written
    spec = dataclasses.replace(spec, path=str(destination))
    models = settings.models
    digest = fetch_model(
        url,  # type: ignore[arg-type]
        destination,
        max_bytes=int(models.download_max_mb * 1024 * 1024),
        timeout=models.download_timeout_seconds,
        sha256=sha256,
        validate=lambda tmp: load_model(dataclasses.replace(spec, path=str(tmp))),
        reach=Reach(
            roots=tuple(os.path.realpath(root) for root in models.download_roots),
            allow_hosts=frozenset(host.lower() for host in models.download_allow_hosts),
        ),
    )
    view = registry().register(dataclasses.asdict(spec))
    _audit("model.downloaded", model=spec.name, backend=spec.backend, sha256=digest)
    return jsonify({"model": view, "sha256": digest}), 201
