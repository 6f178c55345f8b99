"""Caller mistakes and hostile uploads are 4xx with bounded work, never a 500 (real app, real HTTP)."""

from __future__ import annotations

import io
import resource
import tarfile
import time
import zipfile
from pathlib import Path

import pytest


@pytest.fixture()
def client(make_client):
    c = make_client()
    assert c.post("/collections", json={"name": "code", "modality": "code"}).status_code == 201
    assert c.post("/collections", json={"name": "text"}).status_code == 201
    docs = [{"id": f"d{i}", "text": f"document {i}", "metadata": {"$": i, "k": "v"}} for i in range(5)]
    assert c.put("/collections/text/documents", json={"documents": docs}).status_code == 200
    return c


def _zip(files: dict[str, bytes | str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _ingest(client, body: bytes):
    return client.post("/collections/code/ingest/code", content=body,
                       headers={"content-type": "application/octet-stream"})


def _error(r, status: int, code: str) -> None:
    assert r.status_code == status and r.json()["error"]["code"] == code, r.text[:500]


def test_gitignore_with_nested_double_stars_takes_linear_time(client) -> None:
    deep = "/".join(["a"] * 30)
    body = _zip({".gitignore": "**/a/**/a/**/a/**/a/**/a/**/a/**/z\n", f"{deep}/m.py": "def f():\n    return 1\n"})
    t0 = time.process_time()
    r = _ingest(client, body)
    assert r.status_code == 200, r.text
    assert time.process_time() - t0 < 2.0  # was 31 s of CPU with a backtracking matcher
    assert r.json()["documents"] == 1


def test_huge_files_and_definitions_are_skipped_with_bounded_memory(client) -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    big = "x = 1\n" * 500_000  # 3 MB of source: parsing it whole would take gigabytes
    # under the file cap, over the document cap, in lines short enough not to look minified
    long_def = "def f():\n" + "".join(f"    s{i} = '{'y' * 900}'\n" for i in range(240)) + "    return 1\n"
    r = _ingest(client, _zip({"big.py": big, "long.py": long_def, "ok.py": "def g():\n    return 2\n"}))
    assert r.status_code == 200, r.text
    out = r.json()
    reasons = {s["path"]: s["reason"] for s in out["skipped_files"]}
    assert "too large" in reasons["big.py"] and any(p.startswith("long.py:") and "definition too large" in why
                                                    for p, why in reasons.items())
    assert out["documents"] == 1
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 300, grown_mib


def test_too_many_definitions_in_one_upload(client) -> None:
    files = {f"m{k}.py": "".join(f"def f{i}():\n    pass\n" for i in range(4001)) for k in range(5)}
    _error(_ingest(client, _zip(files)), 413, "too_many_definitions")


def test_tar_entries_are_counted_while_streaming(client) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for i in range(60_000):
            info = tarfile.TarInfo(f"d{i}")
            info.type = tarfile.DIRTYPE
            tf.addfile(info)
    t0 = time.process_time()
    _error(_ingest(client, buf.getvalue()), 413, "archive_too_large")
    assert time.process_time() - t0 < 4  # ~1.6 s: tar headers parsed up to the 50,000-entry cap, no further


def _lying_zip() -> bytes:
    """A zip whose header says its member is 10 bytes; the member really inflates to 1 MB."""
    data = _zip({"m.py": "x = 1\n" * 200_000})
    # patch the uncompressed size in the local header (offset 22) and the central directory entry
    raw = bytearray(data)
    real = (1_200_000).to_bytes(4, "little")
    fake = (10).to_bytes(4, "little")
    assert raw.count(real) == 2
    return bytes(raw.replace(real, fake))


@pytest.mark.parametrize(("body", "status", "code"), [
    (_zip({"a": "x", "a/b.py": "def f():\n    pass\n"}), 422, "bad_archive"),  # a file and a directory named a
    (_zip({"./": "", "./m.py": "def f():\n    pass\n"}), 200, None),  # "." entries name nothing: fine
    (_zip({"/".join(["d"] * 1500) + "/m.py": "def f():\n    pass\n"}), 422, "archive_too_deep"),
    (_zip({"../evil.py": "def f():\n    pass\n"}), 422, "unsafe_archive"),
    (_lying_zip(), 422, "bad_archive"),
    (_zip({"m.py": "def f():\n    pass\n" * 100})[:-40], 422, "bad_archive"),  # truncated: corrupt
    (b"PK\x03\x04" + b"\x00" * 100, 422, "bad_archive"),
    (b"definitely not an archive", 422, "bad_archive"),
])
def test_bad_archives_are_4xx(client, body: bytes, status: int, code: str | None) -> None:
    r = _ingest(client, body)
    if code is None:
        assert r.status_code == status, r.text
    else:
        _error(r, status, code)
    assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize("vid", ["v0001%00", "v" * 300, "v0001.tmp", "%2e%2e", "v0001%0a"])
def test_bad_version_ids_are_404(client, vid: str) -> None:
    _error(client.post(f"/collections/text/versions/{vid}/activate"), 404, "version_not_found")


@pytest.mark.parametrize("key", ['a"b', "a\\b", "", "tab\there"])
def test_bad_filter_keys_are_422(client, key: str) -> None:
    _error(client.post("/collections/text/search", json={"query": "x", "filter": {key: 1}}), 422, "invalid_request")


def test_filter_limits_and_odd_but_valid_keys(client) -> None:
    many = {f"k{i}": i for i in range(5000)}
    _error(client.post("/collections/text/search", json={"query": "x", "filter": many}), 422, "invalid_request")
    r = client.post("/collections/text/search", json={"query": "document", "filter": {"$": 3}})
    assert r.status_code == 200 and [h["id"] for h in r.json()["hits"]] == ["d3"]
    r = client.post("/collections/text/search", json={"query": "document", "filter": {"k": "v", "$": 1.0}})
    assert r.status_code == 200


def test_an_encoder_that_is_not_a_model_is_422(client, tmp_path: Path) -> None:
    (tmp_path / "not-a-model").mkdir()
    (tmp_path / "not-a-model" / "README").write_text("nothing here")
    for enc in (str(tmp_path / "not-a-model"), str(tmp_path / "missing")):
        _error(client.post("/collections", json={"name": "bad", "encoder": enc}), 422, "bad_encoder")
    assert client.get("/collections/bad").status_code == 404  # nothing half-created
