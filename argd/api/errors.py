"""RFC 9457 problem details: the one JSON error shape of every route, dependency and framework error.

Clients (the CLI, the SDK, pipelines) branch on the stable `code` member and show `detail` to people; nothing
here ever puts a traceback or an internal message into a response.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import DataError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from argd.core.errors import ArgdError, Cancelled, InvalidInput
from argd.jobs.errors import (
    InvalidIdempotencyKey,
    InvalidJobRequest,
    JobConflict,
    JobRefusal,
    NotFound,
    QueueUnavailable,
    QuotaExceeded,
)
from argd.persistence.artifacts import STORAGE_FULL_MESSAGE, StoreUnavailable, is_storage_full

logger = logging.getLogger("argd.api")

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE_PREFIX = "urn:argd:problem:"

# Codes for errors raised by the framework itself (routing, methods, ...) keyed by HTTP status.
_STATUS_CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    411: "length_required",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
    500: "internal",
    507: "storage_full",
    503: "unavailable",
}


RETRY_AFTER_S = 5  # a 503 while the database or the artifact store is down
QUOTA_RETRY_AFTER_S = 30  # a 429 for active jobs: another job may have finished by then

# The HTTP status of each kind of refusal of the job service.
_REFUSAL_STATUS: dict[type[JobRefusal], int] = {
    InvalidIdempotencyKey: 400,
    NotFound: 404,
    JobConflict: 409,
    InvalidJobRequest: 422,
    QueueUnavailable: 503,
}


class ProblemDetails(BaseModel):
    """The error body of every non-2xx answer (RFC 9457), documented once for the OpenAPI document."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="URI naming the problem kind: 'urn:argd:problem:<code>'")
    title: str = Field(description="Short summary of the problem kind (the HTTP reason phrase)")
    status: int = Field(description="HTTP status code")
    detail: str = Field(description="What went wrong in this request, for people")
    instance: str | None = Field(default=None, description="Path of the request that failed")
    code: str = Field(description="Stable machine-readable problem code, e.g. 'invalid_model'")
    errors: list[dict[str, Any]] | None = Field(
        default=None, description="Field-level validation errors: [{loc, msg, type}]"
    )
    details: dict[str, Any] | None = Field(
        default=None, description="Structured details, e.g. missing/unexpected/mismatched weight keys"
    )


class Problem(Exception):
    """Raise anywhere in a request to answer with a problem document of this status and code."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        **extensions: Any,
    ):
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers
        self.extensions = extensions


def problem_response(
    request: Request | None,
    status: int,
    code: str,
    detail: str,
    *,
    headers: dict[str, str] | None = None,
    **extensions: Any,
) -> JSONResponse:
    """Build the problem+json response; extension members that are None are left out."""
    body = problem_body(request, status, code, detail, **extensions)
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


def problem_body(request: Request | None, status: int, code: str, detail: str, **extensions: Any) -> Any:
    """The problem document itself (also what an event stream sends when it has to stop)."""
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_PREFIX + code,
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
    }
    if request is not None:
        body["instance"] = request.url.path
    body.update({k: v for k, v in extensions.items() if v is not None})
    return jsonable_encoder(body)


def _code_for_status(status: int) -> str:
    if status in _STATUS_CODES:
        return _STATUS_CODES[status]
    return "client_error" if status < 500 else "server_error"


async def _handle_problem(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Problem)
    return problem_response(request, exc.status, exc.code, exc.detail, headers=exc.headers, **exc.extensions)


async def _handle_http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"No route matches {request.method} {request.url.path}"
    elif exc.status_code == 405 and detail == "Method Not Allowed":
        detail = f"Method {request.method} is not allowed on {request.url.path}"
    headers = dict(exc.headers) if exc.headers else None
    return problem_response(
        request, exc.status_code, _code_for_status(exc.status_code), detail, headers=headers
    )


def _clean_validation_errors(errors: Any) -> list[dict[str, Any]]:
    """Keep location, message and type; drop the echoed input (it may be big or sensitive)."""
    cleaned = []
    for error in errors:
        item: dict[str, Any] = {
            "loc": list(error.get("loc", ())),
            "msg": str(error.get("msg", "")),
            "type": str(error.get("type", "")),
        }
        cleaned.append(item)
    return cleaned


def describe_validation_errors(errors: list[dict[str, Any]]) -> str:
    """One human line summarising field errors, e.g. "params.lr: Input should be greater than 0"."""
    parts = []
    for error in errors[:5]:
        loc = ".".join(str(p) for p in error["loc"] if p not in ("body",)) or "request"
        parts.append(f"{loc}: {error['msg']}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


async def _handle_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = _clean_validation_errors(exc.errors())
    detail = "The request is invalid: " + describe_validation_errors(errors)
    return problem_response(request, 422, "validation_error", detail, errors=errors)


async def _handle_engine_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ArgdError)
    if isinstance(exc, InvalidInput):
        return problem_response(request, 422, exc.code, exc.message, details=exc.details or None)
    if isinstance(exc, Cancelled):
        return problem_response(request, 409, exc.code, exc.message)
    logger.error("engine error on %s %s: %s", request.method, request.url.path, exc, exc_info=exc)
    return problem_response(request, 500, "internal", "The server failed to process the request.")


async def _handle_refusal(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, JobRefusal)
    if isinstance(exc, QuotaExceeded):
        headers = {"Retry-After": str(QUOTA_RETRY_AFTER_S)} if exc.status == 429 else None
        return problem_response(
            request, exc.status, exc.code, exc.message, details=exc.details, headers=headers
        )
    status = next(code for kind, code in _REFUSAL_STATUS.items() if isinstance(exc, kind))
    return problem_response(request, status, exc.code, exc.message, details=exc.details)


def _retry_later(request: Request, code: str, what: str) -> JSONResponse:
    """503 with Retry-After: a back end is down, and the same request may succeed shortly."""
    return problem_response(
        request, 503, code, f"{what}; try again shortly", headers={"Retry-After": str(RETRY_AFTER_S)}
    )


async def _handle_database_down(request: Request, exc: Exception) -> JSONResponse:
    """The database refused or dropped the connection: a 503 the client may retry, not a 500."""
    logger.warning("database unavailable on %s %s: %s", request.method, request.url.path, exc)
    return _retry_later(request, "database_unavailable", "The database is unreachable right now")


async def _handle_unstorable(request: Request, exc: Exception) -> JSONResponse:
    """A value the database cannot store (a NUL character in text, a number out of range): bad input."""
    return problem_response(
        request,
        422,
        "invalid_value",
        "The request holds a value the service cannot store (e.g. a NUL character in a text field)",
    )


async def _handle_os_error(request: Request, exc: Exception) -> JSONResponse:
    """A full disk is the operators' problem, said plainly (507); any other OSError is internal."""
    if is_storage_full(exc):
        logger.error("storage full on %s %s: %s", request.method, request.url.path, exc)
        return problem_response(request, 507, "storage_full", STORAGE_FULL_MESSAGE)
    return await _handle_unexpected(request, exc)


async def _handle_store_down(request: Request, exc: Exception) -> JSONResponse:
    """The object store refused or did not answer (after boto3's retries): 503, cause in the log only."""
    logger.error("artifact store unavailable on %s %s: %s", request.method, request.url.path, exc)
    return _retry_later(request, "storage_unavailable", "The artifact store is unavailable right now")


async def _handle_unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response(request, 500, "internal", "The server failed to process the request.")


def install_error_handlers(app: FastAPI) -> None:
    """Route every error the app can raise to a problem document."""
    app.add_exception_handler(Problem, _handle_problem)
    app.add_exception_handler(StarletteHTTPException, _handle_http_exception)
    app.add_exception_handler(RequestValidationError, _handle_validation_error)
    app.add_exception_handler(ArgdError, _handle_engine_error)
    app.add_exception_handler(JobRefusal, _handle_refusal)
    app.add_exception_handler(OperationalError, _handle_database_down)
    app.add_exception_handler(StoreUnavailable, _handle_store_down)
    app.add_exception_handler(DataError, _handle_unstorable)
    app.add_exception_handler(OSError, _handle_os_error)
    app.add_exception_handler(Exception, _handle_unexpected)


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries documenting the problem shape for the given statuses."""
    return {
        status: {"description": HTTPStatus(status).phrase, "content": _problem_content()}
        for status in statuses
    }


def _problem_content() -> dict[str, Any]:
    return {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/ProblemDetails"}}}


def document_problems(document: dict[str, Any]) -> dict[str, Any]:
    """Make the OpenAPI document say what the handlers do: every 4xx/5xx answer is a ProblemDetails.

    FastAPI documents its own 422 with a different shape (HTTPValidationError); those entries are rewritten
    and the unused schemas dropped.
    """
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            if operation.get("security"):  # a keyed route may throttle failed keys (argd.api.throttle)
                operation.setdefault("responses", {}).setdefault(
                    "429", {"description": "Too many invalid API keys from this client, or a quota"}
                )
            for status, response in operation.get("responses", {}).items():
                if status[0] in "45":
                    response["content"] = _problem_content()
                    if status == "422":
                        response["description"] = "Unprocessable Content"
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    schemas["ProblemDetails"] = ProblemDetails.model_json_schema(ref_template="#/components/schemas/{model}")
    document["components"]["schemas"] = dict(sorted(schemas.items()))
    return document
