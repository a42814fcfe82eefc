"""An app-level after_request hook, as an app owner adds one, on bare Flask or on this server.

`PEER_APP=ours` serves this server's app as its gunicorn workers load it; anything else the
bare Flask app. Either gets the same hook, so the pair shows what one more hook costs each.
"""

from __future__ import annotations

import os


def tag(response):
    response.headers["X-Served-By"] = "peer"
    return response


if os.environ.get("PEER_APP") == "ours":
    from inference_server.wsgi import app
else:
    from bare_app import app

app.after_request(tag)
