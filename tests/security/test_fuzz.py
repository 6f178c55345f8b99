"""Property-based fuzzing of the whole REST API from its own OpenAPI document (schemathesis).

Every operation gets generated requests, valid and invalid by the schema, and a share of bodies
poisoned the ways JSON allows and strop must refuse: lone surrogates, NaN and Infinity, integers
past 64 bits, nesting past the limit. The one check: no 5xx, ever. The server is a real
`strop serve` with no worker (fuzzed jobs are queued, never run).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from conftest import free_port, serve_env, start_serve, stop_serve
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.core import NOT_SET

POISON = ["\ud800", "a\udfffb", float("nan"), float("inf"), -float("inf"), 10**30, -(10**25)]


def _nested(depth: int) -> Any:
    value: Any = "leaf"
    for i in range(depth):
        value = {"k": value} if i % 2 else [value]
    return value


def _inject(body: Any, poison: Any, where: int) -> Any:
    """``body`` with one value replaced by ``poison`` (the ``where``-th leaf, or a new key)."""
    leaves: list[tuple[Any, Any]] = []

    def walk(node: Any) -> None:
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for k, v in items:
            if isinstance(v, dict | list):
                walk(v)
            else:
                leaves.append((node, k))

    walk(body)
    if leaves:
        node, key = leaves[where % len(leaves)]
        node[key] = poison
    elif isinstance(body, dict):
        body["\ud800" if where % 2 else "x"] = poison
    return body


@schemathesis.hook
def flatmap_body(context: Any, body: Any) -> Any:
    if not isinstance(body, dict | list):
        return st.just(body)
    poisons = st.sampled_from(POISON) | st.integers(33, 60).map(_nested)
    return st.one_of(st.just(body),
                     st.tuples(poisons, st.integers(0, 1000)).map(lambda pw: _inject(body, pw[0], pw[1])))


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory, tiny_encoder_path: str) -> Iterator[str]:
    root: Path = tmp_path_factory.mktemp("fuzz")
    port = free_port()
    env = serve_env(tiny_encoder_path, STROP_NO_WORKER="true", STROP_REDIS_URL="redis://127.0.0.1:6379/0",
                    STROP_REDIS_PREFIX=f"fuzz-{uuid.uuid4().hex[:8]}", STROP_MAX_BODY_BYTES="1048576")
    p = start_serve(root / "data", port, env, root / "serve.log")
    url = f"http://127.0.0.1:{port}"
    try:
        for name, modality in (("string", "text"), ("code", "code")):  # names the generator tends to pick
            httpx.post(url + "/collections", json={"name": name, "modality": modality}, timeout=60)
            httpx.put(f"{url}/collections/{name}/documents", timeout=60,
                      json={"documents": [{"id": "string", "text": "def f():\n    return 1", "metadata": {"k": 1}}]})
        yield url
    finally:
        stop_serve(p)
        log = (root / "serve.log").read_text()
        assert "Traceback" not in log, log[log.index("Traceback") - 200:][:3000]


@pytest.fixture(scope="module")
def api_schema(fuzz_server: str):
    return schemathesis.openapi.from_url(fuzz_server + "/openapi.json")


STATUSES: dict[int, int] = {}
POISONED: list[int] = []


def send(case: schemathesis.Case, base: str) -> None:
    """Send the case as raw bytes: HTTP clients refuse to write NaN into JSON, a hostile caller does not."""
    headers = {k: v for k, v in (case.headers or {}).items() if isinstance(v, str)}
    content = None
    if case.body is not NOT_SET:
        if isinstance(case.body, bytes):
            content = case.body
        else:
            content = json.dumps(case.body, allow_nan=True).encode("utf-8", "surrogatepass")
        headers["content-type"] = case.media_type or "application/json"
    try:
        r = httpx.request(case.method, base + case.formatted_path, params=case.query or None, headers=headers,
                          content=content, timeout=60)
    except (httpx.InvalidURL, UnicodeEncodeError, ValueError):
        return  # a request no HTTP client can put on the wire (a surrogate in the path or a header)
    STATUSES[r.status_code] = STATUSES.get(r.status_code, 0) + 1
    if content and (b"NaN" in content or b"\\ud8" in content or b"Infinity" in content):
        POISONED.append(r.status_code)
    assert r.status_code < 500, f"{case.method} {case.formatted_path} -> {r.status_code} {r.text[:300]} " \
                                f"body={content[:300] if content else None!r}"


@pytest.mark.slow
def test_no_request_is_a_server_error(api_schema: Any, fuzz_server: str) -> None:
    failures: list[str] = []
    operations = 0
    for result in api_schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @settings(max_examples=12, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def run(case: schemathesis.Case) -> None:
            send(case, fuzz_server)

        try:
            run()
        except Exception as e:  # noqa: BLE001 - collected: one report for every operation that failed
            failures.append(f"{operation.label}: {str(e)[:1500]}")
    assert operations >= 20
    # the poison went out and came back refused; most requests were answered, not all refused alike
    assert len(POISONED) >= 20 and all(400 <= s < 500 for s in POISONED), (len(POISONED), POISONED[:20])
    assert sum(n for s, n in STATUSES.items() if s < 300) >= 10, STATUSES
    assert not failures, "\n\n".join(failures)
