"""``ozzy web``: load the application factory named in the settings and serve it with waitress."""

from __future__ import annotations

import importlib
import logging
from typing import Any

from waitress.server import create_server

from shared.config import Config
from shared.errors import ConfigurationError
from shared.runtime.process import Process
from shared.runtime.root import bootstrap

log = logging.getLogger(__name__)


def load_factory(spec: str) -> Any:
    """``"package.module:function"`` to the function."""
    module_name, _, attr = spec.partition(":")
    if not attr:
        raise ConfigurationError(f"OZZY_WEB_APP must look like 'module:factory', got {spec!r}")
    return getattr(importlib.import_module(module_name), attr)


def serve(config: Config, *, host: str, port: int, threads: int = 8) -> int:
    """Serve until SIGTERM or SIGINT; requests in flight finish, then 0 is returned."""
    # Handlers are imported too: the back office retries deliveries, which needs their queues.
    runtime = bootstrap(config)
    app = load_factory(config.web_app)(runtime)
    server = create_server(app, host=host, port=port, threads=threads, ident="ozzy")
    process = Process(runtime, "web", info=lambda: {"url": f"http://{host}:{port}/"})

    def start() -> None:
        log.info("web listening on http://%s:%d/", host, port)

    return process.run(start=start, stop=server.close, serve=server.run)
