"""Versions kept in object storage (a real S3 server, SeaweedFS) or a shared directory, with data dirs as
caches: commit by manifest, checksums on download, nothing half-written ever visible."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from strop.index.artifacts import DirArtifacts, S3Artifacts, open_artifacts
from strop.index.store import DocumentStore
from strop.index.versions import Remote, VersionError, VersionStore


@pytest.fixture(params=["directory", "s3"])
def artifacts(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    if request.param == "directory":
        return open_artifacts(str(tmp_path / "shared"))
    s3 = request.getfixturevalue("seaweedfs")
    for k, v in s3.env.items():
        monkeypatch.setenv(k, v)
    return open_artifacts(s3.url("t-" + uuid.uuid4().hex[:8]))


def write(vstore: VersionStore, vid: str, payload: bytes = b"index bytes") -> dict:
    def fill(tmp: Path) -> dict:
        (tmp / "index.faiss").write_bytes(payload)
        (tmp / "encoder").mkdir()
        (tmp / "encoder" / "weights.bin").write_bytes(payload * 3)
        return {"dim": 4, "count": 1}

    return vstore.write(vid, fill)


def test_a_replica_with_an_empty_cache_serves_what_the_writer_wrote(artifacts, tmp_path: Path) -> None:
    store = DocumentStore(tmp_path / "strop.db")
    remote = Remote(artifacts, store)
    writer = VersionStore(tmp_path / "writer", "c", remote)
    m = write(writer, "v0001")
    writer.activate("v0001")
    reader = VersionStore(tmp_path / "reader", "c", remote)
    assert reader.active() == "v0001" and [x["id"] for x in reader.list()] == ["v0001"]
    assert not reader.path("v0001").exists()
    got = reader.verify("v0001")  # downloads, checks, caches
    assert got["checksums"] == m["checksums"]
    assert (reader.path("v0001") / "encoder" / "weights.bin").read_bytes() == b"index bytes" * 3
    assert reader.verify("v0001") == got  # from the cache now
    assert not [p for p in reader.versions.iterdir() if p.name.startswith(".")]  # no temporary left
    # the pointer moves for every host at once
    write(writer, "v0002", b"other")
    mtime = reader.active_mtime()
    writer.activate("v0002")
    assert reader.active() == "v0002" and reader.active_mtime() > mtime


def test_a_version_without_its_manifest_does_not_exist(artifacts, tmp_path: Path) -> None:
    store = DocumentStore(tmp_path / "strop.db")
    remote = Remote(artifacts, store)
    # a writer killed after its files and before its manifest: upload everything but the commit marker
    local = tmp_path / "partial"
    local.mkdir()
    (local / "index.faiss").write_bytes(b"x")
    if isinstance(artifacts, S3Artifacts):
        import obstore

        obstore.put(artifacts.s3, artifacts._key("c", "v0003", "index.faiss"), b"x")
    else:
        d = artifacts._dir("c", "v0003")
        d.mkdir(parents=True)
        (d / "index.faiss").write_bytes(b"x")
    reader = VersionStore(tmp_path / "reader", "c", remote)
    assert reader.list() == [] and "v0003" not in reader.present()
    with pytest.raises(VersionError):
        reader.verify("v0003")
    with pytest.raises(VersionError):
        reader.activate("v0003")


def test_a_corrupted_file_is_never_served(artifacts, tmp_path: Path) -> None:
    store = DocumentStore(tmp_path / "strop.db")
    remote = Remote(artifacts, store)
    write(VersionStore(tmp_path / "writer", "c", remote), "v0001")
    upload = artifacts.manifest("c", "v0001")["upload"]
    if isinstance(artifacts, S3Artifacts):
        import obstore

        obstore.put(artifacts.s3, artifacts._key("c", "v0001", f"{upload}/index.faiss"), b"tampered")
    else:
        assert isinstance(artifacts, DirArtifacts)
        (artifacts._dir("c", "v0001") / upload / "index.faiss").write_bytes(b"tampered")
    reader = VersionStore(tmp_path / "reader", "c", remote)
    with pytest.raises(VersionError, match="checksum"):
        reader.verify("v0001")
    assert not reader.path("v0001").exists()
    assert not [p for p in reader.versions.iterdir() if p.name.startswith(".tmp-")]


def test_commit_is_create_only_and_removal_reaches_every_cache(artifacts, tmp_path: Path) -> None:
    store = DocumentStore(tmp_path / "strop.db")
    remote = Remote(artifacts, store)
    writer = VersionStore(tmp_path / "writer", "c", remote)
    write(writer, "v0001")
    other = VersionStore(tmp_path / "other-writer", "c", remote)
    with pytest.raises(FileExistsError):  # another host picked the same id: the first commit stands
        write(other, "v0001", b"different")
    assert not other.path("v0001").exists()
    uploads = {p.split("/")[-2] for p in _keys(artifacts, "c", "v0001") if not p.endswith("manifest.json")
               and "/encoder/" not in p}
    assert uploads == {artifacts.manifest("c", "v0001")["upload"]}  # the loser's files are gone
    reader = VersionStore(tmp_path / "reader", "c", remote)
    reader.verify("v0001")
    write(writer, "v0002")
    writer.activate("v0002")
    writer.hide(["v0001"])
    assert [m["id"] for m in reader.list()] == ["v0002"]
    assert reader.evict() == ["v0001"] and not reader.path("v0001").exists()
    writer.remove_all()
    assert reader.list() == []


def test_bad_artifact_urls() -> None:
    with pytest.raises(ValueError):
        open_artifacts("ftp://host/x")
    assert open_artifacts(None) is None
    assert json.dumps(open_artifacts("s3://bucket/prefix").describe()) == '"s3://bucket/prefix"'


def _keys(artifacts, collection: str, vid: str) -> list[str]:
    if isinstance(artifacts, S3Artifacts):
        import obstore

        return [m["path"] for batch in obstore.list(artifacts.s3, prefix=artifacts._key(collection, vid))
                for m in batch]
    root = artifacts._dir(collection, vid)
    return [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]


_UPLOADER = """
import os, shutil, sys, time
from pathlib import Path

import obstore

# a slow link: each file takes 20 ms more, so the kill lands between the first file and the manifest
_put, _copy = obstore.put, shutil.copyfile
obstore.put = lambda *a, **k: (time.sleep(0.02), _put(*a, **k))[1]
shutil.copyfile = lambda *a, **k: (time.sleep(0.02), _copy(*a, **k))[1]
from strop.index.artifacts import open_artifacts
from strop.index.store import DocumentStore
from strop.index.versions import Remote, VersionStore

url, store_url, data = sys.argv[1:4]
vstore = VersionStore(data, "c", Remote(open_artifacts(url), DocumentStore(store_url)))

def fill(tmp: Path) -> dict:
    for i in range(40):
        (tmp / f"part{i:02d}.bin").write_bytes(os.urandom(64 * 1024))
    return {"dim": 4}

vstore.write("v0001", fill)
print("committed", flush=True)
"""


def test_kill_9_mid_upload_leaves_no_visible_version(artifacts, tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    store_url = str(tmp_path / "strop.db")
    DocumentStore(store_url).close()
    proc = subprocess.Popen([sys.executable, "-c", _UPLOADER, artifacts.url, store_url, str(tmp_path / "writer")],
                            env=dict(os.environ), stdout=subprocess.PIPE, text=True)
    end = time.time() + 60
    while time.time() < end and len(_keys(artifacts, "c", "v0001")) < 3:  # some files are up, not all
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    assert proc.stdout is not None and "committed" not in proc.stdout.read()
    reader = VersionStore(tmp_path / "reader", "c", Remote(artifacts, DocumentStore(store_url)))
    assert reader.list() == [] and reader.present() == set()
    with pytest.raises(VersionError):
        reader.verify("v0001")
    # a writer that starts over commits its own upload; the dead one's files are never read
    m = write(VersionStore(tmp_path / "writer2", "c", reader.remote), "v0001")
    assert [x["id"] for x in reader.list()] == ["v0001"]
    assert reader.verify("v0001")["checksums"] == m["checksums"]
