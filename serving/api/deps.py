"""Request dependencies: the tenant that admission resolved from the bearer key, and Idempotency-Key."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from serving.api.admit import TENANT
from serving.api.errors import ApiError

BEARER = HTTPBearer(auto_error=False, description="A tenant API key from `sluice key create`.")
IdemKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=255, min_length=1)]


async def tenant_of(request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]) -> str:
    """The tenant `Admit` resolved from the bearer key before the body was read (serving/api/admit.py).

    BEARER only documents the scheme in OpenAPI: the key is checked once, by admission.
    """
    tenant = request.scope.get(TENANT)
    if tenant is None:  # a route outside /v1 asked for a tenant: admission never ran for it
        raise ApiError(401, "this route is not authenticated: tenant routes live under /v1/")
    return tenant


Tenant = Annotated[str, Depends(tenant_of)]
