"""Bearer API keys with scopes read < write < admin (from ``STROP_API_KEYS``)."""

from __future__ import annotations

import hmac

from fastapi import Request

from strop.index.settings import SCOPE_RANK
from strop.service.errors import ApiError


def require(scope: str):
    """A dependency that lets the request through when its key's scope covers ``scope``."""

    async def check(request: Request) -> None:
        keys: dict[str, str] = request.app.state.settings.keys()
        if not keys:
            return  # no keys configured: loopback-only server, open
        auth = request.headers.get("authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        if not token:
            raise ApiError(401, "unauthorized", "missing API key: send 'Authorization: Bearer <key>'",
                           headers={"WWW-Authenticate": "Bearer"})
        granted = None
        for key, key_scope in keys.items():
            if hmac.compare_digest(key.encode(), token.encode()):
                granted = key_scope
        if granted is None:
            raise ApiError(401, "unauthorized", "unknown API key", headers={"WWW-Authenticate": "Bearer"})
        if SCOPE_RANK[granted] < SCOPE_RANK[scope]:
            raise ApiError(403, "forbidden", f"this key has scope {granted!r}; the endpoint needs {scope!r}")

    return check
