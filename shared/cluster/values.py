"""Runtime settings and feature flags: rows operators change, each change a domain event.

Reading is ``shared.settings.get(key)`` and ``shared.flags.is_enabled(name)``; writing goes through a
unit of work (:func:`change_setting`, :func:`set_flag`) so the event log records who changed what,
when, and from which value.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Literal

from sqlalchemy import Boolean, DateTime, Text, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from sqlalchemy.orm import Session

from shared.errors import OzzyError
from shared.model.aggregate import Aggregate
from shared.model.events import Event
from shared.model.unit_of_work import UnitOfWork

SettingType = Literal["string", "integer", "boolean", "json"]
SETTING_TYPES: tuple[str, ...] = ("string", "integer", "boolean", "json")


class InvalidSettingValue(OzzyError):
    """The value does not fit the setting's type."""


class UnknownSetting(OzzyError):
    """No setting has this key."""


class SettingChanged(Event, name="ozzy.setting_changed", version=1):
    key: str
    type: str
    old_value: Any = None
    new_value: Any = None


class FlagChanged(Event, name="ozzy.flag_changed", version=1):
    name: str
    enabled: bool
    previous: bool | None = None


class Setting(Aggregate):
    __tablename__ = "ozzy_settings"
    aggregate_type = "ozzy.setting"

    key: Mapped[str] = mapped_column(Text, primary_key=True)
    type: Mapped[str] = mapped_column(Text)
    value: Mapped[Any] = mapped_column(JSONB)
    description: Mapped[str] = mapped_column(Text, default="")
    updated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_by: Mapped[str | None] = mapped_column(Text, nullable=True)

    def change(self, raw: Any, actor: str | None) -> None:
        value = coerce(self.type, raw)
        if value == self.value and self.updated_at is not None:
            return
        self.record(SettingChanged(key=self.key, type=self.type, old_value=self.value, new_value=value))
        self.value, self.updated_at, self.updated_by = value, datetime.now(timezone.utc), actor


class FeatureFlag(Aggregate):
    __tablename__ = "ozzy_flags"
    aggregate_type = "ozzy.flag"

    name: Mapped[str] = mapped_column(Text, primary_key=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    description: Mapped[str] = mapped_column(Text, default="")
    updated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_by: Mapped[str | None] = mapped_column(Text, nullable=True)

    def set(self, enabled: bool, actor: str | None, previous: bool | None) -> None:
        self.record(FlagChanged(name=self.name, enabled=enabled, previous=previous))
        self.enabled, self.updated_at, self.updated_by = enabled, datetime.now(timezone.utc), actor


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def coerce(kind: str, raw: Any) -> Any:
    """``raw`` (JSON data, or text from a form) as a value of type ``kind``, or InvalidSettingValue."""
    if kind == "string":
        if not isinstance(raw, str):
            raise InvalidSettingValue(f"expected a string, got {type(raw).__name__}")
        return raw
    if kind == "integer":
        return _integer(raw)
    if kind == "boolean":
        return _boolean(raw)
    if kind == "json":
        if isinstance(raw, str):
            try:
                return json.loads(raw)
            except ValueError as exc:
                raise InvalidSettingValue(f"invalid JSON: {exc}") from None
        return raw
    raise InvalidSettingValue(f"unknown setting type {kind!r}; use one of {', '.join(SETTING_TYPES)}")


def _integer(raw: Any) -> int:
    if isinstance(raw, bool):
        raise InvalidSettingValue("expected an integer, got a boolean")
    if isinstance(raw, int):
        return raw
    if isinstance(raw, str) and raw.strip().lstrip("-").isdigit():
        return int(raw.strip())
    raise InvalidSettingValue(f"expected an integer, got {raw!r}")


def _boolean(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().lower() in _TRUE | _FALSE:
        return raw.strip().lower() in _TRUE
    raise InvalidSettingValue(f"expected a boolean, got {raw!r}")


def define_setting(uow: UnitOfWork, key: str, kind: str, value: Any, description: str = "", actor: str | None = None) -> Setting:
    """Create the setting if it does not exist (recording its first value); return it."""
    setting = uow.get(Setting, key, for_update=True)
    if setting is None:
        if kind not in SETTING_TYPES:
            raise InvalidSettingValue(f"unknown setting type {kind!r}")
        setting = Setting(key=key, type=kind, value=None, description=description, updated_at=None)
        uow.add(setting)
        setting.change(value, actor)
    return setting


def change_setting(uow: UnitOfWork, key: str, raw: Any, actor: str | None) -> Setting:
    setting = uow.get(Setting, key, for_update=True)
    if setting is None:
        raise UnknownSetting(f"no setting {key!r}")
    setting.change(raw, actor)
    return setting


def set_flag(uow: UnitOfWork, name: str, enabled: bool, actor: str | None, description: str | None = None) -> FeatureFlag:
    """Turn a flag on or off, creating it if needed; a no-op change records nothing."""
    flag = uow.get(FeatureFlag, name, for_update=True)
    if flag is None:
        flag = FeatureFlag(name=name, enabled=False, description=description or "", updated_at=None)
        uow.add(flag)
        flag.set(enabled, actor, previous=None)
    elif flag.enabled != enabled:
        flag.set(enabled, actor, previous=flag.enabled)
    if description is not None:
        flag.description = description
    return flag


def load_all(session: Session) -> tuple[dict[str, Any], dict[str, bool]]:
    """Every setting's value and every flag's state."""
    settings = {s.key: s.value for s in session.scalars(select(Setting))}
    flags = {f.name: f.enabled for f in session.scalars(select(FeatureFlag))}
    return settings, flags
