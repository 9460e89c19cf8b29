"""`sluice mcp` on stdio: one tenant's server for a desktop agent, acting with the key in SLUICE_API_KEY."""

from __future__ import annotations

from serving.api.state import ApiState
from serving.auth import hash_key
from serving.mcp.auth import KeyAuth
from serving.mcp.server import SluiceMCP
from sluice.errors import ConfigError
from sluice.settings import Settings


async def serve_stdio(settings: Settings) -> None:
    """Serve MCP on stdin/stdout until the client closes it; the key is checked before the first message."""
    if settings.api_key is None:
        raise ConfigError("SLUICE_API_KEY is not set: create a key with `sluice key create --tenant T` and export it")
    key = settings.api_key.get_secret_value()
    state = ApiState(settings)
    await state.auth.open(wait=True)
    try:
        if await state.keys.tenant(hash_key(key)) is None:
            raise ConfigError("SLUICE_API_KEY is unknown or revoked: create one with `sluice key create --tenant T`")
        await SluiceMCP(state, KeyAuth(key)).run_stdio_async()
    finally:
        await state.auth.close()
        state.close()
