"""The process's configuration: typed, read from the environment at the edge of each process and
passed down. (Runtime settings that operators change in the back office are :mod:`shared.settings`.)"""

from __future__ import annotations

import re
from typing import Any

from pydantic import AliasChoices, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from shared.errors import ConfigurationError


class StartupError(ConfigurationError):
    """A process cannot start. The message is one or two lines that say what to do; the ``ozzy``
    commands print it without a traceback and exit with ``exit_code``."""

    def __init__(self, message: str, *, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Config(BaseSettings):
    """Every knob of an Ozzy process. ``DATABASE_URL`` and ``REDIS_URL`` keep their conventional
    names; the tunables are read from ``OZZY_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="OZZY_", frozen=True, extra="ignore")

    database_url: str = Field(
        "postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
        validation_alias=AliasChoices("DATABASE_URL", "OZZY_DATABASE_URL", "database_url"),
    )
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        validation_alias=AliasChoices("REDIS_URL", "OZZY_REDIS_URL", "redis_url"),
    )
    #: Prefix of every Redis key and channel this deployment uses, so several can share one Redis.
    redis_namespace: str = "ozzy"
    #: Modules (or packages, walked recursively) that declare ``@handles`` functions.
    handler_modules: tuple[str, ...] = ("workers.handlers",)
    #: Packages holding the application's Alembic revisions, applied after the framework's own.
    migration_packages: tuple[str, ...] = ("services.migrations",)

    #: ``module:factory`` of the web application; ``ozzy web`` serves ``factory(runtime)``.
    web_app: str = "services.app:create_app"
    #: Signs session cookies and CSRF tokens; required unless ``OZZY_DEV`` is set.
    secret_key: str | None = Field(None, validation_alias=AliasChoices("SECRET_KEY", "OZZY_SECRET_KEY", "secret_key"))
    #: Development mode (``ozzy dev`` sets it): a missing SECRET_KEY is generated, cookies are not
    #: marked Secure (plain http on localhost).
    dev: bool = False

    #: Modules or packages (walked) that declare event classes, imported by the relay so that an
    #: event type without handlers is told apart from one this code version does not know.
    event_modules: tuple[str, ...] = ("services",)

    # Relay
    poll_interval: float = Field(1.0, gt=0)
    batch_size: int = Field(500, ge=1, le=10_000)
    #: How often the relay runs its housekeeping (redelivery sweep, broker maintenance).
    sweep_interval: float = Field(5.0, gt=0)
    #: A delivery not completed this long after it was enqueued is enqueued again if Redis seems
    #: to have lost it (restarted empty, failed over). The inbox makes the repeat harmless.
    redelivery_after: float = Field(30.0, gt=0)
    #: The relay publishes a heartbeat on its own fast channel this often and re-subscribes when
    #: three in a row do not come back.
    fast_channel_heartbeat: float = Field(2.0, gt=0)
    #: Every process records itself in ozzy_nodes this often.
    node_heartbeat: float = Field(5.0, gt=0)
    #: This process's stable name, for durable cluster-listener checkpoints (default
    #: ``<host>-<kind>``; give each process of the same kind on one host its own).
    node_name: str | None = None
    #: A cluster-wide listener that raises is tried again on the same event, after a backoff that
    #: doubles from the minimum to the maximum (seconds); after this many tries it stops and is
    #: shown as failed until an operator retries or skips the event. It never skips it by itself.
    listener_max_attempts: int = Field(8, ge=1)
    listener_min_backoff: float = Field(0.5, gt=0)
    listener_max_backoff: float = Field(30.0, gt=0)
    # Write path: the after-commit wake-up may never hold a request longer than this.
    notify_timeout: float = Field(0.05, gt=0)

    # Retention (run by the relay holding the housekeeping lease)
    #: Dispatched events older than this many days are deleted; unset keeps the log forever (it is
    #: the audit trail). Deleting an event deletes its deliveries.
    outbox_retention_days: float | None = Field(None, gt=0)
    #: Completed (done or resolved) deliveries older than this many days are deleted.
    delivery_retention_days: float = Field(7.0, gt=0)
    #: Rows deleted per statement, so pruning never holds long locks or stalls the relay.
    retention_batch: int = Field(1000, ge=1)
    #: A node whose heartbeat is older than this many seconds is marked gone.
    node_gone_after: float = Field(60.0, gt=0)

    # Handlers: project-wide retry defaults, each overridable per handler
    max_retries: int = Field(5, ge=0)
    min_backoff_ms: int = Field(500, ge=1)
    max_backoff_ms: int = Field(300_000, ge=1)
    time_limit_ms: int = Field(300_000, ge=1)

    # Worker
    worker_threads: int = Field(8, ge=1)
    #: Most deliveries a worker thread runs in one transaction, a savepoint each (1: one each).
    worker_batch: int = Field(8, ge=1, le=32)
    # How long an idle consumer blocks waiting for a wake-up before it polls Redis anyway.
    worker_idle_ms: int = Field(1000, ge=10)
    # A worker whose heartbeat is older than this is dead and its in-flight messages come back
    # (a live worker heartbeats every few seconds even while all its threads run long handlers).
    heartbeat_timeout_ms: int = Field(10_000, ge=1000)

    db_pool_size: int = Field(10, ge=1)

    # Observability (docs/operations.md)
    #: Serve /metrics, /healthz and /readyz on this port (``--metrics-port``); unset: no server.
    metrics_port: int | None = Field(None, ge=0, le=65535)
    #: The address the metrics port binds to; loopback unless a scraper elsewhere must reach it.
    metrics_host: str = "127.0.0.1"
    #: The gauges read from PostgreSQL (backlog, deliveries) are refreshed this often, by one
    #: process of the deployment at a time.
    metrics_db_interval: float = Field(5.0, gt=0)

    @property
    def sqlalchemy_url(self) -> str:
        """The database URL with the psycopg 3 driver made explicit."""
        url = self.database_url
        for prefix in ("postgres://", "postgresql://"):
            if url.startswith(prefix):
                return "postgresql+psycopg://" + url[len(prefix) :]
        return url


#: Settings read from a conventional variable rather than ``OZZY_<NAME>``.
_CONVENTIONAL = {"database_url": "DATABASE_URL", "redis_url": "REDIS_URL", "secret_key": "SECRET_KEY"}


def variable_name(field: str) -> str:
    """The environment variable a setting is read from."""
    return _CONVENTIONAL.get(field, f"OZZY_{field.upper()}")


def load_config(**overrides: Any) -> Config:
    """Read settings from the environment, with explicit overrides winning; a bad value raises a
    :class:`StartupError` (exit code 2) with one line per variable, naming it."""
    try:
        return Config(**overrides)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else "settings"
            message = str(error["msg"])
            for prefix in ("Input should be ", "Value should be ", "Value must be "):
                if message.startswith(prefix):
                    message = "must be " + message[len(prefix):]
            lines.append(f"{variable_name(field)}: {message} (Config.{field})")
        raise StartupError("\n".join(lines), exit_code=2) from exc
    except SettingsError as exc:  # a list-valued variable that is not JSON
        match = re.search(r'field "(\w+)"', str(exc))
        name = variable_name(match.group(1)) if match else "a setting"
        field = f" (Config.{match.group(1)})" if match else ""
        raise StartupError(f'{name}: must be a JSON list, e.g. \'["package.module"]\'{field}', exit_code=2) from exc
