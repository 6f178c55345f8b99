"""Bearer API keys with scopes read < write < admin (from ``STROP_API_KEYS``)."""

from __future__ import annotations

import hmac
import json
from typing import Any

from fastapi import Request

from strop.index.settings import SCOPE_RANK
from strop.service.errors import ApiError


def key_scope(keys: dict[str, str], authorization: str) -> str:
    """The scope of the bearer key in an ``Authorization`` header; ApiError 401 when it has none or
    an unknown one. Every configured key is compared (in constant time) whatever matches first."""
    token = authorization[7:].strip() if authorization.lower().startswith("bearer ") else ""
    if not token:
        raise ApiError(401, "unauthorized", "missing API key: send 'Authorization: Bearer <key>'",
                       headers={"WWW-Authenticate": "Bearer"})
    granted = None
    for key, scope in keys.items():
        if hmac.compare_digest(key.encode(), token.encode()):
            granted = scope
    if granted is None:
        raise ApiError(401, "unauthorized", "unknown API key", headers={"WWW-Authenticate": "Bearer"})
    return granted


def require(scope: str):
    """A dependency that lets the request through when its key's scope covers ``scope``."""

    async def check(request: Request) -> None:
        keys: dict[str, str] = request.app.state.settings.keys()
        if not keys:
            return  # no keys configured: loopback-only server, open
        granted = key_scope(keys, request.headers.get("authorization", ""))
        if SCOPE_RANK[granted] < SCOPE_RANK[scope]:
            raise ApiError(403, "forbidden", f"this key has scope {granted!r}; the endpoint needs {scope!r}")

    return check


async def metrics_access(request: Request) -> None:
    """/metrics lists every collection by name: it needs a read key when keys are configured, unless
    STROP_METRICS_PUBLIC makes it public (a scraper on a private network)."""
    settings = request.app.state.settings
    if not settings.metrics_public:
        await require("read")(request)


PUBLIC_PATHS = ("/healthz", "/readyz", "/openapi.json", "/docs", "/metrics", "/console")
# Page shells and their static files: they hold no data (the console's scripts call the API with the
# key the user types), so a browser can load them before it has a key to send.
PUBLIC_PREFIXES = ("/docs/", "/console/")


class AuthenticateFirst:
    """ASGI middleware: with keys configured, a request that carries no known key is answered 401
    before its body is read (a route's own dependency checks the key's scope later). Without it an
    unauthenticated caller could make the server read and parse large bodies."""

    def __init__(self, app: Any, keys: dict[str, str]):
        self.app = app
        self.keys = keys

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not self.keys or path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        try:
            key_scope(self.keys, headers.get("authorization", ""))
        except ApiError as e:
            body = json.dumps({"error": {"code": e.code, "message": e.message}}).encode()
            await send({"type": "http.response.start", "status": e.status,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                    (b"www-authenticate", b"Bearer"), (b"connection", b"close")]})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)
