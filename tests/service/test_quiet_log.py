"""A server's log says what happened, not what the product expects: no FAISS module probe, no
tokenizer warning for the truncation strop does on purpose, no weight-loading progress bars."""

from __future__ import annotations

from pathlib import Path

import httpx
from conftest import free_port, serve_env, start_serve, stop_serve

NOISE = ("faiss.loader", "Token indices sequence length", "Loading weights", "[transformers]")


def test_startup_and_ingest_log_no_expected_warnings(tmp_path: Path, tiny_encoder_path: str) -> None:
    log = tmp_path / "serve.log"
    port = free_port()
    p = start_serve(tmp_path / "data", port, serve_env(tiny_encoder_path), log)
    try:
        url = f"http://127.0.0.1:{port}"
        assert httpx.post(url + "/collections", json={"name": "t", "modality": "text"}, timeout=60).status_code == 201
        docs = [{"id": str(i), "text": "a long document " * 400} for i in range(4)]  # past max_seq_length
        r = httpx.put(url + "/collections/t/documents", json={"documents": docs}, timeout=120)
        assert r.status_code == 200 and r.json()["truncated"] == 4
        versions = httpx.get(url + "/collections/t/versions", timeout=30).json()["versions"]
        assert versions[-1]["count"] == 4  # the active version counts what it serves, not what it was built with
    finally:
        stop_serve(p)
    text = log.read_text()
    assert "Application startup complete" in text  # the log is there: uvicorn's lines and strop's own
    noisy = [line for line in text.splitlines() if any(n in line for n in NOISE) or " WARNING " in line]
    assert not noisy, noisy
