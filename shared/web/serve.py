"""``ozzy web``: load the application factory named in the settings and serve it with waitress.

The port is bound before anything says the server listens: a port in use, or one this user may not
bind, is a :class:`~shared.config.StartupError` that names the fix."""

from __future__ import annotations

import errno
import importlib
import logging
from typing import Any

from waitress.server import create_server

from shared.config import Config, StartupError
from shared.errors import ConfigurationError
from shared.runtime.process import Process
from shared.runtime.root import bootstrap
from shared.web.http import MAX_BODY_BYTES

log = logging.getLogger(__name__)


def load_factory(spec: str) -> Any:
    """``"package.module:function"`` to the function."""
    module_name, _, attr = spec.partition(":")
    if not attr:
        raise ConfigurationError(f"OZZY_WEB_APP must look like 'module:factory', got {spec!r}")
    return getattr(importlib.import_module(module_name), attr)


def make_server(app: Any, *, host: str, port: int, threads: int = 8) -> Any:
    """The waitress server of ``app``, its port bound. A body over the limit is refused with 413
    before it is read (waitress's default lets 1 GiB in, which the app's own check would only see
    after buffering it)."""
    return create_server(app, host=host, port=port, threads=threads, ident="ozzy",
                         max_request_body_size=MAX_BODY_BYTES)


def serve(config: Config, *, host: str, port: int, threads: int = 8) -> int:
    """Serve until SIGTERM or SIGINT; requests in flight finish, then 0 is returned."""
    # Handlers are imported too: the back office retries deliveries, which needs their queues.
    runtime = bootstrap(config)
    app = load_factory(config.web_app)(runtime)
    try:
        server = make_server(app, host=host, port=port, threads=threads)
    except OSError as exc:
        runtime.close()
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(f"port {port} is in use; stop the other server or pass --port") from exc
        if exc.errno == errno.EACCES:
            raise StartupError(f"port {port} needs privileges this user lacks; pass --port above 1023") from exc
        if exc.errno == errno.EADDRNOTAVAIL:
            raise StartupError(f"{host} is not an address of this machine; pass --host") from exc
        raise
    process = Process(runtime, "web", info=lambda: {"url": f"http://{host}:{port}/"})

    def start() -> None:
        log.info("web listening on http://%s:%d/", host, port)

    return process.run(start=start, stop=server.close, serve=server.run)
