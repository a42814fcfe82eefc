"""Fetching a model artifact from a URL into `data/models/`, all or nothing.

The body is streamed into a temp file beside its destination while its SHA-256 is computed and its
size counted; past the size limit the transfer stops (413). Only a complete file whose checksum
matches (when one was given) and that its backend can load is renamed into place; on any failure
the temp file is removed, so no partial or unverified file is ever left behind. The temp file's
name starts with a dot: `downloaded_files` (what a backup carries) never lists one.

What a download may reach is narrow, because an admin's credential in the wrong hands must not
turn it into a file reader or a probe of the internal network (SSRF):

- `file:` URLs only for regular files below `models.download_roots` (none by default), the
  path normalised and symlinks resolved before the check, every refusal worded alike;
- http(s) only toward public addresses, checked after DNS resolution and again on every
  redirect, over a connection pinned to the address that was checked; loopback, private,
  link-local and multicast hosts need an entry in `models.download_allow_hosts`;
- no error message carries a server path or a low-level reason that could serve as an oracle.
"""

from __future__ import annotations

import functools
import hashlib
import http.client
import ipaddress
import os
import re
import socket
import stat
import tempfile
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from auth import PayloadTooLarge, ValidationError

from .base import ModelLoadError

CHUNK = 1 << 16
MODELS_DIR = "models"  # downloads land in this folder of the data dir
SUFFIXES = {"builtin": ".json", "onnx": ".onnx", "torchscript": ".pt"}
SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
MAX_REDIRECTS = 5
REDIRECTS = frozenset({301, 302, 303, 307, 308})


def downloaded_files(data_dir: Path) -> list[Path]:
    """The model files in the data dir's models folder, downloads under way left out."""
    folder = data_dir / MODELS_DIR
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except FileNotFoundError:
        return []
    return [
        folder / e.name
        for e in entries
        if not e.name.startswith(".") and e.is_file(follow_symlinks=False)
    ]


@dataclass(frozen=True)
class Reach:
    """Where downloads may come from: regular files below `roots` (none: no file URLs), and
    http(s) hosts with public addresses, plus `allow_hosts` whatever their address."""

    roots: tuple[str, ...] = ()
    allow_hosts: frozenset[str] = frozenset()


def _refuse(message: str) -> ValidationError:
    return ValidationError(message, details={"field": "url"})


def _open(url: str, *, timeout: float, reach: Reach) -> tuple[BinaryIO, int | None]:
    parts = urllib.parse.urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme == "file":
        return _open_file(parts, reach)
    if scheme in ("http", "https"):
        return _open_http(parts, timeout=timeout, reach=reach)
    raise _refuse("'url' must be an http, https or file URL")


def _open_file(parts: urllib.parse.SplitResult, reach: Reach) -> tuple[BinaryIO, int | None]:
    """A regular file below a download root. Every refusal reads the same and names no path,
    so the answers cannot be used to learn what exists on the server."""
    refused = _refuse(
        "'url' must name a readable regular file below one of models.download_roots"
        + ("" if reach.roots else " (empty: file URLs are turned off)")
    )
    if not reach.roots or parts.netloc.lower() not in ("", "localhost"):
        raise refused
    path = os.path.realpath(urllib.parse.unquote(parts.path))
    if not os.path.isabs(path) or not any(
        os.path.commonpath([path, root]) == root for root in reach.roots
    ):
        raise refused
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        raise refused from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise refused
    return os.fdopen(fd, "rb"), info.st_size


def _vetted_address(host: str | None, port: int, reach: Reach) -> str:
    """The address to connect to for `host`, refused if it is not a public one (after DNS
    resolution; IPv4-mapped IPv6 unwrapped) unless the host is in models.download_allow_hosts."""
    if not host:
        raise _refuse("'url' has no host")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise _refuse("the host in 'url' could not be resolved") from None
    addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    if host.lower().strip("[]") not in reach.allow_hosts:
        for address in addresses:
            plain = getattr(address, "ipv4_mapped", None) or address
            if not plain.is_global or plain.is_multicast:
                raise _refuse(
                    "downloads from loopback, private, link-local or multicast addresses are "
                    "refused; an operator can allow a host with models.download_allow_hosts"
                )
    return str(addresses[0])


def _connect_to(pinned: tuple[str, int], _asked: Any, *args: Any, **kw: Any) -> socket.socket:
    return socket.create_connection(pinned, *args, **kw)


def _open_http(
    parts: urllib.parse.SplitResult, *, timeout: float, reach: Reach
) -> tuple[BinaryIO, int | None]:
    """GET over a connection pinned to the vetted address (no second DNS answer can swap it),
    following redirects by hand so that every hop is vetted again."""
    for _ in range(MAX_REDIRECTS + 1):
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise _refuse("a redirect left http(s); refused")
        try:
            port = parts.port or (443 if scheme == "https" else 80)
        except ValueError:
            raise _refuse("'url' has an invalid port") from None
        address = _vetted_address(parts.hostname, port, reach)
        connection_class = (
            http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
        )
        connection = connection_class(parts.hostname, port, timeout=timeout)
        connection._create_connection = functools.partial(  # type: ignore[attr-defined]
            _connect_to, (address, port)
        )
        target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
        try:
            connection.request("GET", target, headers={"User-Agent": "inference-server"})
            response = connection.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise _refuse(f"fetching the model failed: {type(exc).__name__}") from None
        if response.status in REDIRECTS and response.getheader("Location"):
            location = response.getheader("Location", "")
            connection.close()
            parts = urllib.parse.urlsplit(urllib.parse.urljoin(parts.geturl(), location))
            continue
        if response.status != 200:
            connection.close()
            raise _refuse(f"fetching the model failed: HTTP {response.status}")
        length = response.getheader("Content-Length")
        return response, int(length) if length and length.isascii() and length.isdigit() else None
    raise _refuse(f"fetching the model failed: more than {MAX_REDIRECTS} redirects")


def fetch_model(
    url: str,
    destination: Path,
    *,
    max_bytes: int,
    timeout: float,
    sha256: str | None,
    validate: Callable[[Path], Any],
    reach: Reach,
) -> str:
    """Download `url` to `destination` atomically; returns the file's SHA-256 (hex).

    `validate(temp_path)` must raise ModelLoadError if the file is not a usable model.
    """
    if sha256 is not None and not SHA256.match(sha256):
        raise ValidationError("'sha256' must be 64 hex digits", details={"field": "sha256"})
    source, length = _open(url, timeout=timeout, reach=reach)
    destination.parent.mkdir(parents=True, exist_ok=True)
    too_large = PayloadTooLarge(
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
            except (OSError, http.client.HTTPException) as exc:  # a reset or timeout mid-way
                reason = type(exc).__name__
                raise _refuse(f"fetching the model failed mid-transfer: {reason}") from None
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
            reason = str(exc).replace(str(tmp), "the file")  # no server paths in answers
            raise ValidationError(
                f"the downloaded file is not a usable model: {reason}", details={"field": "url"}
            ) from None
        os.replace(tmp, destination)
        return actual
    finally:
        tmp.unlink(missing_ok=True)
