"""The audit log: one JSON object per line in `data/audit.log`, appended, never rewritten.

Callers pass facts (event name, user ids, names, outcomes), never secrets; the request id and the
client address are added here so every line can be tied to an HTTP exchange. Lines are written
with a single `write` on a file opened with O_APPEND, so lines from several worker processes
interleave whole.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from flask import has_request_context

from .errors import request_id
from .limits import client_address


class AuditLog:
    def __init__(self, path: Path) -> None:
        self.path = path

    def record(self, event: str, **fields: Any) -> None:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "event": event,
        }
        if has_request_context():
            entry["request_id"] = request_id()
            entry["ip"] = client_address()
        entry.update(fields)
        line = (json.dumps(entry, sort_keys=True) + "\n").encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
