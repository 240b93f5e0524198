"""The ``ozzy`` operator commands through click's CliRunner, on the real PostgreSQL and Redis:
users, API tokens, parked events and dead letters. Each filter is checked with several handlers
and event types present, so one that ignored its argument would fail."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from shared.cli import main
from shared.ops.accounts import User, create_user
from tests.integration.helpers import scalar

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
    write_event,
)

PASSWORD = "correct horse battery"


@pytest.fixture
def cli_env(monkeypatch, clean_db) -> None:
    """The CLI reads its configuration from the environment: point it at the test servers, with
    the handlers of ``tests.handlers`` (test.welcome, test.audit, test.count_deposit)."""
    monkeypatch.setenv("DATABASE_URL", clean_db.database_url)
    monkeypatch.setenv("REDIS_URL", clean_db.redis_url)
    monkeypatch.setenv("OZZY_REDIS_NAMESPACE", clean_db.redis_namespace)
    monkeypatch.setenv("OZZY_HANDLER_MODULES", '["tests.handlers"]')


def ozzy(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(main, list(args))


def add_user(runtime, username: str = "ops") -> None:
    with runtime.session_factory() as session:
        create_user(session, username, PASSWORD)
        session.commit()


def password_matches(runtime, username: str, password: str) -> bool:
    with runtime.session_factory() as session:
        user = session.query(User).filter_by(username=username).one()
        return user.check_password(password)


def create_token_with_cli(username: str, name: str) -> tuple[int, str]:
    result = ozzy("tokens", "create", username, "--name", name)
    assert result.exit_code == 0, result.output
    match = re.fullmatch(rf"token (\d+) for {re.escape(username)}: (ozzy_\S+)\n", result.stdout)
    assert match, result.stdout
    return int(match.group(1)), match.group(2)


# --- users --------------------------------------------------------------------------------------


def test_users_create_stores_a_hashed_password_that_logs_in(cli_env, runtime, app) -> None:
    # When an operator is created with the password given on the command line (no prompt)
    result = ozzy("users", "create", "ada", "--password", "a long enough password")
    # Then the command succeeds and the user exists, active, with a hash of that password
    assert result.exit_code == 0, result.output
    assert "user ada created" in result.output
    assert scalar(runtime, "SELECT active FROM ozzy_users WHERE username = 'ada'") is True
    assert scalar(runtime, "SELECT password_hash FROM ozzy_users WHERE username = 'ada'") != "a long enough password"
    assert password_matches(runtime, "ada", "a long enough password")
    # And the new operator can log in to the back office
    client = https_client(app)
    login = client.post("/admin/login", data={"csrf_token": csrf_token(client), "username": "ada",
                                              "password": "a long enough password"})
    assert login.status_code == 302 and client.get("/admin/").status_code == 200


def test_users_create_refuses_a_duplicate_and_keeps_the_first(cli_env, runtime) -> None:
    # Given an operator created on the command line
    assert ozzy("users", "create", "ada", "--password", "the first password").exit_code == 0
    # When the same name is created again with another password
    again = ozzy("users", "create", "ada", "--password", "the second password")
    # Then it is an error (non-zero exit, a message), and the first account is untouched
    assert again.exit_code != 0
    assert "already exists" in again.output
    assert scalar(runtime, "SELECT count(*) FROM ozzy_users WHERE username = 'ada'") == 1
    assert password_matches(runtime, "ada", "the first password")
    assert not password_matches(runtime, "ada", "the second password")


def test_users_create_refuses_a_short_password(cli_env, runtime) -> None:
    # When an operator is created with a password under 8 characters
    result = ozzy("users", "create", "bob", "--password", "short")
    # Then it is an error and no user is stored
    assert result.exit_code != 0 and "at least 8 characters" in result.output
    assert scalar(runtime, "SELECT count(*) FROM ozzy_users") == 0


# --- API tokens ---------------------------------------------------------------------------------


def test_tokens_create_prints_a_secret_the_api_accepts_and_stores_only_its_digest(cli_env, runtime, app) -> None:
    # Given an operator
    add_user(runtime)
    # When a token is created for them on the command line
    token_id, secret = create_token_with_cli("ops", "deploy-bot")
    # Then the row carries the name, the user and a digest, never the secret itself
    with runtime.engine.connect() as conn:
        row = conn.exec_driver_sql("SELECT t.name, u.username, t.token_hash, t.revoked_at FROM ozzy_api_tokens t"
                                   " JOIN ozzy_users u ON u.id = t.user_id WHERE t.id = %s", (token_id,)).one()
    assert (row.name, row.username, row.revoked_at) == ("deploy-bot", "ops", None)
    assert secret not in row.token_hash
    # And the API accepts the printed secret
    assert https_client(app).get("/api/status", headers=bearer(secret)).status_code == 200


def test_tokens_create_needs_a_known_user_and_a_name(cli_env, runtime) -> None:
    # Given one operator
    add_user(runtime)
    # When a token is asked for an unknown user, or without --name
    unknown = ozzy("tokens", "create", "nobody", "--name", "x")
    nameless = ozzy("tokens", "create", "ops")
    # Then both fail and no token is stored
    assert unknown.exit_code != 0 and "no user 'nobody'" in unknown.output
    assert nameless.exit_code != 0 and "--name" in nameless.output
    assert scalar(runtime, "SELECT count(*) FROM ozzy_api_tokens") == 0


def test_tokens_list_shows_every_token_but_never_its_secret(cli_env, runtime) -> None:
    # Given two operators with a token each, one of them revoked
    add_user(runtime, "ops")
    add_user(runtime, "ci")
    first_id, first_secret = create_token_with_cli("ops", "deploy-bot")
    second_id, second_secret = create_token_with_cli("ci", "nightly")
    assert ozzy("tokens", "revoke", str(second_id)).exit_code == 0
    # When the tokens are listed
    result = ozzy("tokens", "list")
    # Then there is one line per token with its id, user, name and prefix, and its revocation
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    first, second = (line.split("\t") for line in lines)
    assert first[:4] == [str(first_id), "ops", "deploy-bot", first_secret[:12] + "…"]
    assert second[:4] == [str(second_id), "ci", "nightly", second_secret[:12] + "…"]
    assert first[-1] == "revoked=-" and second[-1] != "revoked=-"
    # And neither secret appears, not even beyond its prefix
    for secret in (first_secret, second_secret):
        assert secret not in result.output and secret[:20] not in result.output


def test_tokens_revoke_makes_the_api_refuse_that_token_only(cli_env, runtime, app) -> None:
    # Given an operator with two tokens the API accepts
    add_user(runtime)
    revoked_id, revoked_secret = create_token_with_cli("ops", "old")
    _, kept_secret = create_token_with_cli("ops", "new")
    client = https_client(app)
    assert client.get("/api/status", headers=bearer(revoked_secret)).status_code == 200
    # When one of them is revoked
    result = ozzy("tokens", "revoke", str(revoked_id))
    # Then the command says so and the API refuses that token, and only that one
    assert result.exit_code == 0 and f"token {revoked_id} revoked" in result.output
    refused = client.get("/api/status", headers=bearer(revoked_secret))
    assert refused.status_code == 401 and refused.get_json()["error"]["code"] == "unauthorized"
    assert client.put("/api/flags/x", json={"enabled": True}, headers=bearer(revoked_secret)).status_code == 401
    assert client.get("/api/status", headers=bearer(kept_secret)).status_code == 200
    # And revoking it again, or an unknown token, is an error
    again = ozzy("tokens", "revoke", str(revoked_id))
    assert again.exit_code != 0 and f"no live token {revoked_id}" in again.output
    assert ozzy("tokens", "revoke", "999999").exit_code != 0


# --- parked events ------------------------------------------------------------------------------

PARKED_TYPES = ("legacy.one", "legacy.two", "legacy.three")


def parked_by_type(runtime) -> dict[str, list[tuple[bool, str | None]]]:
    """Per event type: (still parked?, park reason) of each row."""
    with runtime.engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT event_type, parked_at IS NOT NULL, park_reason FROM ozzy_outbox ORDER BY id").all()
    result: dict[str, list[tuple[bool, str | None]]] = {}
    for event_type, parked, reason in rows:
        result.setdefault(event_type, []).append((parked, reason))
    return result


@pytest.mark.parametrize(
    ("options", "chosen"),
    [([], PARKED_TYPES), (["--event-type", "legacy.two"], ("legacy.two",)),
     (["--event-type", "legacy.one", "--event-type", "legacy.three"], ("legacy.one", "legacy.three")),
     (["--event-type", "legacy.unknown"], ())],
    ids=["all", "one-type", "two-types", "no-such-type"],
)
def test_outbox_unpark_clears_parked_at_only_for_the_chosen_types(cli_env, runtime, options, chosen) -> None:
    # Given two parked events of each of three types, and one event that was never parked
    for event_type in PARKED_TYPES:
        write_event(runtime, event_type, parked=True)
        write_event(runtime, event_type, parked=True)
    write_event(runtime, "test.account_opened")
    # When the operator unparks (all, or some types)
    result = ozzy("outbox", "unpark", *options)
    # Then the command counts the rows it handed back
    assert result.exit_code == 0, result.output
    assert f"{2 * len(chosen)} parked events handed back to the relay" in result.output
    # And exactly the rows of the chosen types are unparked (time and reason cleared), the others still wait
    expected = {t: [(False, None)] * 2 if t in chosen else [(True, "unknown event type")] * 2 for t in PARKED_TYPES}
    assert parked_by_type(runtime) == {**expected, "test.account_opened": [(False, None)]}


# --- dead letters -------------------------------------------------------------------------------


def listed(result) -> list[int]:  # type: ignore[no-untyped-def]
    """Delivery ids of the rows ``deadletters list`` printed, in order."""
    return [int(line.split("\t")[0]) for line in result.stdout.splitlines() if re.match(r"\d+\t", line)]


def dead_by_recency(seeded) -> list[int]:  # type: ignore[no-untyped-def]
    """Dead ids, most recent failure first (seed_mixed fails each row a minute before the previous)."""
    return [i for i in sorted(seeded) if seeded[i]["status"] == "dead"]


@pytest.mark.parametrize(
    ("options", "wanted"),
    [([], {}), (["--handler", "test.audit"], {"handler": "test.audit"}),
     (["--handler", "test.welcome"], {"handler": "test.welcome"}),
     (["--event-type", "test.deposited"], {"event_type": "test.deposited"}),
     (["--handler", "test.welcome", "--event-type", "test.account_opened"],
      {"handler": "test.welcome", "event_type": "test.account_opened"}),
     (["--handler", "test.welcome", "--event-type", "test.deposited"],
      {"handler": "test.welcome", "event_type": "test.deposited"})],
    ids=["all", "handler-audit", "handler-welcome", "event-type", "handler-and-type", "contradictory"],
)
def test_deadletters_list_filters_by_handler_and_event_type(cli_env, runtime, options, wanted) -> None:
    # Given dead and live deliveries of several handlers and event types
    seeded = seed_mixed(runtime)
    # When the dead letters are listed with a filter
    result = ozzy("deadletters", "list", *options)
    # Then exactly the matching dead deliveries are printed, most recent failure first, and counted
    assert result.exit_code == 0, result.output
    expected = [i for i in dead_by_recency(seeded) if i in matching(seeded, status="dead", **wanted)]
    assert listed(result) == expected
    assert f"{len(expected)} dead deliveries" in result.stderr
    for line in result.stdout.splitlines():
        delivery_id, handler, event_type = line.split("\t")[:3]
        row = seeded[int(delivery_id)]
        assert (handler, event_type) == (row["handler"], row["event_type"])
        assert f"\t{row['dead_reason']}\t" in line and "attempts=3" in line


@pytest.mark.parametrize("limit", [1, 2, 5])
def test_deadletters_list_limit_keeps_the_most_recent_failures(cli_env, runtime, limit) -> None:
    # Given six dead deliveries that failed at different times, of several handlers
    seeded = seed_mixed(runtime)
    assert len(dead_by_recency(seeded)) == 6
    # When at most LIMIT are listed
    result = ozzy("deadletters", "list", "--limit", str(limit))
    # Then the LIMIT most recently failed ones are printed, in that order
    assert result.exit_code == 0, result.output
    assert listed(result) == dead_by_recency(seeded)[:limit]
    assert f"{limit} dead deliveries" in result.stderr


def test_deadletters_list_traceback_prints_each_last_error_in_full(cli_env, runtime) -> None:
    # Given dead deliveries of several handlers, each with a three-line traceback
    seeded = seed_mixed(runtime)
    audit = matching(seeded, handler="test.audit", status="dead")
    # When the dead letters of one handler are listed without, then with --traceback
    short = ozzy("deadletters", "list", "--handler", "test.audit")
    full = ozzy("deadletters", "list", "--handler", "test.audit", "--traceback")
    # Then without it each row shows only the error's last line
    assert short.exit_code == 0 and full.exit_code == 0
    assert "Traceback (most recent call last)" not in short.stdout
    assert short.stdout.count("RuntimeError: test.audit refused test.deposit_audited") == len(audit)
    # And with it every traceback is printed whole, and only the filtered handler's
    assert full.stdout.count("Traceback (most recent call last):") == len(audit)
    assert full.stdout.count('File "tests/handlers.py", line 7, in test.audit') == len(audit)
    assert "test.welcome" not in full.stdout and "test.count_deposit" not in full.stdout


def event_id_of(runtime) -> dict[int, str]:  # type: ignore[no-untyped-def]
    """Delivery id → the id of its event."""
    with runtime.engine.connect() as conn:
        return dict(conn.exec_driver_sql("SELECT id, event_id::text FROM ozzy_deliveries").all())


def queued_event_ids(runtime, handlers: set[str]) -> dict[str, set[str]]:  # type: ignore[no-untyped-def]
    """Per handler (its queue is its name), the event ids of the Dramatiq messages waiting in Redis."""
    namespace = runtime.config.redis_namespace
    found = {}
    for handler in handlers:
        bodies = [json.loads(b) for b in runtime.redis.hvals(f"{namespace}:{handler}.msgs")]
        found[handler] = {str(body["args"][0]["event_id"]) for body in bodies}
    return found


def ids_of(seeded, **wanted: str) -> list[str]:  # type: ignore[no-untyped-def]
    return [str(i) for i in sorted(matching(seeded, **wanted))]


@pytest.mark.parametrize(
    ("choose", "wanted"),
    [(lambda s: ["--id", ids_of(s, handler="test.audit", status="dead")[0]], "first-audit"),
     (lambda s: [a for i in ids_of(s, handler="test.welcome", status="dead") for a in ("--id", i)], "welcome"),
     (lambda s: ["--event-type", "test.deposit_audited"], "audit"),
     (lambda s: ["--handler", "test.count_deposit"], "count_deposit"),
     (lambda s: ["--all"], "known"),
     (lambda s: ["--id", ids_of(s, handler="loans.credit_check")[0]], "none"),
     (lambda s: ["--id", ids_of(s, handler="test.audit", status="pending")[0]], "none")],
    ids=["one-id", "several-ids", "event-type", "handler", "all", "unknown-handler", "not-dead"],
)
def test_deadletters_retry_enqueues_only_the_chosen_dead_deliveries(cli_env, runtime, choose, wanted) -> None:
    # Given dead and live deliveries of four handlers, one of which this CLI process does not load
    seeded = seed_mixed(runtime)
    expected = {
        "first-audit": {int(ids_of(seeded, handler="test.audit", status="dead")[0])},
        "welcome": matching(seeded, handler="test.welcome", status="dead"),
        "audit": matching(seeded, event_type="test.deposit_audited", status="dead"),
        "count_deposit": matching(seeded, handler="test.count_deposit", status="dead"),
        "known": {i for i in matching(seeded, status="dead") if seeded[i]["handler"].startswith("test.")},
        "none": set(),
    }[wanted]
    # When the operator retries some of them
    result = ozzy("deadletters", "retry", *choose(seeded))
    # Then the command counts them, they are pending again and every other delivery is as it was
    assert result.exit_code == 0, result.output
    assert f"{len(expected)} dead deliveries enqueued again" in result.output
    after = statuses(runtime)
    assert {i for i, status in after.items() if status != seeded[i]["status"]} == expected
    assert all(after[i] == "pending" for i in expected)
    # And one message per retried delivery waits in its handler's queue in Redis, and no other
    handlers, event_ids = {row["handler"] for row in seeded.values()}, event_id_of(runtime)
    assert queued_event_ids(runtime, handlers) == {
        h: {event_ids[i] for i in expected if seeded[i]["handler"] == h} for h in handlers}
    # (the dead delivery of the handler this process does not load stays dead, whatever the option)
    assert {after[i] for i in matching(seeded, handler="loans.credit_check")} == {"dead"}


def test_deadletters_retry_without_a_selection_is_refused_and_changes_nothing(cli_env, runtime) -> None:
    # Given dead deliveries of several handlers
    seeded = seed_mixed(runtime)
    # When retry is run without saying which
    result = ozzy("deadletters", "retry")
    # Then it is a usage error and nothing is enqueued again
    assert result.exit_code == 2 and "--handler, --event-type, --id or --all" in result.output
    assert statuses(runtime) == {i: row["status"] for i, row in seeded.items()}
