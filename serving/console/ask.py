"""The Ask page: a question streamed through the same events as POST /v1/query, citations in context, feedback."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse
from pydantic import ValidationError
from starlette.concurrency import iterate_in_threadpool

from serving.api import admit
from serving.api.errors import ApiError
from serving.api.query import stream_query
from serving.api.state import ApiState, State
from serving.console import data
from serving.console.pages import Current, check_header, render
from serving.console.session import Session
from serving.schemas import QueryRequest
from serving.stream import sse
from sluice import logs

router = APIRouter(prefix="/console", include_in_schema=False)


@router.get("/ask")
def ask_page(request: Request, session: Current, state: State) -> Response:
    found = data.collections(state, session.tenant) if session.signed_in else []
    return render(request, session, "ask.html", active="ask", collections=found, feedback=True)


@router.post("/ask/stream")
async def ask_stream(request: Request, session: Current, state: State) -> StreamingResponse:
    """The answer as Server-Sent Events (accepted, token..., done | error), admitted as POST /v1/query is."""
    check_header(request, session)
    req = _question(await request.body())
    held = ExitStack()
    try:
        await _admit(state, session, held)
        logs.bind(tenant=session.tenant)
        events = await run_in_threadpool(stream_query, state, session.tenant, req)
    except BaseException:
        held.close()
        raise
    return StreamingResponse(_released(events, held), media_type="text/event-stream")


def _question(body: bytes) -> QueryRequest:
    try:
        fields = json.loads(body or b"{}")
        return QueryRequest(**{**fields, "stream": True}) if isinstance(fields, dict) else QueryRequest()
    except (ValueError, ValidationError, TypeError) as exc:
        raise ApiError(422, f"the question was refused: {_first_error(exc)}") from None


def _first_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        return f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}"
    return str(exc)


async def _admit(state: ApiState, session: Session, held: ExitStack) -> None:
    """The tenant's slot, a query slot and a rate-limit token, as `Admit` takes them for POST /v1/query."""
    if not state.tenant_slots.take(session.tenant):
        raise admit.tenant_busy(state)
    held.callback(state.tenant_slots.give_back, session.tenant)
    if not state.waiting.take():
        raise admit.busy(state)
    held.callback(state.waiting.give_back)
    await admit.spend(state, session.key_hash)


async def _released(events: Iterator[tuple[str, dict]], held: ExitStack) -> AsyncIterator[str]:
    """The events as SSE text; the slots are given back (on the event loop) when the stream ends."""
    try:
        async for name, payload in iterate_in_threadpool(events):
            yield sse(name, payload)
    finally:
        held.close()


@router.get("/source/{document_id}")
def source(
    request: Request, session: Current, state: State, document_id: str, start: int = 0, end: int = 0
) -> Response:
    """A cited document with the cited span highlighted in its context."""
    found = data.passage(state, session.tenant, document_id, start, end) if session.signed_in else None
    if session.signed_in and found is None:
        return render(request, session, "source.html", status=404, active="ask", passage=None)
    return render(request, session, "source.html", active="ask", passage=found)
