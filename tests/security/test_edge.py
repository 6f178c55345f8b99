"""What happens at the edge: keys checked before a body is read, /metrics behind a key, and a job
queue that is down answered with 503 and Retry-After."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx
import pytest
from conftest import free_port, serve_env, start_serve, stop_serve

ADMIN = "admin-key-0123456789"
READ = "read-key-0123456789ab"


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory, tiny_encoder_path: str):
    root = tmp_path_factory.mktemp("keyed")
    port = free_port()
    env = serve_env(tiny_encoder_path, STROP_API_KEYS=f"{ADMIN}:admin,{READ}:read")
    p = start_serve(root / "data", port, env, root / "serve.log")
    try:
        yield f"http://127.0.0.1:{port}", port
    finally:
        stop_serve(p)


def _head_only(port: int, path: str, length: int, auth: str | None) -> tuple[bytes, float]:
    """Send a request's headers announcing a large body, and no body: the answer must not wait for it."""
    lines = [f"PUT {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json",
             f"Content-Length: {length}"] + ([f"Authorization: Bearer {auth}"] if auth else [])
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return data, time.perf_counter() - t0


def test_no_key_is_refused_before_the_body_is_read(keyed) -> None:
    url, port = keyed
    head, took = _head_only(port, "/collections/x/documents", 18 * 1024 * 1024, None)
    assert head.startswith(b"HTTP/1.1 401") and took < 5, head[:200]
    head, _ = _head_only(port, "/collections/x/documents", 18 * 1024 * 1024, "not-a-key-at-all-000")
    assert head.startswith(b"HTTP/1.1 401")
    r = httpx.get(url + "/collections", timeout=30)
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    assert httpx.get(url + "/collections", headers={"Authorization": f"Bearer {READ}"}, timeout=30).status_code == 200
    # a known key with too small a scope still gets its 403 from the route
    r = httpx.post(url + "/collections", json={"name": "n"}, headers={"Authorization": f"Bearer {READ}"}, timeout=30)
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    assert httpx.get(url + "/healthz", timeout=10).status_code == 200  # probes need no key
    assert httpx.get(url + "/readyz", timeout=10).status_code == 200


def test_metrics_need_a_read_key_when_keys_are_configured(keyed) -> None:
    url, _ = keyed
    assert httpx.get(url + "/metrics", timeout=30).status_code == 401
    r = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {READ}"}, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")


def test_metrics_public_setting(tmp_path: Path, tiny_encoder_path: str) -> None:
    port = free_port()
    env = serve_env(tiny_encoder_path, STROP_API_KEYS=f"{ADMIN}:admin", STROP_METRICS_PUBLIC="true",
                    STROP_NO_WORKER="true", STROP_REDIS_URL="redis://127.0.0.1:6379/0")
    p = start_serve(tmp_path / "data", port, env, tmp_path / "serve.log")
    try:
        assert httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).status_code == 200
        assert httpx.get(f"http://127.0.0.1:{port}/collections", timeout=30).status_code == 401
    finally:
        stop_serve(p)


def test_job_endpoints_answer_503_while_the_queue_is_down(make_client) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    client = make_client(redis_url=dead)
    assert client.post("/collections", json={"name": "q"}).status_code == 201
    docs = [{"id": str(i), "text": f"hello number {i}"} for i in range(6)]
    assert client.put("/collections/q/documents", json={"documents": docs}).status_code == 200
    body = {"train": {"pairs": [{"query": f"greeting {i}", "positive_id": str(i)} for i in range(6)]}}
    r = client.post("/collections/q/jobs", json=body)
    assert r.status_code == 503 and r.json()["error"]["code"] == "queue_unavailable", r.text
    assert int(r.headers["retry-after"]) > 0
    assert client.post("/collections/q/search", json={"query": "hello"}).status_code == 200  # search goes on
    ready = client.get("/readyz")
    assert ready.status_code == 503 and "redis" in ready.json()["error"]["message"]
