"""Who may read /metrics: the holder of the scrape token, or (no token set) a client on this host.

/metrics names tenants and their traffic, tokens and cost, so it is not public. With
SLUICE_METRICS_TOKEN set, it needs `Authorization: Bearer <token>` from everyone, loopback included
(a tenant's API key is not a scrape credential). Unset, it answers loopback clients only, and not a
request a proxy forwarded: uvicorn already replaces the peer address with the X-Forwarded-For client
of a proxy on this host, and any forwarding header left refuses the request too.
"""

from __future__ import annotations

import hmac
import ipaddress
from typing import Annotated

from fastapi import Depends, Request

from serving.api.errors import ApiError

FORWARDING_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip")


async def scrape_allowed(request: Request) -> None:
    """Refuse the scrape (401 wrong or missing token, 403 not local) unless its credential fits the settings."""
    token = request.app.state.sluice.settings.metrics_token
    if token is not None:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), token.get_secret_value().encode()
        ):
            raise ApiError(
                401,
                "/metrics needs the scrape token: send `Authorization: Bearer <SLUICE_METRICS_TOKEN>` "
                "(a tenant API key is not one)",
                {"WWW-Authenticate": 'Bearer realm="metrics"'},
            )
        return
    if not _local(request):
        raise ApiError(
            403,
            "/metrics answers only clients on this host while SLUICE_METRICS_TOKEN is unset: set it on the server "
            "and scrape with `Authorization: Bearer <token>`",
        )


def _local(request: Request) -> bool:
    """A loopback peer that no proxy forwarded the request for."""
    if request.client is None or any(h in request.headers for h in FORWARDING_HEADERS):
        return False
    try:
        address = ipaddress.ip_address(request.client.host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


Scrape = Annotated[None, Depends(scrape_allowed)]
