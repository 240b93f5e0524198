"""The public API is small, and declaring events with it loads nothing of the process side."""

from __future__ import annotations

import json
import subprocess
import sys

import shared

HEAVY = ("dramatiq", "redis", "alembic", "flask", "waitress", "apscheduler", "psycopg")


def test_declaring_events_aggregates_and_handlers_imports_no_broker_driver_or_web_framework() -> None:
    # Given a fresh interpreter, When a contracts module declares an event, an aggregate and a handler
    program = (
        "import json, sys\n"
        "from shared import Aggregate, Event, UnitOfWork, handles, on_every_node\n"
        "class Pinged(Event, name='api.pinged'):\n    n: int\n"
        "@handles(Pinged, name='api.on_ping')\ndef on_ping(event: Pinged, uow: UnitOfWork) -> None: ...\n"
        "@on_every_node(Pinged)\ndef everywhere(event: Pinged) -> None: ...\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    loaded = json.loads(subprocess.run([sys.executable, "-c", program], check=True, capture_output=True, text=True).stdout)
    # Then none of the process side was imported
    assert [m for m in loaded if m.split(".")[0] in HEAVY] == []
    assert "sqlalchemy" in loaded and "pydantic" in loaded  # (the model does need these)


def test_the_process_side_loads_when_first_used() -> None:
    program = "import sys, shared\nshared.bootstrap\nprint('dramatiq' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", program], check=True, capture_output=True, text=True).stdout.strip() == "True"


def test_the_public_api_exports_what_users_write_code_against_and_nothing_internal() -> None:
    assert set(shared.__all__) == {
        "Aggregate", "Base", "Event", "causal_context", "UnitOfWork", "handles", "on_every_node", "flags", "settings",
        "Config", "Runtime", "bootstrap", "load_config", "OzzyError", "ConfigurationError", "ConcurrencyError",
        "DuplicateEventType", "EventDecodeError", "HandlerError", "PermanentError", "UnknownEventType",
        "Saga", "SagaContext", "step", "SagaInstanceMissing", "recurring",
    }
    for name in shared.__all__:
        assert getattr(shared, name) is not None
