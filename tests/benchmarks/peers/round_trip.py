"""This server on memory and files, plus one Redis round trip a request: what a trip costs.

On Redis, this server's limits, quotas and slots cost one trip to Redis a request at most
(`auth/counting.py`), fewer when requests overlap. An app hook here asks the Redis at
`PEER_REDIS_URL` for a PING before every request, through redis-py (the client the `limits`
storage uses), the least any work on Redis can cost a request. `peers.py --redis` serves it as
`ours, api-key + PING/memory`, given as a ratio to the same server on memory: the yardstick of
the Redis rows, as the floor is of the others.
"""

from __future__ import annotations

import os

import redis

from inference_server.wsgi import app

_redis = redis.Redis.from_url(os.environ["PEER_REDIS_URL"])


@app.before_request
def ping() -> None:
    _redis.ping()
