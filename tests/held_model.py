"""The server's gunicorn app with one more model, `held`, whose predictions wait for the test.

test_inference_threads.py serves `tests.held_model:held_app()` with the server's own gunicorn
command and gevent worker. A prediction of `held` opens the FIFO named by `HELD_MODEL_RELEASE`,
says so in the log (`HELD`) and waits on its inference thread until the test writes a byte to
the FIFO: a prediction that is certainly still running for as long as the test needs, without a
sleep. Every other model is the builtin backend's, unchanged.

Importing this module changes nothing (tests import it for `HELD` and `held_model_server`);
`held_app`, called by gunicorn in a worker it has already patched, puts the held model in and
loads the app.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from inference_server.models import LoadedModel, registry
from inference_server.serve import gunicorn_command
from inference_server.settings import ModelSpec, load_settings
from tests.conftest import DEMO_MODEL
from tests.live import LiveServer, free_port, served, server_env

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


@contextmanager
def held_model_server(
    tmp_path: Path, *, workers: int = 1
) -> Iterator[tuple[LiveServer, Callable[[], None]]]:
    """The server's gunicorn command with `workers` gevent workers, serving `tests.held_model`
    (models `demo` and `held`); yields the server and the function that releases one held
    prediction."""
    fifo = tmp_path / "release"
    os.mkfifo(fifo)
    port = free_port()
    env = server_env(
        tmp_path / "data",
        INFERENCE_SERVER__HOST="127.0.0.1",
        INFERENCE_SERVER__PORT=str(port),
        INFERENCE_SERVER__WORKERS=str(workers),
        INFERENCE_MODELS__REGISTRY=(
            f"[{{name: demo, path: {DEMO_MODEL}}}, {{name: held, path: {DEMO_MODEL}}}]"
        ),
        HELD_MODEL_RELEASE=str(fifo),
    )
    command = [*gunicorn_command(load_settings(environ=env))[:-1], "tests.held_model:held_app()"]

    def release() -> None:
        # Non-blocking: ENXIO if no prediction holds the FIFO open, instead of waiting for one.
        writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        try:
            os.write(writer, b"x")
        finally:
            os.close(writer)

    with served(command, env, port, workers=workers) as server:
        try:
            yield server, release
        finally:
            with contextlib.suppress(OSError):  # a prediction still held must not hold up the end
                release()
