"""GET /jobs/{id}/events over real HTTP: a live `strop serve` (uvicorn, the embedded Redis, a worker)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import ExitStack

import httpx
import pytest
from conftest import free_port, serve_env, start_serve, stop_serve

ADMIN = "admin-key-0123456789abcdef"
READ = "read-key-0123456789abcdef"
TOPICS = ["apples and pears", "compilers and parsers", "rivers and lakes", "guitars and drums",
          "stars and galaxies", "bread and pastry", "trains and rails", "cats and dogs"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_encoder_path: str) -> Iterator[str]:
    root = tmp_path_factory.mktemp("events")
    port = free_port()
    env = serve_env(tiny_encoder_path, STROP_API_KEYS=f"{ADMIN}:admin,{READ}:read")
    p = start_serve(root / "data", port, env, root / "serve.log")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_serve(p)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def make_collection(url: str, name: str) -> None:
    docs = [{"id": f"{t.split()[0]}-{j}", "text": f"notes about {t}, part {j}"} for t in TOPICS for j in range(3)]
    assert httpx.post(f"{url}/collections", json={"name": name}, headers=auth(ADMIN)).status_code == 201
    r = httpx.put(f"{url}/collections/{name}/documents", json={"documents": docs}, headers=auth(ADMIN), timeout=60)
    assert r.status_code == 200, r.text


def submit(url: str, name: str, **options) -> str:
    spec = {"train": {"pairs": [{"query": f"notes about {t}", "positive_id": f"{t.split()[0]}-0"} for t in TOPICS]},
            "batch_size": 4, "learning_rate": 1e-3, "gate": {"min_delta": -1.0, "min_pairs": 1}, **options}
    r = httpx.post(f"{url}/collections/{name}/jobs", json=spec, headers=auth(ADMIN))
    assert r.status_code == 202, r.text
    return r.json()["job_id"]


def read_events(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    """(event, data) per Server-Sent Event; comments (': ping') are skipped."""
    event, data = "message", []
    for line in lines:
        if line == "":
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
        elif line.startswith(":"):
            continue
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip(" "))


def test_a_job_streams_until_it_ends(server: str):
    make_collection(server, "ev-notes")
    job_id = submit(server, "ev-notes", max_steps=3)
    with httpx.stream("GET", f"{server}/jobs/{job_id}/events", headers=auth(READ), timeout=180) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["cache-control"] == "no-cache"
        events = list(read_events(r.iter_lines()))  # returns only when the server closes the stream
    kinds = [e for e, _ in events]
    assert kinds[-1] == "end" and set(kinds[:-1]) == {"job"}, kinds
    seen = [json.loads(d) for e, d in events if e == "job"]
    assert seen[0]["job_id"] == job_id and seen[0]["state"] in ("queued", "running")
    assert seen[-1]["state"] == "succeeded" and seen[-1]["version"], seen[-1]
    assert json.loads(events[-1][1]) == {"job_id": job_id, "state": "succeeded"}
    assert all(a != b for a, b in zip(seen, seen[1:], strict=False))  # an event per change, none repeated
    assert any(s["state"] == "running" and s["stage"] for s in seen)
    assert any((s["progress"] or {}).get("step") for s in seen), seen
    final = httpx.get(f"{server}/jobs/{job_id}", headers=auth(READ)).json()
    assert final == seen[-1]  # the same shape as GET /jobs/{id}

    # a finished job answers its last state and the end at once
    with httpx.stream("GET", f"{server}/jobs/{job_id}/events", headers=auth(READ), timeout=30) as r:
        again = list(read_events(r.iter_lines()))
    assert [e for e, _ in again] == ["job", "end"] and json.loads(again[0][1]) == final


def test_refusals_come_before_any_stream(server: str):
    r = httpx.get(f"{server}/jobs/{'0' * 32}/events", headers=auth(READ))
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = httpx.get(f"{server}/jobs/{'0' * 32}/events")
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    spec = httpx.get(f"{server}/openapi.json").json()["paths"]["/jobs/{job_id}/events"]["get"]
    assert "text/event-stream" in spec["responses"]["200"]["content"]
    assert set(spec["responses"]["429"]["content"]) == set(spec["responses"]["404"]["content"]) == {"application/json"}


def test_streams_are_bounded_per_caller_and_released_on_disconnect(server: str):
    make_collection(server, "ev-long")
    job_id = submit(server, "ev-long", epochs=100, batch_size=2)  # hundreds of steps: running for a while
    url = f"{server}/jobs/{job_id}/events"
    with ExitStack() as stack:
        streams = []
        for _ in range(8):
            r = stack.enter_context(httpx.stream("GET", url, headers=auth(READ), timeout=60))
            assert r.status_code == 200
            streams.append(r)
        ninth = httpx.get(url, headers=auth(READ), timeout=10)
        assert ninth.status_code == 429 and ninth.json()["error"]["code"] == "too_many_streams"
        assert ninth.headers["retry-after"]
        # another key is another caller
        with httpx.stream("GET", url, headers=auth(ADMIN), timeout=60) as other:
            assert other.status_code == 200
            first = next(read_events(other.iter_lines()))
            assert first[0] == "job" and json.loads(first[1])["job_id"] == job_id
        streams.pop().close()  # a client going away frees its slot (the server notices within a poll)
        end = time.time() + 10
        reopened = None
        while time.time() < end:
            candidate = stack.enter_context(httpx.stream("GET", url, headers=auth(READ), timeout=60))
            if candidate.status_code == 200:
                reopened = candidate
                break
            candidate.close()
            time.sleep(0.3)
        assert reopened is not None, "a closed stream's slot was never released"
        # cancelling ends every stream with the cancelled state and `end`
        assert httpx.delete(f"{server}/jobs/{job_id}", headers=auth(ADMIN)).json()["state"] == "cancelled"
        for s in [*streams, reopened]:
            events = list(read_events(s.iter_lines()))
            assert events[-1][0] == "end" and json.loads(events[-1][1])["state"] == "cancelled", events[-2:]


def test_the_event_reader_skips_comments_and_joins_data_lines():
    lines = [": ping", "event: job", "data: {\"a\":", "data: 1}", "", "event: end", "data: {}", ""]
    assert list(read_events(iter(lines))) == [("job", "{\"a\":\n1}"), ("end", "{}")]
