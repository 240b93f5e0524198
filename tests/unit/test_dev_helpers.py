"""`ozzy dev`'s helpers that need no server: a Redis port stable across restarts, and .ozzy/env."""

from __future__ import annotations

import socket
from contextlib import ExitStack
from pathlib import Path

from shared.cli.dev import stable_port, write_env_file


def test_the_redis_port_is_the_same_as_last_time_unless_it_is_taken(tmp_path: Path) -> None:
    remembered = tmp_path / "port"
    first = stable_port(remembered)
    assert remembered.read_text().strip() == str(first)
    assert stable_port(remembered) == first
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", first))
        busy.listen()
        other = stable_port(remembered)
    assert other != first and remembered.read_text().strip() == str(other)


def test_the_env_file_names_the_servers_while_dev_runs(tmp_path: Path) -> None:
    env = {"DATABASE_URL": "postgresql+psycopg://postgres@/ozzy?host=/x", "REDIS_URL": "redis://127.0.0.1:1234/0",
           "HOME": "/root"}
    with ExitStack() as stack:
        path = write_env_file(tmp_path, env, stack)
        assert path.read_text() == f"DATABASE_URL={env['DATABASE_URL']}\nREDIS_URL={env['REDIS_URL']}\n"
    assert not path.exists()


def test_commands_take_the_server_urls_from_the_nearest_ozzy_env_but_set_variables_win(tmp_path: Path) -> None:
    from shared.cli.dev import apply_env_file

    (tmp_path / ".ozzy").mkdir()
    (tmp_path / ".ozzy" / "env").write_text("DATABASE_URL=postgresql://dev/db\nREDIS_URL=redis://dev:1/0\nOTHER=x\n")
    below = tmp_path / "src" / "pkg"
    below.mkdir(parents=True)
    environ: dict[str, str] = {"REDIS_URL": "redis://mine:2/0"}
    taken = apply_env_file(environ, below)
    assert taken == {"DATABASE_URL": "postgresql://dev/db"}
    assert environ == {"REDIS_URL": "redis://mine:2/0", "DATABASE_URL": "postgresql://dev/db"}
    empty: dict[str, str] = {}
    assert apply_env_file(empty, tmp_path.parent / "elsewhere") == {} and empty == {}


def test_reset_deletes_the_embedded_data_keeps_the_redis_port_and_never_touches_external_servers(
        tmp_path: Path) -> None:
    import pytest

    from shared.cli.dev import reset_data
    from shared.config import StartupError

    state = tmp_path / ".ozzy"
    (state / "pg" / "base").mkdir(parents=True)
    (state / "redis").mkdir()
    (state / "redis" / "appendonly.aof").write_text("data")
    (state / "redis" / "port").write_text("41234\n")
    (state / "dev-admin.txt").write_text("admin pw\n")
    with pytest.raises(StartupError, match="DATABASE_URL"):
        reset_data(state, {"DATABASE_URL": "postgresql://prod/db"})
    assert (state / "pg" / "base").exists()
    said = reset_data(state, {})
    assert said.startswith("--reset: deleted the development data")
    assert not (state / "pg").exists() and not (state / "dev-admin.txt").exists()
    assert sorted(p.name for p in (state / "redis").iterdir()) == ["port"]
    assert (state / "redis" / "port").read_text() == "41234\n"


def test_a_project_without_procfile_runs_web_relay_and_worker(tmp_path: Path) -> None:
    from shared.cli.supervisor import procfile_processes

    assert procfile_processes(tmp_path) == [("web", "ozzy web"), ("relay", "ozzy relay"), ("worker", "ozzy worker")]
    (tmp_path / "Procfile").write_text("api: ozzy web --threads 2\nworker: ozzy worker\n")
    assert procfile_processes(tmp_path) == [("api", "ozzy web --threads 2"), ("worker", "ozzy worker")]
