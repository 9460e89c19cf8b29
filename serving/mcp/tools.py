"""The MCP tools. Each is one decorated function whose body is a REST code path run by `run_tool`.

A new tool is one more function here with `@tool(...)`: `register_tools` adds every one of them.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Annotated, Any, Literal

from mcp.server.mcpserver import Context, MCPServer
from mcp_types import ToolAnnotations
from pydantic import BaseModel, Field

from serving.api.idempotent import idempotent
from serving.api.jobs import job_status as rest_job_status
from serving.api.jobs import submit_job
from serving.api.query import run_query
from serving.api.search import run_search
from serving.mcp import catalog
from serving.mcp.call import run_tool
from serving.schemas import MAX_SEARCH_K, IngestJob, QueryRequest, SearchRequest

TOOLS: list[tuple[Callable[..., Any], ToolAnnotations]] = []

Question = Annotated[str, Field(description="The question or search text, in natural language (max 4000 chars).")]
Filters = Annotated[
    dict[str, Any] | None,
    Field(
        description='Optional metadata filter, e.g. {"doc.year": {"gte": 2020}}, {"chunk.page": {"in": [1, 2]}}, '
        '{"and": [...]}, {"or": [...]}, {"not": ...}. Keys start with doc. or chunk.; '
        '{"collection": "name"} restricts to a collection.'
    ),
]
Collection = Annotated[str | None, Field(description="Search only this collection (see list_collections).")]


def tool(*, read_only: bool, idempotent_hint: bool = True) -> Callable:
    """Register a tool function with its behaviour hints (its docstring is the description agents read)."""

    def add(fn: Callable[..., Any]) -> Callable[..., Any]:
        TOOLS.append((fn, ToolAnnotations(read_only_hint=read_only, idempotent_hint=idempotent_hint)))
        return fn

    return add


def register_tools(server: MCPServer) -> None:
    """Add every tool of this module to `server`."""
    for fn, hints in TOOLS:
        server.add_tool(fn, annotations=hints, structured_output=False)


@tool(read_only=True)
async def search(
    query: Question,
    ctx: Context,
    filters: Filters = None,
    collection: Collection = None,
    k: Annotated[int | None, Field(ge=1, le=MAX_SEARCH_K, description="Chunks to return (default 5).")] = None,
    mode: Annotated[
        Literal["dense", "lexical", "hybrid"] | None,
        Field(description="dense: by meaning; lexical: by exact words; hybrid: both. Default: the served config's."),
    ] = None,
) -> dict:
    """Find the passages of this tenant's documents that best match a query, without answering it.

    Returns `chunks`, best first: document (source name), document_id, span ([start, end) characters
    that an answer would cite), score, and text; `reranker` names the rerank model when the served config
    has one (the scores are then its scores). Use read_document with a document_id and span to read more.
    """
    fields = {"question": query, "filters": filters, "collection": collection, "k": k, "mode": mode}
    return await run_tool(ctx, "search", lambda s, t: run_search(s, t, SearchRequest(**fields)), waits=True)


@tool(read_only=True)
async def answer(question: Question, ctx: Context, filters: Filters = None, collection: Collection = None) -> dict:
    """Answer a question from this tenant's documents, with citations (the same answer as POST /v1/query).

    Returns `answer` and `citations` (document, document_id, span, score). If the workers are slow the
    result is `{"job_id", "status": "running"}`: poll job_status with that id.
    """

    def work(state, tenant) -> dict:
        status, body = run_query(state, tenant, QueryRequest(question=question, filters=filters, collection=collection))
        return body if status == 200 else {**body, "hint": "still running: poll job_status with job_id"}

    return await run_tool(ctx, "answer", work, waits=True)


@tool(read_only=True)
async def list_collections(ctx: Context) -> dict:
    """List this tenant's collections with how many documents each holds."""
    return await run_tool(ctx, "list_collections", lambda s, t: {"collections": catalog.collections(s.db, t)})


@tool(read_only=True)
async def list_documents(
    ctx: Context,
    collection: Annotated[str | None, Field(max_length=200, description="Only documents of this collection.")] = None,
    source_prefix: Annotated[
        str | None, Field(max_length=1000, description="Only documents whose source name starts with this.")
    ] = None,
    offset: Annotated[int, Field(ge=0, le=10_000_000, description="Documents to skip (next_offset of a page).")] = 0,
    limit: Annotated[int, Field(ge=1, le=200, description="Documents per page.")] = 50,
) -> dict:
    """List this tenant's documents by source name, a page at a time.

    Each has document_id, document (source name), collection, status, chars. `next_offset` is the offset
    of the next page, or null on the last page.
    """

    def work(state, tenant) -> dict:
        return catalog.documents(state.db, tenant, collection, source_prefix, offset, limit)

    return await run_tool(ctx, "list_documents", work)


@tool(read_only=True)
async def read_document(
    document_id: Annotated[str, Field(max_length=100, description="A document_id from search or list_documents.")],
    ctx: Context,
    start: Annotated[int | None, Field(ge=0, description="First character to read (default 0).")] = None,
    end: Annotated[int | None, Field(ge=1, description="Character after the last one to read.")] = None,
) -> dict:
    """Read a document's text, or the span [start, end) of it (at most 20,000 characters a call).

    `next_start` is where to continue when the text was cut at the limit (null when done).
    """
    return await run_tool(ctx, "read_document", lambda s, t: catalog.read(s.db, t, document_id, start, end))


class FileContent(BaseModel):
    name: str = Field(min_length=1, max_length=255, description="File name with its extension, e.g. notes.md.")
    text: str | None = Field(default=None, description="The file's content as text (give this or content_base64).")
    content_base64: str | None = Field(default=None, description="The file's bytes, base64 (PDF, DOCX, ...).")

    def upload(self) -> dict:
        data = self.content_base64 or base64.b64encode((self.text or "").encode()).decode()
        return {"name": self.name, "content_base64": data}


@tool(read_only=False)
async def ingest(
    ctx: Context,
    files: Annotated[list[FileContent] | None, Field(description="Files to add (1-100).")] = None,
    source: Annotated[
        str | None, Field(description="Instead of files: a folder or file the server may read for this tenant.")
    ] = None,
    idempotency_key: Annotated[
        str | None,
        Field(min_length=1, max_length=255, description="Retry-safe key: a repeat returns the first call's job."),
    ] = None,
) -> dict:
    """Add documents to this tenant's knowledge: files sent inline, or a named source on the server.

    Returns a job_id at once; ingestion runs in the background: poll job_status until it succeeds.
    Re-sending the same idempotency_key with the same files returns the same job instead of a second one.
    """

    def work(state, tenant) -> dict:
        uploads = None if files is None else [f.upload() for f in files]
        job = IngestJob(kind="ingest", source=source, files=uploads)
        body = job.model_dump()
        _, out, replayed = idempotent(
            state, tenant, idempotency_key, "/v1/jobs", body, lambda: submit_job(state, tenant, job)
        )
        return {**out, "replayed": replayed}

    return await run_tool(ctx, "ingest", work)


@tool(read_only=True)
async def job_status(
    job_id: Annotated[str, Field(max_length=100, description="A job_id from ingest or answer.")], ctx: Context
) -> dict:
    """Status of an ingest or answer job: queued, running, succeeded (with its result) or failed (with why)."""
    return await run_tool(ctx, "job_status", lambda s, t: rest_job_status(s, t, job_id).model_dump())
