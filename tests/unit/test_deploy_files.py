"""The Procfile, docker-compose.yml and the CLI agree (Docker cannot run here, so we parse)."""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml
from click.testing import CliRunner
from honcho.environ import parse_procfile

from shared.cli import main

ROOT = Path(__file__).resolve().parents[2]


def procfile() -> dict[str, list[str]]:
    parsed = parse_procfile((ROOT / "Procfile").read_text())
    return {name: shlex.split(cmd) for name, cmd in parsed.processes.items()}


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_procfile_runs_web_relay_and_worker_through_the_cli() -> None:
    assert procfile() == {"web": ["ozzy", "web"], "relay": ["ozzy", "relay"], "worker": ["ozzy", "worker"]}


def test_every_procfile_command_exists_in_the_cli() -> None:
    runner = CliRunner()
    for argv in [*procfile().values(), ["ozzy", "db", "upgrade"], ["ozzy", "dev"]]:
        result = runner.invoke(main, [*argv[1:], "--help"])
        assert result.exit_code == 0, (argv, result.output)


def test_compose_runs_the_procfile_processes_after_a_one_shot_migration() -> None:
    services = compose()["services"]
    assert {"postgres", "redis", "migrate", "web", "relay", "worker"} <= set(services)
    for name, argv in procfile().items():
        assert services[name]["command"] == argv, name
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["migrate"]["command"] == ["ozzy", "db", "upgrade"]
    assert services["migrate"]["restart"] == "no"


def test_compose_wires_every_app_service_with_the_same_database_and_redis() -> None:
    services = compose()["services"]
    envs = {name: services[name]["environment"] for name in ("migrate", "web", "relay", "worker")}
    urls = {(env["DATABASE_URL"], env["REDIS_URL"]) for env in envs.values()}
    assert len(urls) == 1
    database_url, redis_url = urls.pop()
    pg = services["postgres"]["environment"]
    assert database_url == f"postgresql://{pg['POSTGRES_USER']}:{pg['POSTGRES_PASSWORD']}@postgres:5432/{pg['POSTGRES_DB']}"
    assert redis_url.startswith("redis://redis:6379/")
    assert envs["web"]["PORT"] == "8000" and "8000:8000" in services["web"]["ports"]
    # the web process refuses to start without a SECRET_KEY outside dev mode: compose demands one
    assert all(env["SECRET_KEY"].startswith("${SECRET_KEY:?") for env in envs.values())
