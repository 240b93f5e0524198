"""Issue #13 item 1: each start-up failure of ``ozzy web``, ``ozzy relay``, ``ozzy worker`` and
``ozzy db upgrade``, run as a real process, is one or two lines that say what to do, a non-zero exit
and no traceback (unless ``--debug``). Redis unreachable at start is one warning line, and the
process goes on by itself once Redis is there."""

from __future__ import annotations

import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from shared.config import Config
from tests.e2e.procs import OZZY, ROOT, OzzyProcess, process_env
from tests.servers import PrivateRedis, free_port

MAKE_KEY = 'python -c "import secrets; print(secrets.token_urlsafe(32))"'


def run(args: list[str], env: dict[str, str], timeout: float = 60) -> tuple[int, list[str]]:
    """Run ``ozzy ARGS`` to its end: (exit code, the lines of its combined output)."""
    done = subprocess.run(OZZY + args, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=timeout)
    return done.returncode, done.stdout.splitlines()


def assert_short(lines: list[str], first: str, *, code: int, got: int, at_most: int = 2) -> None:
    assert got == code, "\n".join(lines)
    assert lines and lines[0].startswith(first), "\n".join(lines)
    assert len(lines) <= at_most and not any("Traceback" in line for line in lines), "\n".join(lines)


def url_of(settings: Config, database: str, **parts: object) -> str:
    return make_url(settings.database_url).set(database=database, **parts).render_as_string(hide_password=False)


@contextmanager
def scratch_database(database_server_url: str, *versions: str) -> Iterator[str]:
    """A new database holding only an ``alembic_version`` table with ``versions`` (none: empty)."""
    name = f"ozzy_startup_{uuid.uuid4().hex[:8]}"
    admin = create_engine(database_server_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(database_server_url).set(database=name).render_as_string(hide_password=False)
    try:
        if versions:
            engine = create_engine(url, poolclass=NullPool)
            with engine.begin() as conn:
                conn.execute(text("CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)"))
                for version in versions:
                    conn.execute(text("INSERT INTO alembic_version VALUES (:v)"), {"v": version})
            engine.dispose()
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


# --- ozzy web -----------------------------------------------------------------------------------


def test_web_on_a_busy_port_says_so_in_one_line(settings) -> None:
    port = free_port()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        code, lines = run(["web", "--host", "127.0.0.1", "--port", str(port)], process_env(settings))
    assert_short(lines, f"ozzy web: port {port} is in use; stop the other server or pass --port", code=1, got=code)
    assert not any("listening" in line or "http://" in line for line in lines)


@pytest.mark.parametrize("key", [None, "too-short-for-a-secret"], ids=["missing", "weak"])
def test_web_without_a_strong_secret_key_names_the_command_that_makes_one(settings, key) -> None:
    env = process_env(settings, PORT=str(free_port()))
    if key is None:
        env.pop("SECRET_KEY")
    else:
        env["SECRET_KEY"] = key
    code, lines = run(["web", "--host", "127.0.0.1"], env)
    first = "ozzy web: SECRET_KEY is required" if key is None else "ozzy web: SECRET_KEY is too short"
    assert_short(lines, first, code=1, got=code)
    assert MAKE_KEY in lines[0]


# --- the database -------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["relay"], ["worker"], ["web", "--host", "127.0.0.1"], ["db", "upgrade"]])
def test_a_missing_database_is_named_with_the_fix(settings, command) -> None:
    name = f"ozzy_missing_{uuid.uuid4().hex[:8]}"
    env = process_env(settings, DATABASE_URL=url_of(settings, name, password="s3cret"), PORT=str(free_port()))
    code, lines = run(command, env)
    shown = " ".join(command[:2]) if command[0] == "db" else command[0]
    assert_short(lines, f"ozzy {shown}: the database '{name}' does not exist", code=1, got=code)
    assert f"createdb {name}" in lines[0] and "s3cret" not in lines[0] and "***" in lines[0]


def test_db_upgrade_with_postgresql_unreachable_says_start_it(settings) -> None:
    port = free_port()
    env = process_env(settings, DATABASE_URL=url_of(settings, "app", host="127.0.0.1", port=port))
    code, lines = run(["db", "upgrade"], env)
    assert_short(lines, "ozzy db upgrade: PostgreSQL is unreachable at postgresql://", code=1, got=code)
    assert f"127.0.0.1:{port}/app" in lines[0] and "start PostgreSQL" in lines[0]


@pytest.mark.parametrize("command", [["relay"], ["worker"], ["web", "--host", "127.0.0.1"]])
@pytest.mark.parametrize(("versions", "says"), [
    ((), "the database has no schema yet: run `ozzy db upgrade`"),
    (("ozzy_0001",), "the database is behind this code: run `ozzy db upgrade`"),
    (("ozzy_9999",), "the database is at revision ozzy_9999 which this code does not know"),
], ids=["empty", "behind", "unknown"])
def test_processes_check_the_schema_at_start(settings, database_server_url, command, versions, says) -> None:
    with scratch_database(database_server_url, *versions) as url:
        code, lines = run(command, process_env(settings, DATABASE_URL=url, PORT=str(free_port())))
    assert_short(lines, f"ozzy {command[0]}: {says}", code=1, got=code)


def test_db_upgrade_on_an_unknown_revision_is_one_line(settings, database_server_url) -> None:
    with scratch_database(database_server_url, "ozzy_9999") as url:
        code, lines = run(["db", "upgrade"], process_env(settings, DATABASE_URL=url))
    assert_short(lines, "ozzy db upgrade: the database is at revision ozzy_9999 which this code does not know", code=1,
                 got=code)
    assert "check out the code that made it" in lines[0] and "ozzy db downgrade" in lines[0]


# --- settings and --debug -----------------------------------------------------------------------


@pytest.mark.parametrize(("variable", "value", "says"), [
    ("OZZY_POLL_INTERVAL", "0", "OZZY_POLL_INTERVAL: must be greater than 0"),
    ("OZZY_WORKER_THREADS", "many", "OZZY_WORKER_THREADS: must be a valid integer"),
    ("OZZY_HANDLER_MODULES", "workers.handlers", "OZZY_HANDLER_MODULES: must be a JSON list"),
])
@pytest.mark.parametrize("command", ["relay", "worker", "web"])
def test_a_bad_setting_is_one_line_naming_the_variable_and_exit_2(settings, command, variable, value, says) -> None:
    code, lines = run([command], process_env(settings, **{variable: value}))
    assert_short(lines, f"ozzy {command}: {says}", code=2, got=code, at_most=1)


@pytest.mark.parametrize("how", ["--debug", "OZZY_LOG_LEVEL=DEBUG"])
def test_debug_shows_the_traceback(settings, how) -> None:
    env = process_env(settings, OZZY_POLL_INTERVAL="0")
    args = ["relay"]
    if how == "--debug":
        args.insert(0, "--debug")
    else:
        env["OZZY_LOG_LEVEL"] = "DEBUG"
    code, lines = run(args, env)
    assert code != 0 and any("Traceback" in line for line in lines), "\n".join(lines)


# --- Redis unreachable at start -----------------------------------------------------------------


def wait_for(predicate, timeout: float = 30) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.mark.parametrize(("command", "started"), [(["relay"], "relay started"), (["worker"], "worker started")])
def test_redis_unreachable_is_one_warning_and_the_process_goes_on_when_it_comes(settings, command, started) -> None:
    redis_server = PrivateRedis()  # its port is chosen, nothing listens there yet
    process = OzzyProcess(command, process_env(settings, REDIS_URL=redis_server.url))
    try:
        # Then: one warning line that names Redis (password-free URL) and says it waits ...
        wait_for(lambda: "is unreachable" in process.output())
        time.sleep(3)  # ... and only one, however long it waits, and the process keeps running
        output = process.output()
        warnings = [line for line in output.splitlines() if "unreachable" in line]
        assert warnings == [line for line in output.splitlines() if "WARNING" in line or "CRITICAL" in line], output
        assert len(warnings) == 1 and warnings[0].endswith(
            f"Redis at {redis_server.url} is unreachable; waiting for it"), output
        assert "Traceback" not in output and started not in output and process.proc.poll() is None
        # When Redis comes, the process starts by itself
        redis_server.start()
        wait_for(lambda: started in process.output())
        assert process.terminate() == 0
    finally:
        process.kill()
        redis_server.close()


def test_a_process_waiting_for_redis_stops_on_sigterm_with_0(settings) -> None:
    process = OzzyProcess(["worker"], process_env(settings, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0"))
    try:
        wait_for(lambda: "is unreachable" in process.output())
        assert process.terminate(timeout=10) == 0, process.output()
    finally:
        process.kill()


def test_db_downgrade_then_a_worker_asks_for_the_upgrade(settings, database_server_url) -> None:
    with scratch_database(database_server_url) as url:
        env = process_env(settings, DATABASE_URL=url)
        assert run(["db", "upgrade"], env)[0] == 0
        code, lines = run(["db", "downgrade", "ozzy_0010"], env)
        assert code == 0 and lines[-1] == "database downgraded to ozzy_0010", "\n".join(lines)
        code, lines = run(["worker"], env)
        assert_short(lines, "ozzy worker: the database is behind this code: run `ozzy db upgrade`", code=1, got=code)
        assert run(["db", "upgrade"], env)[0] == 0
