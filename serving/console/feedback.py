"""Thumbs up/down and a correction, passed to POST /v1/feedback where this API has that route.

The console holds no API key to call /v1/feedback over HTTP, so it hands the request to the route
itself, in process, with the session's tenant in the scope (as `Admit` would have put it there). An API
without the route answers 404 here, and the Ask page hides the thumbs.
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute

from serving.api.admit import TENANT
from serving.api.errors import ApiError
from serving.console.pages import Current, check_header

ROUTE = "/v1/feedback"
MAX_BYTES = 64 * 1024
router = APIRouter(prefix="/console", include_in_schema=False)


def feedback_route(app: FastAPI) -> APIRoute | None:
    """The app's POST /v1/feedback route, if it has one."""
    for route in app.router.routes:
        if isinstance(route, APIRoute) and route.path == ROUTE and "POST" in route.methods:
            return route
    return None


@router.post("/feedback")
async def feedback(request: Request, session: Current) -> Response:
    """Record a rating (up or down) and an optional correction of an answer, as POST /v1/feedback does."""
    check_header(request, session)
    route = feedback_route(request.app)
    if route is None:
        raise ApiError(404, "this API has no feedback endpoint (POST /v1/feedback)")
    body = await request.body()
    if len(body) > MAX_BYTES:
        raise ApiError(413, f"feedback holds at most {MAX_BYTES} bytes")
    return await _call(route, request, session.tenant, body)


async def _call(route: APIRoute, request: Request, tenant: str, body: bytes) -> Response:
    """Run the route's handler in process on a copy of this request's scope (no second HTTP request)."""
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    scope = {**request.scope, "path": ROUTE, "raw_path": ROUTE.encode(), "method": "POST", "headers": headers}
    scope[TENANT] = tenant
    sent = {"status": 500, "headers": [], "body": b""}

    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            sent["status"], sent["headers"] = message["status"], message.get("headers", [])
        elif message["type"] == "http.response.body":
            sent["body"] += message.get("body", b"")

    await route.handle(scope, receive, send)
    media = dict(sent["headers"]).get(b"content-type", b"application/json").decode()
    return Response(sent["body"], status_code=sent["status"], media_type=media)
