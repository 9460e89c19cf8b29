"""`sluice mcp`: the MCP server over a tenant's knowledge (tools, resources), on stdio or streamable HTTP."""

from serving.mcp.auth import KeyAuth, ScopeAuth
from serving.mcp.server import PATH, SluiceMCP, http_routes, mount

__all__ = ["PATH", "KeyAuth", "ScopeAuth", "SluiceMCP", "http_routes", "mount"]
