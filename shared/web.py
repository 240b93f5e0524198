"""``ozzy web``: load the application factory named in the settings and serve it with waitress."""

from __future__ import annotations

import importlib
import logging
import signal
from typing import Any

from waitress.server import create_server

from shared.errors import ConfigurationError
from shared import control
from shared.process import ProcessLife
from shared.runtime import bootstrap
from shared.config import Settings

log = logging.getLogger(__name__)


def load_factory(spec: str) -> Any:
    """``"package.module:function"`` to the function."""
    module_name, _, attr = spec.partition(":")
    if not attr:
        raise ConfigurationError(f"OZZY_WEB_APP must look like 'module:factory', got {spec!r}")
    return getattr(importlib.import_module(module_name), attr)


class _Stop(Exception):
    pass


def serve(settings: Settings, *, host: str, port: int, threads: int = 8) -> int:
    """Serve until SIGTERM or SIGINT; requests in flight finish, then 0 is returned."""
    # Handlers are imported too: the back office retries deliveries, which needs their queues.
    runtime = bootstrap(settings)
    app = load_factory(settings.web_app)(runtime)
    server = create_server(app, host=host, port=port, threads=threads, ident="ozzy")

    def stop(*_: Any) -> None:
        raise _Stop

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)
    life = ProcessLife(runtime, "web", lambda: {"url": f"http://{host}:{port}/"})
    control.install(control.Controls(life.node))
    life.start()
    log.info("web listening on http://%s:%d/", host, port)
    try:
        server.run()
    except _Stop:
        log.info("web stopping")
    finally:
        server.close()
        life.stop()
        runtime.close()
    return 0
