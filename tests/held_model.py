"""The server's gunicorn app with one more model, `held`, whose predictions wait for the test.

test_inference_threads.py serves `tests.held_model:held_app()` with the server's own gunicorn
command and gevent worker. A prediction of `held` opens the FIFO named by `HELD_MODEL_RELEASE`,
says so in the log (`HELD`) and waits on its inference thread until the test writes a byte to
the FIFO: a prediction that is certainly still running for as long as the test needs, without a
sleep. Every other model is the builtin backend's, unchanged.

Importing this module changes nothing (the test imports it for `HELD`); `held_app`, called by
gunicorn in a worker it has already patched, puts the held model in and loads the app.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np

from inference_server.models import LoadedModel, registry
from inference_server.settings import ModelSpec

HELD = "the held model holds a prediction"
log = logging.getLogger(__name__)
builtin = registry.LOADERS["builtin"]


def load(spec: ModelSpec) -> LoadedModel:
    model = builtin(spec)
    if spec.name != "held":
        return model

    def run(batch: np.ndarray):
        # O_RDWR: the open does not wait for a writer, and the read waits for the test's byte
        # instead of ending at once because no writer is there yet.
        fifo = os.open(os.environ["HELD_MODEL_RELEASE"], os.O_RDWR)
        try:
            log.warning(HELD)  # after the open: from here on the test can release it
            os.read(fifo, 1)
        finally:
            os.close(fifo)
        return model.run(batch)

    return dataclasses.replace(model, run=run)


def held_app():
    registry.LOADERS["builtin"] = load
    from inference_server.wsgi import app  # it builds the app, loading the models through `load`

    return app
