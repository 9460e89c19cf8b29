"""The request body's size limit, applied while the body streams in (chunked bodies declare no length)."""

from __future__ import annotations

from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sluice.settings import Settings


def max_body_bytes(settings: Settings) -> int:
    """Largest request body read: the upload limit once base64-encoded (4/3), plus 1 MiB for the JSON around it."""
    return settings.max_upload_bytes * 4 // 3 + 1024 * 1024


class LimitBody:
    """Refuse a body over the limit with 413: before reading any of it when its Content-Length says so,
    else as soon as the bytes received pass the limit.

    Plain ASGI like `Observe`, counting what the app receives: otherwise an oversized body is buffered
    whole and only then rejected. The 413 is an HTTPException raised from `receive`, which FastAPI lets
    through its body parsing to its handler. (Collecting the body here into one buffer instead, to spare
    Starlette's join of the pieces, raised the peak RSS of a near-limit upload: docs/benchmarks.md.)
    """

    def __init__(self, app: ASGIApp, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        size = dict(scope.get("headers") or ()).get(b"content-length", b"")
        if size.isdigit() and int(size) > self.limit:
            await JSONResponse({"detail": self._too_large(f"of {int(size)} bytes ")}, status_code=413)(
                scope, receive, send
            )
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise HTTPException(413, self._too_large(""))
            return message

        await self.app(scope, counted, send)

    def _too_large(self, size: str) -> str:
        return (
            f"request body {size}exceeds the limit of {self.limit} bytes (SLUICE_MAX_UPLOAD_BYTES of files, "
            "base64-encoded): split the uploads over several jobs"
        )
