"""Issue #13 item 4 through click's CliRunner, on the real PostgreSQL and Redis: ``ozzy --version``,
``ozzy users list|disable|enable|set-password``, listings as tables (header row), tab-separated lines
and ``--json``, unknown ``deadletters retry`` filters refused with the known names, and help texts
that fit ``ozzy --help``."""

from __future__ import annotations

import importlib.metadata
import json

import pytest
from click.testing import CliRunner

import shared.cli.output as output
from shared.cli import main
from tests.integration.helpers import scalar
from tests.integration.test_cli import (  # noqa: F401  (fixtures)
    PASSWORD,
    add_user,
    cli_env,
    create_token_with_cli,
    ozzy,
    password_matches,
)

# Fixtures and helpers of the back office tests (pytest finds fixtures imported here).
from tests.integration.test_back_office import (  # noqa: F401
    app,
    bearer,
    csrf_token,
    https_client,
    matching,
    runtime,
    seed_mixed,
    statuses,
)


@pytest.fixture
def terminal(monkeypatch) -> None:
    """As if stdout were a terminal: listings print their table."""
    monkeypatch.setattr(output, "_is_terminal", lambda: True)


def logged_in(app, username: str = "ops", password: str = PASSWORD):  # type: ignore[no-untyped-def]
    client = https_client(app)
    login = client.post("/admin/login", data={"csrf_token": csrf_token(client), "username": username,
                                              "password": password})
    assert login.status_code == 302, login.get_data(as_text=True)[:300]
    assert client.get("/admin/").status_code == 200
    return client


# --- version and help ---------------------------------------------------------------------------


def test_version_is_the_package_version() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"ozzy {importlib.metadata.version('ozzy')}"


def test_every_help_line_fits_without_being_cut() -> None:
    groups = {"": main, **{name: cmd for name, cmd in main.commands.items() if hasattr(cmd, "commands")}}
    for name, group in groups.items():
        result = CliRunner().invoke(main, [*name.split(), "--help"] if name else ["--help"], terminal_width=100)
        assert result.exit_code == 0, result.output
        commands_part = result.output.split("Commands:", 1)[1]
        assert "..." not in commands_part, commands_part
        # one line per command
        assert len(commands_part.strip().splitlines()) == len(group.commands), commands_part  # type: ignore[attr-defined]


# --- users --------------------------------------------------------------------------------------


def test_users_list_prints_a_table_tab_separated_lines_and_json(cli_env, runtime, terminal, monkeypatch) -> None:
    # Given two operators, one disabled, and two tokens of the first (one revoked)
    add_user(runtime, "ops")
    add_user(runtime, "ci")
    create_token_with_cli("ops", "a")
    revoked, _ = create_token_with_cli("ops", "b")
    assert ozzy("tokens", "revoke", str(revoked)).exit_code == 0
    assert ozzy("users", "disable", "ci").exit_code == 0
    # When listed on a terminal: a header row, then one row each
    table = ozzy("users", "list")
    assert table.exit_code == 0, table.output
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["id", "username", "active", "role", "created", "last_login", "live_tokens"]
    assert [row.split()[1:3] for row in rows] == [["ops", "yes"], ["ci", "no"]]
    assert rows[0].split()[-1] == "1" and rows[1].split()[-1] == "0"
    # With --json: the same rows as objects
    as_json = json.loads(ozzy("users", "list", "--json").stdout)
    assert [(u["username"], u["active"], u["live_tokens"]) for u in as_json] == [("ops", True, 1), ("ci", False, 0)]
    # Piped: tab-separated rows on stdout, the header on stderr
    monkeypatch.setattr(output, "_is_terminal", lambda: False)
    piped = ozzy("users", "list")
    assert [line.split("\t")[1:3] for line in piped.stdout.splitlines()] == [["ops", "yes"], ["ci", "no"]]
    assert piped.stderr.startswith("id\tusername\tactive")


def test_disable_ends_sessions_and_tokens_at_once_and_enable_needs_a_new_login(cli_env, runtime, app) -> None:
    # Given an operator logged in to the back office, with a token the API accepts
    add_user(runtime)
    _, secret = create_token_with_cli("ops", "bot")
    client = logged_in(app)
    api = https_client(app)
    assert api.get("/api/status", headers=bearer(secret)).status_code == 200
    # When the operator is disabled on the command line
    result = ozzy("users", "disable", "ops")
    assert result.exit_code == 0 and "user ops disabled" in result.output
    # Then the existing session and the token are refused at once, and a new login fails
    assert client.get("/admin/").status_code in (302, 401)
    assert api.get("/api/status", headers=bearer(secret)).status_code == 401
    client2 = https_client(app)
    client2.post("/admin/login", data={"csrf_token": csrf_token(client2), "username": "ops", "password": PASSWORD})
    assert client2.get("/admin/").status_code in (302, 401)
    # When enabled again: the old session stays ended, the token works again, a new login works
    assert ozzy("users", "enable", "ops").exit_code == 0
    assert client.get("/admin/").status_code in (302, 401)
    assert api.get("/api/status", headers=bearer(secret)).status_code == 200
    logged_in(app)
    assert scalar(runtime, "SELECT active FROM ozzy_users WHERE username = 'ops'") is True


def test_set_password_changes_it_and_ends_sessions(cli_env, runtime, app) -> None:
    add_user(runtime)
    client = logged_in(app)
    result = ozzy("users", "set-password", "ops", "--password", "another long password")
    assert result.exit_code == 0, result.output
    assert password_matches(runtime, "ops", "another long password")
    assert client.get("/admin/").status_code in (302, 401)
    logged_in(app, password="another long password")
    # prompted for (twice) when not given; too short is refused and changes nothing
    prompted = CliRunner().invoke(main, ["users", "set-password", "ops"], input="third password!\nthird password!\n")
    assert prompted.exit_code == 0, prompted.output
    assert password_matches(runtime, "ops", "third password!")
    short = ozzy("users", "set-password", "ops", "--password", "short")
    assert short.exit_code != 0 and "at least 8 characters" in short.output
    assert password_matches(runtime, "ops", "third password!")


@pytest.mark.parametrize("command", [["disable"], ["enable"], ["set-password", "--password", "long enough!"]])
def test_user_commands_on_an_unknown_user_fail(cli_env, runtime, command) -> None:
    result = ozzy("users", command[0], "nobody", *command[1:])
    assert result.exit_code == 1 and "no user 'nobody'" in result.output


def test_users_create_checks_the_name_before_asking_for_the_password(cli_env, runtime) -> None:
    add_user(runtime, "ada")
    # No input at all: were the password prompted for first, the prompt would fail on end of input
    result = CliRunner().invoke(main, ["users", "create", "ada"], input="")
    assert result.exit_code == 1
    assert "already exists" in result.output and "Password" not in result.output
    # A new name is prompted for (twice)
    created = CliRunner().invoke(main, ["users", "create", "bob"], input="bob's password\nbob's password\n")
    assert created.exit_code == 0 and "user bob created" in created.output
    assert password_matches(runtime, "bob", "bob's password")


# --- tokens and dead letters --------------------------------------------------------------------


def test_tokens_list_table_and_json(cli_env, runtime, terminal) -> None:
    add_user(runtime)
    first, secret = create_token_with_cli("ops", "deploy-bot")
    table = ozzy("tokens", "list")
    header, row = table.stdout.splitlines()
    assert header.split() == ["id", "user", "name", "prefix", "role", "created", "expires", "last_used", "revoked"]
    assert row.split()[:4] == [str(first), "ops", "deploy-bot", secret[:12] + "…"]
    [token] = json.loads(ozzy("tokens", "list", "--json").stdout)
    assert (token["id"], token["user"], token["name"], token["revoked"]) == (first, "ops", "deploy-bot", None)
    assert secret not in table.output and secret[:20] not in json.dumps(token)


def test_deadletters_list_table_and_json(cli_env, runtime, terminal) -> None:
    seeded = seed_mixed(runtime)
    dead = matching(seeded, status="dead", handler="test.audit")
    table = ozzy("deadletters", "list", "--handler", "test.audit")
    assert table.exit_code == 0, table.output
    header, *rows = table.stdout.splitlines()
    assert header.split()[:6] == ["id", "handler", "event_type", "event_id", "attempts", "reason"]
    assert sorted(int(r.split()[0]) for r in rows) == sorted(dead)
    listed = json.loads(ozzy("deadletters", "list", "--handler", "test.audit", "--json").stdout)
    assert sorted(r["id"] for r in listed) == sorted(dead)
    assert all(r["last_error"].startswith("Traceback") and r["attempts"] == 3 for r in listed)


@pytest.mark.parametrize(
    ("option", "value", "first"),
    [("--handler", "test.audti", "test.audit"), ("--handler", "nope", None),
     ("--event-type", "test.deposted", "test.deposited")],
)
def test_deadletters_retry_refuses_what_this_process_does_not_know(cli_env, runtime, option, value, first) -> None:
    seeded = seed_mixed(runtime)
    result = ozzy("deadletters", "retry", option, value)
    # a usage error (2) that names the known ones, the close matches first; nothing is retried
    assert result.exit_code == 2, result.output
    assert f"'{value}'" in result.output and "Known:" in result.output
    known = result.output.split("Known:", 1)[1]
    names = ("test.welcome", "test.audit", "test.count_deposit") if option == "--handler" else (
        "test.account_opened", "test.deposit_audited", "test.deposited")
    assert all(name in known for name in names)
    if first:
        assert f"Did you mean {first}" in result.output and known.split(",")[0].strip() == first
    assert statuses(runtime) == {i: row["status"] for i, row in seeded.items()}


def test_deadletters_list_traceback_on_a_terminal_prints_each_under_its_row(cli_env, runtime, terminal) -> None:
    seeded = seed_mixed(runtime)
    dead = matching(seeded, status="dead", handler="test.audit")
    result = ozzy("deadletters", "list", "--handler", "test.audit", "--traceback")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split()[:2] == ["id", "handler"] and sum(line.startswith("id ") for line in lines) == 1
    assert result.stdout.count("Traceback (most recent call last):") == len(dead)
    rows = [line for line in lines if line.split()[0].isdigit()]
    assert sorted(int(r.split()[0]) for r in rows) == sorted(dead)
