"""HTTP plumbing shared by the web services: JSON bodies in, JSON errors out, one per request UoW."""

from __future__ import annotations

import json
import logging
import uuid
from decimal import Decimal
from typing import Any

from flask import Flask, Response, current_app, g, jsonify, request
from pydantic import BaseModel, ValidationError
from sqlalchemy.exc import DBAPIError, OperationalError
from werkzeug.exceptions import HTTPException

from shared.model.events import causal_context
from shared.outbox.unit_of_work import SqlUnitOfWork
from shared.runtime.root import Runtime

log = logging.getLogger(__name__)
access_log = logging.getLogger("ozzy.access")

#: Paths of static files (the app's and the back office's), left out of the access log.
STATIC_PATHS = ("/static/", "/admin/static/")

#: Largest request body accepted, in bytes; larger ones get 413.
MAX_BODY_BYTES = 64 * 1024


class BadRequest(Exception):
    """A client error with a JSON body; ``fields`` names what is wrong with which field."""

    def __init__(self, message: str, *, status: int = 400, code: str = "bad_request", fields: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.fields = status, code, fields


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
    """Attach the runtime, per-request correlation, the body limit and JSON error handlers."""
    app.extensions["ozzy"] = rt
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES

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
        if not request.path.startswith(STATIC_PATHS):  # a page's assets are not worth a line each
            access_log.info("%s %s %d", request.method, request.full_path.rstrip("?"), response.status_code)
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
