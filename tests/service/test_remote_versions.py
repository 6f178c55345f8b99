"""An API process whose versions live in shared storage (STROP_ARTIFACTS_URL): a version that fails its
checksums is never served, and /readyz says why."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from fastapi.testclient import TestClient

from strop.index.settings import Settings
from strop.index.store import DocumentStore
from strop.index.versions import Remote, VersionStore
from strop.service.app import create_app


def app(tmp_path: Path, name: str, tiny_encoder_path: str) -> TestClient:
    settings = Settings(data_dir=tmp_path / f"cache-{name}", default_encoder=tiny_encoder_path, precision="fp32",
                        poll_interval_s=0.1, store_url=str(tmp_path / "strop.db"),
                        artifacts_url=str(tmp_path / "shared"))
    client = TestClient(create_app(settings))
    client.__enter__()
    return client


def test_a_version_that_fails_its_checksums_is_never_served(tmp_path: Path, tiny_encoder_path: str) -> None:
    a = app(tmp_path, "a", tiny_encoder_path)
    try:
        assert a.post("/collections", json={"name": "notes"}).status_code == 201
        docs = [{"id": f"d{i}", "text": f"note number {i} about rivers"} for i in range(10)]
        assert a.put("/collections/notes/documents", json={"documents": docs}).status_code == 200
        v1 = a.get("/collections/notes").json()["version"]["id"]
    finally:
        a.__exit__(None, None, None)
    b = app(tmp_path, "b", tiny_encoder_path)  # an empty cache: downloads v1
    try:
        assert b.get("/collections/notes").json()["version"]["id"] == v1
        assert b.get("/readyz").status_code == 200
        # another host publishes v0002 and moves the pointer, but the object store hands out a damaged file
        from strop.index.artifacts import open_artifacts

        store = DocumentStore(tmp_path / "strop.db")
        remote = Remote(open_artifacts(str(tmp_path / "shared")), store)
        source = VersionStore(tmp_path / "cache-b", "notes").path(v1)
        manifest = VersionStore(tmp_path / "cache-b", "notes").manifest(v1)

        def fill(tmp: Path) -> dict:
            for p in source.iterdir():
                if p.name != "manifest.json":
                    (shutil.copytree if p.is_dir() else shutil.copyfile)(p, tmp / p.name)
            return {k: v for k, v in manifest.items() if k not in ("id", "checksums", "created_at")}

        VersionStore(tmp_path / "cache-writer", "notes", remote).write("v0999", fill)
        m = remote.artifacts.manifest("notes", "v0999")
        (tmp_path / "shared" / "collections" / "notes" / "versions" / "v0999" / m["upload"] / "index.faiss") \
            .write_bytes(b"damaged")
        store.set_active("notes", "v0999")
        end = time.time() + 10
        while b.get("/readyz").status_code == 200 and time.time() < end:
            time.sleep(0.1)
        ready = b.get("/readyz")
        assert ready.status_code == 503, ready.text
        assert "v0999 failed its checksum check" in ready.json()["error"]["message"]
        assert b.get("/collections/notes").json()["version"]["id"] == v1  # the old version keeps serving
        hits = b.post("/collections/notes/search", json={"query": "rivers", "top_k": 3}).json()["hits"]
        assert len(hits) == 3
        assert not (tmp_path / "cache-b" / "collections" / "notes" / "versions" / "v0999").exists()
        # the pointer back on a sound version: ready again
        store.set_active("notes", v1)
        end = time.time() + 10
        while b.get("/readyz").status_code != 200 and time.time() < end:
            time.sleep(0.1)
        assert b.get("/readyz").status_code == 200
    finally:
        b.__exit__(None, None, None)
