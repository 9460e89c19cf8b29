"""Resources: the tenant's collections and documents, listed per caller so a client can browse them.

`sluice://collections/{collection}` reads as a JSON list of the collection's documents (first page);
`sluice://documents/{document_id}` reads as the document's text (the first MAX_READ_CHARS characters).
"""

from __future__ import annotations

import json
from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError, ToolError
from mcp.shared.exceptions import MCPError
from mcp_types import ListResourcesResult, Resource
from mcp_types.jsonrpc import INVALID_REQUEST

from serving.mcp import catalog
from serving.mcp.call import Work, run_call

PAGE = 100  # documents per resources/list page


def register_resources(server: MCPServer) -> None:
    """Add the two resource templates to `server` (the listing is `list_resources`)."""
    server.resource(
        "sluice://collections/{collection}",
        name="collection",
        description="The documents of one of your collections (JSON: document_id, document, status, chars).",
        mime_type="application/json",
    )(read_collection)
    server.resource(
        "sluice://documents/{document_id}",
        name="document",
        description="A document's text (first 20,000 characters; the read_document tool reads any span).",
        mime_type="text/plain",
    )(read_document)


async def read_collection(collection: str, ctx: Context) -> str:
    def work(state, tenant) -> dict:
        return catalog.documents(state.db, tenant, collection, None, 0, 2 * PAGE)

    return json.dumps(await _read(ctx, "resource:collection", work))


async def read_document(document_id: str, ctx: Context) -> str:
    out = await _read(ctx, "resource:document", lambda s, t: catalog.read(s.db, t, document_id, None, None))
    return out["text"]


async def _read(ctx: Context, name: str, work: Work) -> Any:
    try:
        return await run_call(ctx.mcp_server, ctx.request_context.request, name, work)
    except ToolError as exc:
        if "no document" in str(exc):
            raise ResourceNotFoundError(str(exc)) from None
        raise ResourceError(str(exc)) from None


async def list_resources(server: MCPServer, request: Any, cursor: str | None) -> ListResourcesResult:
    """One page of the caller's resources: its collections (first page), then its documents."""
    offset = int(cursor) if cursor and cursor.isdigit() else 0

    def work(state, tenant) -> tuple[list[dict], dict]:
        names = catalog.collections(state.db, tenant) if offset == 0 else []
        return names, catalog.documents(state.db, tenant, None, None, offset, PAGE)

    try:
        names, page = await run_call(server, request, "resource:list", work)
    except ToolError as exc:  # outside any resource: a protocol error the client reads
        raise MCPError(code=INVALID_REQUEST, message=str(exc)) from None
    found = [_collection(c) for c in names] + [_document(d) for d in page["documents"]]
    following = page["next_offset"]
    return ListResourcesResult(resources=found, next_cursor=None if following is None else str(following))


def _collection(row: dict) -> Resource:
    name = row["collection"]
    return Resource(
        uri=f"sluice://collections/{name}",
        name=f"collection {name}",
        description=f"{row['documents']} documents",
        mime_type="application/json",
    )


def _document(row: dict) -> Resource:
    return Resource(
        uri=f"sluice://documents/{row['document_id']}",
        name=row["document"],
        description=f"{row['chars']} characters in collection {row['collection']}",
        mime_type="text/plain",
    )
