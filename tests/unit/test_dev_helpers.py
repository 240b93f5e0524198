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
