"""The Sluice MCP server: its tools and resources over one tenant's knowledge, on stdio or streamable HTTP."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any

from mcp.server._otel import OpenTelemetryMiddleware
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from mcp_types import ListResourcesResult
from opentelemetry import context as otel_context
from pydantic import ValidationError
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from serving.api.admit import MCP_PATH as PATH
from serving.api.state import ApiState
from serving.mcp import rate  # noqa: F401 - registers the `feedback` tool
from serving.mcp.auth import CallerAuth, ScopeAuth
from serving.mcp.call import CARRIED, invalid
from serving.mcp.resources import list_resources, register_resources
from serving.mcp.tools import register_tools
from sluice import logs

INSTRUCTIONS = (
    "Sluice answers from your organisation's documents. Use `search` to find passages (with document ids "
    "and spans), `answer` for a cited answer, `read_document` to read around a citation, `list_collections` "
    "and `list_documents` to browse, and `ingest` + `job_status` to add documents."
)


class SluiceMCP(MCPServer):
    """An MCPServer that knows the API's shared state and how its caller is authenticated."""

    def __init__(self, state: ApiState, auth: CallerAuth):
        super().__init__(name="sluice", instructions=INSTRUCTIONS, version="0.1.0")
        self.state, self.auth = state, auth
        # One span per tool call, in the caller's trace (serving/mcp/call.py), as REST has one per request:
        # the SDK's own per-message span starts a new trace unless the client put one in `_meta`.
        self.middleware[:] = [m for m in self.middleware if not isinstance(m, OpenTelemetryMiddleware)]
        register_tools(self)
        register_resources(self)

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Any = None) -> Any:
        """As the SDK's, with argument errors listed by field (no pydantic banner, no echo of the values)."""
        try:
            return await super().call_tool(name, arguments, context)
        except ToolError as exc:
            if isinstance(exc.__cause__, ValidationError):
                raise ToolError(invalid(exc.__cause__)) from exc.__cause__
            raise

    async def _handle_list_resources(self, ctx: Any, params: Any) -> ListResourcesResult:
        # The SDK lists the resources registered up front; a tenant's documents are only known per caller.
        return await list_resources(self, ctx.request, params.cursor if params else None)


def http_routes(server: SluiceMCP) -> list[BaseRoute]:
    """The streamable HTTP endpoint at /mcp, to add to an app that admits /mcp like /v1 (serving/api/admit.py).

    Stateless, JSON responses: any API process can answer any call (nothing per session to share).
    DNS-rebinding protection is off: it guards cookie or ambient credentials, and every call here
    carries its bearer key. The app's lifespan must run `server.session_manager.run()`.
    """
    app = server.streamable_http_app(
        streamable_http_path=PATH,
        stateless_http=True,
        json_response=True,
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )
    routes = list(app.routes)
    for route in routes:
        route.app = _InRequest(route.app, route)
    return routes


class _InRequest:
    """Carry the HTTP request's route, trace and log context into the MCP server's handler task.

    The session manager runs handlers in its own task, outside the request's context variables:
    without this, `Observe` would count /mcp as unmatched and tool spans would start traces of their own.
    """

    def __init__(self, app: ASGIApp, route: BaseRoute):
        self.app, self.route = app, route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = self.route
        scope[CARRIED] = (otel_context.get_current(), logs.context())
        await self.app(scope, receive, send)


class Mounted:
    """The MCP endpoint beside the API (`create_app(..., beside=mount)`): routes, and the session manager to run."""

    def __init__(self, state: ApiState):
        self.server = SluiceMCP(state, ScopeAuth())
        self.routes = http_routes(self.server)

    def lifespan(self) -> AbstractAsyncContextManager:
        return self.server.session_manager.run()


def mount(state: ApiState) -> Mounted:
    """Serve MCP at /mcp on an API app built with this state."""
    return Mounted(state)
