"""Rolling deploys: an event version newer than a worker knows is parked, not dead, and runs once a
worker that knows that version is up."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from shared import Event, UnitOfWork, handles
from shared.db.tables import PARKED
from shared.delivery import versions
from shared.delivery.relay import Relay
from shared.model.events import forget_event_type
from shared.model.stored import to_stored
from shared.outbox.write import write_events
from tests.integration.helpers import make_runtime, running_worker, scalar, wait_until

TYPE = "test.versioned_greeting"
seen: list[tuple[int, dict[str, Any]]] = []


@pytest.fixture(autouse=True)
def forget():
    forget_event_type(TYPE)
    seen.clear()
    yield
    forget_event_type(TYPE)


def old_code():  # type: ignore[no-untyped-def]
    """What the old worker runs: version 1 of the event, and its handler."""
    forget_event_type(TYPE)

    class Greeting(Event, name=TYPE, version=1):
        name: str

    @handles(Greeting, name="test.greet")
    def greet(event: Greeting, uow: UnitOfWork) -> None:
        seen.append((1, event.model_dump()))

    return Greeting, greet


def new_code():  # type: ignore[no-untyped-def]
    """What the new code runs: version 2 adds a field (version 1 payloads are upcast)."""
    forget_event_type(TYPE)

    class Greeting(Event, name=TYPE, version=2):
        name: str
        language: str

        @classmethod
        def upcast(cls, payload: dict[str, Any], version: int) -> dict[str, Any]:
            return {**payload, "language": "en"}

    @handles(Greeting, name="test.greet")
    def greet(event: Greeting, uow: UnitOfWork) -> None:
        seen.append((2, event.model_dump()))

    return Greeting, greet


def test_a_newer_version_is_parked_by_an_old_worker_and_run_by_a_new_one(clean_db) -> None:
    # Given new code wrote a version 2 event, and a version 1 one, while only an old worker runs
    stored_v2 = to_stored(new_code()[0](name="Ada", language="fr"))
    old_greeting, old_greet = old_code()
    stored_v1 = to_stored(old_greeting(name="Bob"))
    old = make_runtime(clean_db, handlers=[old_greet], worker_idle_ms=100)
    try:
        with old.session_factory() as session, session.begin():
            write_events(session, [stored_v2, stored_v1])
        # When the old worker receives both
        Relay(old).drain()
        with running_worker(old):
            wait_until(lambda: scalar(old, "SELECT count(*) FROM ozzy_deliveries WHERE status IN ('done', 'parked')") == 2)
        # Then the one it knows ran, the newer one is parked (not dead, no try used), with the reason
        assert seen == [(1, {"name": "Bob"})]
        row = _delivery(old, stored_v2.event_id)
        assert row.status == PARKED and row.attempts == 0 and row.dead_reason is None
        assert "version 2" in row.last_error and "(1)" in row.last_error
        # ... and a sweep by the old worker sends nothing on (it still does not know version 2)
        assert versions.send_parked_known(old) == 0
    finally:
        old.close()
    # When a worker with the new code appears
    _, new_greet = new_code()
    new = make_runtime(clean_db, handlers=[new_greet], worker_idle_ms=100)
    try:
        assert versions.send_parked_known(new) == 1
        with running_worker(new):
            wait_until(lambda: _delivery(new, stored_v2.event_id).status == "done")
        # Then the parked event ran there, once, as version 2
        assert seen == [(1, {"name": "Bob"}), (2, {"name": "Ada", "language": "fr"})]
        assert _delivery(new, stored_v2.event_id).attempts == 1
        assert versions.send_parked_known(new) == 0
    finally:
        new.close()


def _delivery(runtime, event_id):  # type: ignore[no-untyped-def]
    from sqlalchemy import text

    with runtime.engine.connect() as conn:
        return conn.execute(text("SELECT * FROM ozzy_deliveries WHERE event_id = :e"), {"e": event_id}).one()


def test_too_new_compares_with_the_version_this_code_knows() -> None:
    Greeting, _ = old_code()
    stored = to_stored(Greeting(name="x"))
    assert not versions.too_new(stored)
    assert versions.too_new(dataclasses.replace(stored, version=2))
    assert not versions.too_new(dataclasses.replace(stored, type="test.nobody_knows", version=9))
