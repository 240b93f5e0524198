"""HTTP plumbing shared by the web services: JSON bodies in, JSON errors out, one per request UoW.

The hardened edges live here too, so every app that calls :func:`install` has them: no input reaches a
500 (deep nesting, non-ASCII digits, ids beyond a bigint, invalid UTF-8 answer 400), security headers on
every response, an access log line per request with its user and client address and no control
characters, and :func:`csv_safe` for cells a spreadsheet would run as formulas."""

from __future__ import annotations

import json
import logging
import re
import uuid
from decimal import Decimal
from typing import Any

from flask import Flask, Response, current_app, g, jsonify, request
from flask.json.provider import DefaultJSONProvider
from pydantic import BaseModel, ValidationError
from sqlalchemy.exc import DataError, DBAPIError, OperationalError
from werkzeug.exceptions import HTTPException
from werkzeug.routing import IntegerConverter

from shared.model.events import causal_context
from shared.outbox.unit_of_work import SqlUnitOfWork
from shared.web import observe
from shared.runtime.root import Runtime

log = logging.getLogger(__name__)
access_log = logging.getLogger("ozzy.access")

#: Paths of static files (the app's and the back office's), left out of the access log.
STATIC_PATHS = ("/static/", "/admin/static/")

#: Largest request body accepted, in bytes; larger ones get 413 (from waitress before reading them,
#: see :mod:`shared.web.serve`, and from Flask for any other server).
MAX_BODY_BYTES = 64 * 1024

#: Largest id a URL or a query may name: PostgreSQL's bigint.
MAX_ID = 2**63 - 1

#: Sent with every response. Scripts and styles stay 'unsafe-inline' because Flask-Admin's list
#: actions use inline handlers; everything comes from this origin, and no one may frame a page.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline';"
                               " img-src 'self' data:; font-src 'self' data:; object-src 'none'; base-uri 'self';"
                               " form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}
#: Outside dev mode only: a developer's http://localhost must not be pinned to HTTPS.
HSTS = "max-age=31536000; includeSubDomains"


class BadRequest(Exception):
    """A client error with a JSON body; ``fields`` names what is wrong with which field."""

    def __init__(self, message: str, *, status: int = 400, code: str = "bad_request", fields: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.fields = status, code, fields


def parse_id(raw: str | None) -> int | None:
    """A non-negative integer written in ASCII digits that fits a bigint, or None.

    ``str.isdigit`` accepts ``²`` and ``٣`` which ``int`` then refuses, and a thousand digits would
    reach the database as an out-of-range parameter: both were 500s."""
    if raw is None or not (0 < len(raw) <= 19) or not raw.isascii() or not raw.isdigit():
        return None
    value = int(raw)
    return value if value <= MAX_ID else None


class IdConverter(IntegerConverter):
    """``<int:…>`` in routes: ASCII digits only, at most a bigint (anything else is a 404)."""

    regex = r"[0-9]{1,19}"

    def __init__(self, map, *args: Any, **kwargs: Any) -> None:  # type: ignore[no-untyped-def]
        kwargs.setdefault("max", MAX_ID)
        super().__init__(map, *args, **kwargs)


class SafeJSONProvider(DefaultJSONProvider):
    """Flask's JSON, where a body nested deeper than the parser can go is malformed JSON (a
    ``ValueError``, so ``request.get_json`` answers 400) rather than a ``RecursionError``."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        try:
            return super().loads(s, **kwargs)
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None


#: Cells that a spreadsheet would read as a formula (OWASP "CSV injection").
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(value: Any) -> Any:
    """``value`` for a CSV export cell: text starting with ``= + - @`` (or a tab or CR) gets a
    leading apostrophe so spreadsheets show it as text instead of running it."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")


def log_safe(text: str, limit: int = 2000) -> str:
    """``text`` with control and non-ASCII characters escaped (``\\n``, ``\\x1b``, ``\\u2028``): a
    request path cannot forge a log line nor rewrite a terminal."""
    text = text[:limit].replace("\\", "\\\\")
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def client_address() -> str:
    """The client's address as the WSGI server saw it (behind a proxy, configure waitress's
    ``trusted_proxy`` so this is the real client's)."""
    return request.remote_addr or "-"


def runtime() -> Runtime:
    rt: Runtime = current_app.extensions["ozzy"]
    return rt


def unit_of_work() -> SqlUnitOfWork:
    """A unit of work for this request; events it writes carry the request's correlation id."""
    return runtime().unit_of_work()


def json_body(model: type[BaseModel]) -> Any:
    """The request's JSON body validated by ``model``, or :class:`BadRequest` naming the fields."""
    if not request.mimetype == "application/json":
        raise BadRequest("the body must be JSON (Content-Type: application/json)", status=415, code="unsupported_media_type")
    try:
        data = json.loads(request.get_data(cache=False), parse_float=Decimal, parse_constant=_reject_constant)
    except RecursionError:
        raise BadRequest("malformed JSON: nested too deeply", code="malformed_json") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"malformed JSON: {exc}", code="malformed_json") from None
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object", code="malformed_json")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise BadRequest("invalid request body", code="validation_failed", fields=_fields(exc)) from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def _fields(exc: ValidationError) -> dict[str, str]:
    fields: dict[str, str] = {}
    for error in exc.errors(include_url=False):
        name = ".".join(str(part) for part in error["loc"]) or "body"
        message = "unknown field" if error["type"] == "extra_forbidden" else error["msg"]
        message = message.removeprefix("Value error, ")
        fields.setdefault(name, message)
    return fields


def error_response(status: int, code: str, message: str, fields: dict[str, str] | None = None) -> tuple[Response, int]:
    body: dict[str, Any] = {"error": {"code": code, "message": message}}
    if fields:
        body["error"]["fields"] = fields
    return jsonify(body), status


def install(app: Flask, rt: Runtime) -> None:
    """Attach the runtime, per-request correlation, the body limit, the security headers, the access
    log and JSON error handlers. Call it before registering routes: ``<int:…>`` becomes
    :class:`IdConverter` for every rule added afterwards."""
    app.extensions["ozzy"] = rt
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.url_map.converters["int"] = IdConverter
    app.json = SafeJSONProvider(app)
    headers = dict(SECURITY_HEADERS) if rt.config.dev else {**SECURITY_HEADERS, "Strict-Transport-Security": HSTS}

    @app.before_request
    def _correlate() -> None:
        header = request.headers.get("X-Correlation-ID", "")
        try:
            g.correlation_id = uuid.UUID(header)
        except ValueError:
            g.correlation_id = uuid.uuid4()
        g.causal = causal_context(correlation_id=g.correlation_id)
        g.causal.__enter__()

    @app.teardown_request
    def _uncorrelate(exc: BaseException | None) -> None:
        causal = g.pop("causal", None)
        if causal is not None:
            causal.__exit__(None, None, None)

    @app.after_request
    def _echo_correlation(response: Response) -> Response:
        if "correlation_id" in g:
            response.headers["X-Correlation-ID"] = str(g.correlation_id)
        for name, value in headers.items():
            response.headers.setdefault(name, value)
        if not request.path.startswith(STATIC_PATHS):  # a page's assets are not worth a line each
            access_log.info("%s %s %d user=%s client=%s", log_safe(request.method), log_safe(request.full_path.rstrip("?")),
                            response.status_code, log_safe(g.get("actor_name") or "-"), log_safe(client_address()))
        return response

    @app.errorhandler(BadRequest)
    def _bad_request(exc: BadRequest):  # type: ignore[no-untyped-def]
        return error_response(exc.status, exc.code, str(exc), exc.fields)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException):  # type: ignore[no-untyped-def]
        code = (exc.name or "error").lower().replace(" ", "_")
        response, status = error_response(exc.code or 500, code, exc.description or exc.name)
        if exc.code == 405 and exc.valid_methods:  # type: ignore[attr-defined]
            response.headers["Allow"] = ", ".join(exc.valid_methods)  # type: ignore[attr-defined]
        return response, status

    @app.errorhandler(OperationalError)
    def _database_down(exc: OperationalError):  # type: ignore[no-untyped-def]
        log.warning("database unavailable: %s", exc.orig)
        return error_response(503, "database_unavailable", "the database is unavailable, try again shortly")

    @app.errorhandler(DataError)
    def _invalid_value(exc: DataError):  # type: ignore[no-untyped-def]
        # A value the database cannot store or compare (out of range, not a number): the client's
        # input reached a query unchecked; it is still the client's error, not the server's.
        log.info("invalid value in a query on %s %s: %s", request.method, request.endpoint, type(exc.orig).__name__)
        return error_response(400, "bad_request", "a value in the request is out of range or malformed")

    @app.errorhandler(RecursionError)
    def _too_deep(exc: RecursionError):  # type: ignore[no-untyped-def]
        return error_response(400, "malformed_json", "the request is nested too deeply")

    @app.errorhandler(UnicodeDecodeError)
    def _not_utf8(exc: UnicodeDecodeError):  # type: ignore[no-untyped-def]
        return error_response(400, "bad_request", "the request is not valid UTF-8")

    @app.errorhandler(DBAPIError)
    def _database_error(exc: DBAPIError):  # type: ignore[no-untyped-def]
        if exc.connection_invalidated:
            return error_response(503, "database_unavailable", "the database is unavailable, try again shortly")
        log.exception("database error")
        return error_response(500, "internal_error", "internal error")

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):  # type: ignore[no-untyped-def]
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal_error", "internal error")

    observe.install(app)  # metrics, log context and span per request (after _correlate: it needs the id)
