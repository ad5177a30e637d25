"""Serve a FastAPI app with uvicorn on a free local port in a thread, for real-HTTP tests."""

from __future__ import annotations

import logging
import socket
import threading
import time

import pytest
import uvicorn


class LocalServer:
    """`with LocalServer(app) as url:` serves `app` on 127.0.0.1 until the block ends."""

    def __init__(self, app, timeout: float = 20.0):
        self.app = app
        self.timeout = timeout

    def __enter__(self) -> str:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        port = self.sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )
        self.thread.start()
        deadline = time.monotonic() + self.timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(self.timeout)
        self.sock.close()


@pytest.fixture(autouse=True)
def restore_library_loggers():
    """`create_app` silences pydicom's and highdicom's loggers process-wide; undo it per test."""
    loggers = [logging.getLogger(name) for name in ("pydicom", "highdicom")]
    levels = [logger.level for logger in loggers]
    yield
    for logger, level in zip(loggers, levels, strict=True):
        logger.setLevel(level)
