"""API errors: one exception with a message that says what to do, and how each error becomes a response."""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from serving.schemas import Problem
from sluice.errors import SluiceError

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem},
    404: {"model": Problem},
    409: {"model": Problem},
    413: {"model": Problem},
    429: {"model": Problem},
    502: {"model": Problem},
    503: {"model": Problem},
}


class ApiError(Exception):
    """An HTTP error with a message that says what to do."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers or {}


def problem(exc: ApiError) -> JSONResponse:
    """The JSON problem response of an ApiError (also sent by middleware, outside FastAPI's handlers)."""
    return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=exc.headers)


async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
    return problem(exc)


async def _invalid(_: Request, exc: RequestValidationError) -> Response:
    # FastAPI's default echoes each bad `input`, which may be unencodable (NaN, a lone surrogate
    # such as "\ud800"): that turned a 422 into a 500. Location and message say enough; ASCII-escaped.
    detail = [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type", "")} for e in exc.errors()
    ]
    body = json.dumps({"detail": detail}, ensure_ascii=True, default=str)
    return Response(body, status_code=422, media_type="application/json")


async def _server_error(_: Request, exc: SluiceError) -> JSONResponse:
    # Reaches here only for server-side problems (config, database): not the caller's fault.
    return JSONResponse({"detail": f"server not ready: {exc}"}, status_code=503, headers={"Retry-After": "5"})


def install_handlers(app: FastAPI) -> None:
    """Turn ApiError, validation errors and server-side SluiceErrors into JSON problems."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(SluiceError, _server_error)
