"""Console sessions: a signed cookie holding a nonce and the hash of the key signed in with, and CSRF tokens.

The cookie (HttpOnly, SameSite=Strict, Secure over https, path /console) never holds the key: only its
sha256, which is what the database stores and no bearer credential. Every request re-resolves that hash
through the API's key cache, so a revoked key ends its sessions within the cache's TTL. CSRF tokens are
an HMAC of the session's nonce (session-bound); signing in or out rotates the nonce. Signing is keyed by
SLUICE_CONSOLE_SECRET, else by a random key of this process.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, replace

from fastapi import Request, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer

from serving.api.errors import ApiError
from serving.api.state import ApiState
from sluice.settings import Settings

COOKIE = "sluice_console"
PATH = "/console"
CSRF_HEADER = "x-csrf-token"


@dataclass(frozen=True)
class Session:
    """One browser's console session: a nonce and, once signed in, the key's hash and its tenant."""

    nonce: str
    key_hash: str | None = None
    tenant: str | None = None
    fresh: bool = False  # no valid cookie came with the request: the response must set one

    @property
    def signed_in(self) -> bool:
        return self.tenant is not None


class Sessions:
    """Sign and read session cookies, and make and check CSRF tokens."""

    def __init__(self, settings: Settings):
        secret = settings.console_secret.get_secret_value() if settings.console_secret else secrets.token_urlsafe(32)
        self._secret = secret.encode()
        self._signer = URLSafeTimedSerializer(secret, salt="sluice-console-session")
        self.max_age = int(settings.console_session_hours * 3600)

    def read(self, request: Request) -> Session:
        """The request's session as its cookie says (a fresh one if it has none, or a forged or stale one)."""
        raw = request.cookies.get(COOKIE)
        try:
            data = self._signer.loads(raw, max_age=self.max_age) if raw else None
        except BadSignature:
            data = None
        if not isinstance(data, dict) or not isinstance(data.get("n"), str):
            return Session(nonce=secrets.token_urlsafe(18), fresh=True)
        return Session(nonce=data["n"], key_hash=data.get("h"))

    def write(self, request: Request, response: Response, session: Session) -> None:
        """Set the session cookie on `response`."""
        value = self._signer.dumps({"n": session.nonce, "h": session.key_hash})
        response.set_cookie(
            COOKIE, value, max_age=self.max_age, path=PATH, httponly=True, samesite="strict",
            secure=request.url.scheme == "https",
        )  # fmt: skip

    def csrf(self, session: Session) -> str:
        """The CSRF token of this session (an HMAC of its nonce)."""
        return hmac.new(self._secret, f"csrf:{session.nonce}".encode(), hashlib.sha256).hexdigest()

    def check_csrf(self, session: Session, given: str | None) -> None:
        """Refuse (403) a state-changing request whose CSRF token is missing or not this session's."""
        if session.fresh or not given or not hmac.compare_digest(given, self.csrf(session)):
            raise ApiError(403, "missing or stale CSRF token: reload the console page and submit again")


async def resolve(state: ApiState, session: Session) -> Session:
    """The session with its tenant, if its key hash still names a valid key (cached lookup)."""
    if session.key_hash is None:
        return session
    tenant = await state.keys.tenant(session.key_hash)
    return replace(session, tenant=tenant) if tenant else replace(session, key_hash=None)


def signed_in(session: Session, key_hash: str) -> Session:
    """A new session for a key (a new nonce: a token seen before signing in is worthless after)."""
    return Session(nonce=secrets.token_urlsafe(18), key_hash=key_hash)


def signed_out() -> Session:
    return Session(nonce=secrets.token_urlsafe(18))
