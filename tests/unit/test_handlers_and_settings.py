"""Handler declarations and settings, without I/O."""

from __future__ import annotations

import pytest

from shared import ConfigurationError, Event, HandlerError, handles, load_config
from shared.delivery.handlers import HandlerRegistry, spec_of


class Pinged(Event, name="unit.pinged"):
    n: int


def test_handles_marks_a_spec_and_returns_the_function_unchanged() -> None:
    def on_ping(event: Pinged, uow: object) -> None:
        return None

    decorated = handles(Pinged, name="unit.on_ping", max_retries=2, time_limit=1000)(on_ping)
    spec = spec_of(on_ping)
    assert decorated is on_ping
    assert spec.name == "unit.on_ping"
    assert spec.event_type is Pinged
    assert spec.queue == spec.name
    assert spec.options == {"max_retries": 2, "time_limit": 1000}
    assert [s.name for s in HandlerRegistry([on_ping]).by_event_type["unit.pinged"]] == [spec.name]


def test_name_and_queue_are_overridable_and_validated() -> None:
    audit = handles(Pinged, name="ping.audit", queue="audit")(lambda e, u: None)
    other = handles(Pinged, name="ping.audit")(lambda e, u: None)
    assert HandlerRegistry([audit])["ping.audit"].queue == "audit"
    with pytest.raises(HandlerError, match="two handlers"):
        HandlerRegistry([audit, other])
    with pytest.raises(HandlerError, match="queue"):
        handles(Pinged, name="ping.bad", queue="no spaces")(lambda e, u: None)
    with pytest.raises(HandlerError, match="already a handler"):
        handles(Pinged, name="ping.again")(audit)


def test_declaring_registers_nothing_until_a_registry_collects_the_module() -> None:
    import types

    module = types.ModuleType("unit_declared")
    exec(
        "from shared import Event, handles\n"
        "class Seen(Event, name='unit.seen'):\n    n: int\n"
        "@handles(Seen, name='unit.on_seen')\ndef on_seen(event, uow): pass\n",
        module.__dict__,
    )
    import sys

    sys.modules["unit_declared"] = module
    try:
        assert list(HandlerRegistry()) == []
        assert list(HandlerRegistry.from_modules(["unit_declared"])) == ["unit.on_seen"]
    finally:
        del sys.modules["unit_declared"]


def test_handles_refuses_what_is_not_an_event_class_and_a_handler_without_a_name() -> None:
    with pytest.raises(HandlerError):
        handles(dict, name="x")  # type: ignore[arg-type]
    with pytest.raises(HandlerError, match='needs name=, .* name="unit.<what_it_does>"'):
        handles(Pinged)


def test_settings_read_the_environment_with_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@db:5432/app")
    monkeypatch.setenv("REDIS_URL", "redis://cache:6379/2")
    monkeypatch.setenv("OZZY_BATCH_SIZE", "250")
    s = load_config()
    assert s.sqlalchemy_url == "postgresql+psycopg://u@db:5432/app"
    assert s.redis_url == "redis://cache:6379/2"
    assert (s.batch_size, s.poll_interval, s.max_retries) == (250, 1.0, 5)


def test_invalid_settings_raise_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OZZY_POLL_INTERVAL", "-1")
    with pytest.raises(ConfigurationError, match="poll_interval"):
        load_config()
