"""Handler declarations and settings, without I/O."""

from __future__ import annotations

import pytest

from shared import ConfigurationError, Event, HandlerError, handles, load_settings
from shared.handlers import handlers_by_event_type, registered_handlers, unregister


class Pinged(Event, name="unit.pinged"):
    n: int


def test_handles_registers_a_spec_and_returns_the_function_unchanged() -> None:
    def on_ping(event: Pinged, uow: object) -> None:
        return None

    NAME = f"{__name__}.test_handles_registers_a_spec_and_returns_the_function_unchanged._locals_.on_ping"
    try:
        decorated = handles(Pinged, max_retries=2, time_limit=1000)(on_ping)
        spec = registered_handlers()[NAME]
        assert decorated is on_ping
        assert spec.event_type is Pinged
        assert spec.queue == spec.name
        assert spec.options == {"max_retries": 2, "time_limit": 1000}
        assert [s.name for s in handlers_by_event_type([spec])["unit.pinged"]] == [spec.name]
    finally:
        unregister(NAME)


def test_name_and_queue_are_overridable_and_validated() -> None:
    try:
        handles(Pinged, name="ping.audit", queue="audit")(lambda e, u: None)
        assert registered_handlers()["ping.audit"].queue == "audit"
        with pytest.raises(HandlerError, match="two handlers"):
            handles(Pinged, name="ping.audit")(lambda e, u: None)
        with pytest.raises(HandlerError, match="queue"):
            handles(Pinged, name="ping.bad", queue="no spaces")(lambda e, u: None)
    finally:
        unregister("ping.audit")


def test_handles_refuses_what_is_not_an_event_class() -> None:
    with pytest.raises(HandlerError):
        handles(dict)  # type: ignore[arg-type]


def test_settings_read_the_environment_with_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@db:5432/app")
    monkeypatch.setenv("REDIS_URL", "redis://cache:6379/2")
    monkeypatch.setenv("OZZY_BATCH_SIZE", "250")
    s = load_settings()
    assert s.sqlalchemy_url == "postgresql+psycopg://u@db:5432/app"
    assert s.redis_url == "redis://cache:6379/2"
    assert (s.batch_size, s.poll_interval, s.max_retries) == (250, 1.0, 5)


def test_invalid_settings_raise_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OZZY_POLL_INTERVAL", "-1")
    with pytest.raises(ConfigurationError, match="poll_interval"):
        load_settings()
