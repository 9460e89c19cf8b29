"""Per-tenant API keys: `sk_<key id>_<secret>`, stored only as a sha256 hash, shown once."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sluice.db import Database
from sluice.errors import SluiceError

PREFIX = "sk_"


class AuthError(SluiceError):
    """No key, an unknown key or a revoked key."""


@dataclass(frozen=True)
class NewKey:
    key_id: str
    tenant: str
    secret: str  # the full bearer token; never stored


def hash_key(token: str) -> str:
    """The stored form of a bearer token."""
    return hashlib.sha256(token.encode()).hexdigest()


def create_key(db: Database, tenant: str) -> NewKey:
    """Mint a key for an existing tenant; the secret is returned once and never stored."""
    key_id = secrets.token_hex(6)
    token = f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    with db.tenant(tenant) as conn:  # raises UnknownTenantError for a missing tenant
        conn.execute("SELECT create_api_key(%s, %s)", (key_id, hash_key(token)))
    return NewKey(key_id, tenant, token)


def revoke_key(db: Database, key_id: str) -> str:
    """Revoke a key by id; return its tenant."""
    with db.shared() as conn:
        row = conn.execute("SELECT revoke_api_key(%s)", (key_id,)).fetchone()
    if row is None or row[0] is None:
        raise AuthError(f"no API key with id {key_id!r}: list ids in the output of `sluice key create`")
    return row[0]


def bearer_token(authorization: str | None) -> str:
    """The token of an `Authorization: Bearer …` header."""
    if not authorization:
        raise AuthError("missing Authorization header: send `Authorization: Bearer <key>`")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("malformed Authorization header: send `Authorization: Bearer <key>`")
    return token.strip()
