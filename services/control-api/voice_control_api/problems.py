"""RFC 9457 problem details: the one error format of the API, and the handlers that produce it."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match

from . import openapi_examples as ex
from .openapi_examples import examples
from .rest import etag
from .usecases.errors import (
    Conflict,
    Forbidden,
    InvalidField,
    InvalidFields,
    NotConfigured,
    NotFound,
    PreconditionFailed,
    StaleVersion,
    TimedOut,
    Unauthenticated,
    Unavailable,
    UseCaseError,
)

PROBLEM_JSON = "application/problem+json"
PROBLEM_BASE = "https://voice-platform.dev/problems/"


class FieldError(BaseModel):
    field: str = Field(description="Where the error is: body.<field>, query.<name>, path.<name> or header.<name>")
    message: str
    type: str = Field(description="Machine-readable error kind (pydantic error type)")


class Problem(BaseModel):
    """An error, as RFC 9457 ``application/problem+json``."""

    model_config = examples(ex.PROBLEM)
    type: str = Field("about:blank", description="URI identifying the problem kind")
    title: str
    status: int
    detail: str | None = None
    instance: str | None = Field(None, description="The request path")
    request_id: str | None = Field(None, description="Also in the X-Request-Id response header and the logs")
    errors: list[FieldError] | None = Field(None, description="Validation errors (422), one per field")


class ApiError(Exception):
    """Raise anywhere in a request to answer with a problem."""

    def __init__(
        self,
        status: int,
        detail: str | None = None,
        *,
        kind: str | None = None,
        headers: dict[str, str] | None = None,
        errors: list[FieldError] | None = None,
    ) -> None:
        super().__init__(detail or "")
        self.status = status
        self.detail = detail
        self.kind = kind
        self.headers = headers
        self.errors = errors


def not_found(what: str = "resource") -> ApiError:
    return ApiError(404, f"{what} not found")


def forbidden(detail: str = "your role does not allow this") -> ApiError:
    return ApiError(403, detail)


def unauthorized(detail: str = "missing or invalid credentials") -> ApiError:
    return ApiError(401, detail, headers={"WWW-Authenticate": 'Bearer realm="voice"'})


def conflict(detail: str) -> ApiError:
    return ApiError(409, detail)


def invalid(field: str, message: str, type_: str = "value_error") -> ApiError:
    """A 422 for one field that only the server can check (e.g. a reference to another resource)."""
    return ApiError(422, f"{field}: {message}", errors=[FieldError(field=field, message=message, type=type_)])


def _slug(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "-").replace("'", "")
    except ValueError:
        return "error"


def problem_response(
    request: Request,
    status: int,
    detail: str | None = None,
    *,
    kind: str | None = None,
    headers: dict[str, str] | None = None,
    errors: Sequence[FieldError] | None = None,
) -> JSONResponse:
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    body = Problem(
        type=PROBLEM_BASE + (kind or _slug(status)),
        title=title,
        status=status,
        detail=detail,
        instance=request.url.path,
        request_id=getattr(request.state, "request_id", None),
        errors=list(errors) if errors else None,
    )
    return JSONResponse(
        body.model_dump(exclude_none=True), status_code=status, headers=headers, media_type=PROBLEM_JSON
    )


def field_errors(errors: Sequence[Any], prefix: tuple[str | int, ...] = ()) -> list[FieldError]:
    out: list[FieldError] = []
    for e in errors:
        loc = (*prefix, *e.get("loc", ()))
        out.append(
            FieldError(
                field=".".join(str(p) for p in loc) or "body",
                message=str(e.get("msg", "invalid")),
                type=str(e.get("type", "value_error")),
            )
        )
    return out


def validation_error(exc: ValidationError, prefix: tuple[str | int, ...] = ("body",)) -> ApiError:
    """A 422 from a pydantic error raised inside a handler (e.g. a PATCH merged into a full model)."""
    errs = field_errors(exc.errors(include_url=False, include_input=False), prefix)
    detail = "; ".join(f"{e.field}: {e.message}" for e in errs[:5])
    return ApiError(422, detail, errors=errs)


def refusal(error: UseCaseError) -> ApiError:
    """The problem that answers a use case's refusal. Field names are those of the request body."""
    match error:
        case NotFound():
            return not_found(error.what)
        case Unauthenticated():
            return unauthorized(str(error))
        case Forbidden():
            return forbidden(str(error))
        case Conflict():
            return conflict(str(error))
        case NotConfigured():
            return ApiError(503, str(error), kind="not-configured")
        case Unavailable():
            return ApiError(503, str(error), kind="unavailable", headers={"Retry-After": "5"})
        case TimedOut():
            return ApiError(504, str(error), kind="timeout")
        case InvalidField():
            return invalid(f"body.{error.field}", error.message)
        case InvalidFields():
            return validation_error(error.error)
        case PreconditionFailed():
            return ApiError(
                412,
                f"If-Match does not match the current version ({error.current})",
                kind="precondition-failed",
                headers={"ETag": etag(error.current)},
            )
        case StaleVersion():
            return ApiError(409, str(error), kind="version-conflict", headers={"ETag": etag(error.current)})
    raise TypeError(f"no problem for {error!r}")


def _answer(request: Request, exc: ApiError) -> JSONResponse:
    return problem_response(request, exc.status, exc.detail, kind=exc.kind, headers=exc.headers, errors=exc.errors)


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _answer(request, exc)

    @app.exception_handler(UseCaseError)
    async def _refused(request: Request, exc: UseCaseError) -> JSONResponse:
        return _answer(request, refusal(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errs = field_errors(exc.errors())
        detail = "; ".join(f"{e.field}: {e.message}" for e in errs[:5])
        return problem_response(request, 422, detail, kind="validation", errors=errs)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else None
        if exc.status_code == 404 and detail == "Not Found":
            detail = "no such route"
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(request))
        return problem_response(request, exc.status_code, detail, headers=headers)


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at the request's path: Starlette's own 405 names only the first route that
    matched the path, though each method of a path is a route of its own here (RFC 9110: ``Allow`` lists all)."""
    methods: set[str] = set()
    for route in _flat(request.app.router.routes):
        if isinstance(route, BaseRoute) and route.matches(request.scope)[0] != Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return sorted(methods)


def _flat(routes: Iterable[Any]) -> Iterator[Any]:
    """The routes, with those of included routers in place (FastAPI keeps an included router as one entry whose
    routes are its ``original_router``'s; the API's routers are included without a prefix)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _flat(inner.routes)
        else:
            yield route
