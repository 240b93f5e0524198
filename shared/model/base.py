"""The declarative base of application tables (aggregates and read models)."""

from __future__ import annotations

from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    """Declarative base for application tables (aggregates and read models)."""
