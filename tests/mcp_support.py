"""MCP client helpers for tests and the benchmark: the official `mcp.ClientSession` over stdio or streamable HTTP."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx2
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

from sluice.settings import PROJECT_ROOT

TOOL_NAMES = {
    "search",
    "answer",
    "list_collections",
    "list_documents",
    "read_document",
    "ingest",
    "job_status",
    "feedback",
}


@asynccontextmanager
async def http_session(url: str, key: str | None, **headers: str) -> AsyncIterator[ClientSession]:
    """An initialised session with the /mcp endpoint of the API at `url`, bearing `key` (and `headers`)."""
    headers = {"Authorization": f"Bearer {key}", **headers} if key else headers
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=180)) as client:
        async with streamable_http_client(f"{url}/mcp", http_client=client) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                yield session


@asynccontextmanager
async def stdio_session(env: dict[str, str], key: str, errlog) -> AsyncIterator[ClientSession]:
    """An initialised session with a `sluice mcp` subprocess acting with `key` (SLUICE_API_KEY)."""
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "cli", "mcp"], env={**env, "SLUICE_API_KEY": key}, cwd=str(PROJECT_ROOT)
    )
    async with stdio_client(params, errlog=errlog) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            yield session


async def call(session: ClientSession, tool: str, **arguments: Any) -> dict:
    """A successful tool call's JSON result (asserts it is not a tool error)."""
    result = await session.call_tool(tool, arguments)
    assert not result.is_error, (tool, _text(result))
    return json.loads(_text(result))


async def call_error(session: ClientSession, tool: str, arguments: dict) -> str:
    """A tool call that must fail: its error text (asserts `isError`)."""
    result = await session.call_tool(tool, arguments)
    assert result.is_error, (tool, arguments, _text(result)[:300])
    return _text(result)


def _text(result) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)
