"""Whose call is this: the tenant of the API key, found exactly as the REST API finds it.

Over HTTP the `Admit` middleware (serving/api/admit.py) has already checked the bearer key, taken the
tenant's in-flight slot and spent a rate-limit token before the MCP server read the body; the tenant
is on the request's scope. Over stdio there is no HTTP request: each call goes through the same
`admit` with the key from SLUICE_API_KEY, so a revoked key stops working and the rate limit applies.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import ExitStack, asynccontextmanager
from typing import Any, Protocol

from mcp.server.mcpserver.exceptions import ToolError

from serving.api.admit import TENANT, admit
from serving.api.state import ApiState


class CallerAuth(Protocol):
    """How a tool or resource call finds its tenant (the transport decides, when the server is built)."""

    def tenant(self, state: ApiState, request: Any) -> AsyncIterator[str]: ...


class ScopeAuth:
    """HTTP: the tenant `Admit` resolved from the bearer key, on the request's ASGI scope."""

    @asynccontextmanager
    async def tenant(self, state: ApiState, request: Any) -> AsyncIterator[str]:
        tenant = None if request is None else request.scope.get(TENANT)
        if tenant is None:  # not admitted: the MCP app was mounted without `Admit` around it
            raise ToolError("this MCP endpoint is not authenticated: send `Authorization: Bearer <Sluice API key>`")
        yield tenant


class KeyAuth:
    """stdio: every call is admitted like an HTTP request bearing `key` (the same checks, the same limits)."""

    def __init__(self, key: str):
        self._scope = {
            "type": "http",
            "method": "POST",
            "path": "/mcp",
            "headers": [(b"authorization", f"Bearer {key}".encode())],
        }

    @asynccontextmanager
    async def tenant(self, state: ApiState, request: Any) -> AsyncIterator[str]:
        with ExitStack() as held:  # the tenant's in-flight slot, given back when the call ends
            yield await admit(state, dict(self._scope), held)  # refusals: ApiError, as over HTTP
