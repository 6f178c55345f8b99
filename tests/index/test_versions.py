"""VersionStore on a real file system: atomic writes, the ACTIVE pointer, checksums (pruning: test_retention.py)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from strop.index.versions import MANIFEST, VersionError, VersionStore


def fill_with(payload: bytes = b"index bytes", **fields):
    def fill(tmp: Path) -> dict:
        (tmp / "index.faiss").write_bytes(payload)
        (tmp / "encoder").mkdir()
        (tmp / "encoder" / "weights.bin").write_bytes(payload * 3)
        return {"dim": 8, "metrics": {"mrr@10": 0.5}, **fields}

    return fill


@pytest.fixture()
def vs(tmp_path: Path) -> VersionStore:
    return VersionStore(tmp_path, "docs").ensure()


def leftovers(vs: VersionStore) -> list[str]:
    return sorted(p.name for p in vs.versions.iterdir())


def test_write_is_complete_and_visible(vs: VersionStore) -> None:
    m = vs.write("v0001", fill_with(parent=None, job="j1"))
    assert m["id"] == "v0001" and m["collection"] == "docs" and m["job"] == "j1"
    assert set(m["checksums"]) == {"index.faiss", "encoder/weights.bin"}
    assert m["created_at"] <= time.time()
    assert leftovers(vs) == ["v0001"]
    on_disk = json.loads((vs.path("v0001") / MANIFEST).read_text())
    assert on_disk == m == vs.manifest("v0001") == vs.verify("v0001")
    assert [x["id"] for x in vs.list()] == ["v0001"]
    with pytest.raises(VersionError):
        vs.write("v0001", fill_with())  # versions are immutable
    assert vs.manifest("v0001")["checksums"] == m["checksums"]


def test_failing_fill_leaves_nothing(vs: VersionStore) -> None:
    vs.write("v0001", fill_with())

    def bad(tmp: Path) -> dict:
        (tmp / "index.faiss").write_bytes(b"half written")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        vs.write("v0002", bad)
    assert leftovers(vs) == ["v0001"]  # no v0002, no .tmp-* directory
    assert [x["id"] for x in vs.list()] == ["v0001"]
    with pytest.raises(VersionError):
        vs.manifest("v0002")
    with pytest.raises(VersionError):
        vs.activate("v0002")

    class Interrupted(BaseException):
        pass

    def interrupted(tmp: Path) -> dict:
        (tmp / "index.faiss").write_bytes(b"x")
        raise Interrupted()

    with pytest.raises(Interrupted):
        vs.write("v0003", interrupted)
    assert leftovers(vs) == ["v0001"]
    # the failed id can be written properly afterwards
    vs.write("v0002", fill_with())
    assert [x["id"] for x in vs.list()] == ["v0001", "v0002"]


def test_crash_leftovers_are_invisible_and_cleaned(vs: VersionStore) -> None:
    vs.write("v0001", fill_with())
    old = vs.versions / ".tmp-v0002-deadbeef"
    old.mkdir()
    (old / MANIFEST).write_text(json.dumps({"id": "v0002"}))
    fresh = vs.versions / ".tmp-v0003-cafebabe"  # a live writer's, right now
    fresh.mkdir()
    incomplete = vs.versions / "v0004"  # no manifest: never listed
    incomplete.mkdir()
    assert [x["id"] for x in vs.list()] == ["v0001"]
    past = time.time() - 7200
    os.utime(old, (past, past))
    vs.clean_partials()
    assert not old.exists() and fresh.exists()


def test_activate_and_active_pointer(vs: VersionStore) -> None:
    assert vs.active() is None and vs.active_mtime() == 0.0
    vs.write("v0001", fill_with(b"one"))
    vs.write("v0002", fill_with(b"two"))
    vs.activate("v0001")
    assert vs.active() == "v0001"
    t1 = vs.active_mtime()
    assert t1 > 0
    time.sleep(0.01)
    vs.activate("v0002")
    assert vs.active() == "v0002" and vs.active_mtime() > t1
    pointer = json.loads((vs.root / "ACTIVE").read_text())
    assert pointer["version"] == "v0002" and pointer["activated_at"] > 0
    with pytest.raises(VersionError):
        vs.activate("v0009")
    assert vs.active() == "v0002"  # a failed activation leaves the pointer alone
    assert not [p for p in vs.root.iterdir() if p.name.startswith(".ACTIVE")]  # no temp pointer left
    # another process sees the same pointer
    assert VersionStore(vs.root.parent.parent, "docs").active() == "v0002"


@pytest.mark.parametrize("bad", ["", ".", "..", ".tmp-x", "a/b", "../other"])
def test_bad_version_ids(vs: VersionStore, bad: str) -> None:
    with pytest.raises(VersionError):
        vs.path(bad)
    with pytest.raises(VersionError):
        vs.activate(bad)


def test_verify_detects_corruption(vs: VersionStore) -> None:
    vs.write("v0001", fill_with(b"payload"))
    vs.verify("v0001")
    f = vs.path("v0001") / "encoder" / "weights.bin"
    data = bytearray(f.read_bytes())
    data[3] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(VersionError, match="checksum"):
        vs.verify("v0001")

    vs.write("v0002", fill_with())
    (vs.path("v0002") / "index.faiss").unlink()
    with pytest.raises(VersionError):
        vs.verify("v0002")

    vs.write("v0003", fill_with())
    (vs.path("v0003") / "stray.bin").write_bytes(b"?")
    with pytest.raises(VersionError):
        vs.verify("v0003")


def test_remove_all(vs: VersionStore) -> None:
    vs.write("v0001", fill_with())
    vs.activate("v0001")
    vs.remove_all()
    assert not vs.root.exists()
    assert vs.list() == [] and vs.active() is None
