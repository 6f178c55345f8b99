"""Request bodies are strict JSON: valid Unicode, finite numbers, bounded nesting.

Python's ``json`` module accepts what JSON's grammar allows but a store or a tokenizer cannot use:
lone UTF-16 surrogates (``"\\ud800"``), ``NaN`` and ``Infinity``, integers of any size, and nesting
deep enough to exhaust the stack. Accepted, such a value fails later and for everyone: a tokenizer
raises inside a shared micro-batch, a stored document answers 500 to every search that hits it.
So every JSON body is checked once, before any route sees it, and refused with a 422 that names
the offending place. The limits are documented in docs/security.md.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

MAX_DEPTH = 32  # objects and arrays nested in a request body (a document's metadata sits 3 levels down)
MAX_INT = 2**63 - 1  # integers beyond int64 cannot be stored or compared exactly


class BodyRejected(HTTPException):
    """A 422 raised while the body is parsed (FastAPI passes HTTPExceptions through unchanged)."""

    def __init__(self, code: str, message: str):
        super().__init__(422, message)
        self.code = code


def _no_constant(name: str) -> Any:
    raise BodyRejected("invalid_number", f"{name} is not a JSON number: send a finite number or null")


def _where(path: list[Any]) -> str:
    out = "body"
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


def _valid_text(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check(value: Any) -> None:
    """Raise ``BodyRejected`` for a lone surrogate, an out-of-range integer or nesting past MAX_DEPTH."""
    stack: list[tuple[Any, int, list[Any]]] = [(value, 0, [])]
    while stack:
        node, depth, path = stack.pop()
        if isinstance(node, str):
            if not _valid_text(node):
                raise BodyRejected("invalid_unicode", f"{_where(path)} is not valid Unicode (a lone surrogate "
                                   "such as \\ud800): send UTF-8 text")
        elif isinstance(node, bool) or node is None or isinstance(node, float):
            continue
        elif isinstance(node, int):
            if abs(node) > MAX_INT:
                raise BodyRejected("invalid_number", f"{_where(path)} is outside the 64-bit integer range")
        elif isinstance(node, dict | list):
            if depth >= MAX_DEPTH:
                raise BodyRejected("too_deep", f"{_where(path)} nests objects and arrays deeper than "
                                   f"{MAX_DEPTH} levels")
            items = node.items() if isinstance(node, dict) else enumerate(node)
            for k, v in items:
                if isinstance(k, str) and not _valid_text(k):
                    raise BodyRejected("invalid_unicode", f"a key in {_where(path)} is not valid Unicode")
                stack.append((v, depth + 1, [*path, k]))


def parse(body: bytes) -> Any:
    try:
        value = json.loads(body, parse_constant=_no_constant)
    except RecursionError:
        raise BodyRejected("too_deep", f"the body nests deeper than {MAX_DEPTH} levels") from None
    except UnicodeDecodeError:
        raise BodyRejected("invalid_unicode", "the body is not valid UTF-8") from None
    check(value)
    return value


class StrictRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = parse(await self.body())
        return self._json


class StrictJSONRoute(APIRoute):
    """An APIRoute whose handlers read the body through :func:`parse`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(StrictRequest(request.scope, request.receive))

        return strict
