"""Rendering console pages, the session every handler reads, and signing in and out."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from serving.api.errors import ApiError
from serving.api.state import State
from serving.auth import hash_key
from serving.console.session import CSRF_HEADER, Session, Sessions, resolve, signed_in, signed_out

TEMPLATES = Jinja2Templates(directory=Path(__file__).parent / "templates")
# Nothing but this origin: the browser itself refuses any request a page (or an injected script) makes elsewhere.
CSP = "default-src 'self'; img-src 'self' data:; object-src 'none'; frame-ancestors 'none'; form-action 'self'"
MAX_FORM_BYTES = 16 * 1024
router = APIRouter(prefix="/console", include_in_schema=False)


def sessions(request: Request) -> Sessions:
    return request.app.state.console_sessions


async def current(request: Request, state: State) -> Session:
    """The request's session, its tenant resolved from the key hash it holds."""
    return await resolve(state, sessions(request).read(request))


Current = Annotated[Session, Depends(current)]


def render(request: Request, session: Session, template: str, status: int = 200, **context: Any) -> Response:
    """A page with the session's CSRF token; sets the cookie when the session is new."""
    if template != "signin.html" and not session.signed_in:
        return to_signin(request, session)
    page = TEMPLATES.TemplateResponse(
        request, template, {"session": session, "csrf": sessions(request).csrf(session), **context}, status_code=status
    )
    return finish(request, page, session)


def finish(request: Request, response: Response, session: Session) -> Response:
    """Security headers, and the session cookie when it is new."""
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Cache-Control"] = "no-store"
    if session.fresh:
        sessions(request).write(request, response, session)
    return response


def to_signin(request: Request, session: Session) -> Response:
    return finish(request, RedirectResponse("/console/signin", status_code=303), session)


async def form(request: Request, session: Session) -> dict[str, str]:
    """A url-encoded form's fields, once its CSRF token checks out (403 otherwise)."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise ApiError(413, f"console forms hold at most {MAX_FORM_BYTES} bytes")
    fields = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).items()}
    sessions(request).check_csrf(session, fields.get("csrf"))
    return fields


def check_header(request: Request, session: Session) -> None:
    """A script's request: signed in, with the session's CSRF token in its header."""
    if not session.signed_in:
        raise ApiError(401, "sign in to the console first: /console/signin")
    sessions(request).check_csrf(session, request.headers.get(CSRF_HEADER))


@router.get("")
async def home(request: Request, session: Current) -> Response:
    target = "/console/ask" if session.signed_in else "/console/signin"
    return finish(request, RedirectResponse(target, status_code=303), session)


@router.get("/signin")
async def signin_page(request: Request, session: Current) -> Response:
    return render(request, session, "signin.html")


@router.post("/signin")
async def signin(request: Request, session: Current, state: State) -> Response:
    """Check the key (never logged, never echoed), then start a session holding its hash."""
    fields = await form(request, session)
    key = fields.get("key", "").strip()
    token_hash = hash_key(key) if key else None
    if token_hash is None or await state.keys.tenant(token_hash) is None:
        detail = "unknown or revoked API key: create one with `sluice key create --tenant T`"
        return render(request, session, "signin.html", status=401, error=detail)
    new = signed_in(session, token_hash)
    response = RedirectResponse("/console/ask", status_code=303)
    sessions(request).write(request, response, new)
    return finish(request, response, new)


@router.post("/signout")
async def signout(request: Request, session: Current) -> Response:
    await form(request, session)
    new = signed_out()
    response = RedirectResponse("/console/signin", status_code=303)
    sessions(request).write(request, response, new)
    return finish(request, response, new)
