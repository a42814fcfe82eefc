"""Fetching a model artifact from a URL into `data/models/`, all or nothing.

The body is streamed into a temp file beside its destination while its SHA-256 is computed and its
size counted; past the size limit the transfer stops (413). Only a complete file whose checksum
matches (when one was given) and that its backend can load is renamed into place; on any failure
the temp file is removed, so no partial or unverified file is ever left behind.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from auth.errors import ApiError, ValidationError

from .base import ModelLoadError

CHUNK = 1 << 16
SUFFIXES = {"builtin": ".json", "onnx": ".onnx", "torchscript": ".pt"}
SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


class TooLarge(ApiError):
    code, error_code = 413, "PAYLOAD_TOO_LARGE"


def _open(url: str, timeout: float) -> tuple[BinaryIO, int | None]:
    scheme = url.split(":", 1)[0].lower()
    if scheme not in ("http", "https", "file"):
        raise ValidationError("'url' must be an http, https or file URL", details={"field": "url"})
    try:
        response = urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 (schemes checked)
    except urllib.error.HTTPError as exc:
        raise ValidationError(
            f"fetching the model failed: HTTP {exc.code}", details={"field": "url"}
        ) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ValidationError(
            f"fetching the model failed: {reason}", details={"field": "url"}
        ) from None
    length = response.headers.get("Content-Length")
    return response, int(length) if length and length.isascii() and length.isdigit() else None


def fetch_model(
    url: str,
    destination: Path,
    *,
    max_bytes: int,
    timeout: float,
    sha256: str | None,
    validate: Callable[[Path], Any],
) -> str:
    """Download `url` to `destination` atomically; returns the file's SHA-256 (hex).

    `validate(temp_path)` must raise ModelLoadError if the file is not a usable model.
    """
    if sha256 is not None and not SHA256.match(sha256):
        raise ValidationError("'sha256' must be 64 hex digits", details={"field": "sha256"})
    destination.parent.mkdir(parents=True, exist_ok=True)
    source, length = _open(url, timeout)
    too_large = TooLarge(
        f"the model file is larger than the limit of {max_bytes} bytes",
        details={"max_bytes": max_bytes},
    )
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{destination.name}.", suffix=destination.suffix, dir=destination.parent
    )
    tmp = Path(tmp_name)
    try:
        with source, os.fdopen(fd, "wb") as out:
            if length is not None and length > max_bytes:
                raise too_large
            digest, size = hashlib.sha256(), 0
            try:
                while chunk := source.read(CHUNK):
                    size += len(chunk)
                    if size > max_bytes:
                        raise too_large
                    digest.update(chunk)
                    out.write(chunk)
            except OSError as exc:  # a reset or timeout mid-transfer
                raise ValidationError(
                    f"fetching the model failed mid-transfer: {exc}", details={"field": "url"}
                ) from None
            out.flush()
            os.fsync(out.fileno())
        actual = digest.hexdigest()
        if sha256 is not None and actual != sha256.lower():
            raise ValidationError(
                "the downloaded file does not match 'sha256'",
                details={"field": "sha256", "expected": sha256.lower(), "actual": actual},
            )
        try:
            validate(tmp)
        except ModelLoadError as exc:
            raise ValidationError(
                f"the downloaded file is not a usable model: {exc}", details={"field": "url"}
            ) from None
        os.replace(tmp, destination)
        return actual
    finally:
        tmp.unlink(missing_ok=True)
