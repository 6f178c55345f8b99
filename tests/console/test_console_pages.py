"""The console's pages over HTTP (no browser): public shells without data, assets from the package."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONSOLE = ROOT / "service" / "console"
KEY = "console-pages-key-0123456789"
PAGES = ["/console", "/console/collections/docs", "/console/collections/docs/versions",
         "/console/collections/docs/evaluate", "/console/jobs", "/console/jobs?collection=docs&job=abc"]


def test_pages_and_assets_need_no_key_but_the_api_still_does(make_client):
    client = make_client(api_keys=f"{KEY}:admin")
    for path in PAGES:
        r = client.get(path)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), path
        assert 'data-auth="required"' in r.text and "/console/static/console.js" in r.text
    for asset in ("console.js", "console.css", "vendor/uPlot.iife.min.js", "vendor/highlight.min.js"):
        assert client.get(f"/console/static/{asset}").status_code == 200, asset
    assert client.get("/collections").status_code == 401
    assert client.get("/collections", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert client.get("/console/", follow_redirects=False).headers["location"] == "/console"


def test_pages_hold_no_data_and_escape_what_the_url_names(make_client):
    client = make_client(api_keys=f"{KEY}:admin")
    client.post("/collections", json={"name": "secret-corpus"}, headers={"Authorization": f"Bearer {KEY}"})
    assert "secret-corpus" not in client.get("/console").text
    page = client.get("/console/collections/%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E").text
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page


def test_without_keys_the_pages_say_no_key_is_needed(make_client):
    r = make_client().get("/console")
    assert r.status_code == 200 and 'data-auth="open"' in r.text


def test_the_job_form_takes_its_defaults_from_the_job_contract(make_client):
    from strop.trainer.contract import JobSpec, MiningSpec

    page = make_client().get("/console/jobs").text
    for field, default in (("j-epochs", JobSpec.model_fields["epochs"].default),
                           ("j-batch", JobSpec.model_fields["batch_size"].default),
                           ("j-negatives", MiningSpec.model_fields["negatives_per_query"].default)):
        tag = re.search(rf'<input id="{field}"[^>]*>', page)
        assert tag and f'value="{default}"' in tag.group(0), (field, default)


def test_every_console_file_is_package_data():
    """A non-editable install carries every template, script, style, vendored library and licence."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "strop.service.console" in setuptools["packages"]
    patterns = setuptools["package-data"]["strop.service.console"]
    files = [p.relative_to(CONSOLE).as_posix() for p in CONSOLE.rglob("*")
             if p.is_file() and p.suffix != ".pyc" and p.name != "__init__.py"]
    assert files and {"static/vendor/uPlot.LICENSE", "static/vendor/highlight.LICENSE"} <= set(files)
    # setuptools globs: '*' stays inside one folder
    missing = [f for f in files if not any(fnmatch.fnmatch(f, p) and f.count("/") == p.count("/") for p in patterns)]
    assert missing == []


def test_version_sizes_are_reused_until_a_write_changes_them(make_client):
    """The console reads collection sizes on every page; they are cached, but never stale."""
    from strop.index.retention import version_sizes

    client = make_client()
    client.post("/collections", json={"name": "sized"})

    def put(ids: range) -> None:
        docs = [{"id": f"d{i}", "text": f"document number {i}"} for i in ids]
        assert client.put("/collections/sized/documents", json={"documents": docs}).status_code == 200

    def listed() -> dict:
        return {v["id"]: v["vector_bytes"] for v in client.get("/collections/sized/versions").json()["versions"]}

    put(range(10))
    first = client.get("/collections/sized").json()["storage"]
    assert first["versions"][0]["vector_rows"] == 10 and listed()["v0001"] == first["versions"][0]["vector_bytes"]
    put(range(10, 25))
    second = client.get("/collections/sized").json()["storage"]
    assert second["versions"][0]["vector_rows"] == 25 and second["bytes"] > first["bytes"]
    assert client.delete("/collections/sized/documents/d0").status_code == 200
    third = client.get("/collections/sized").json()["storage"]
    assert third["versions"][0]["vector_rows"] == 24
    st = client.app.state.manager.state("sized")
    assert third["versions"][0]["vector_bytes"] == version_sizes(client.app.state.store, st.vstore)["v0001"]["vector_bytes"]


def test_evaluate_per_query_ranks_each_pair(make_client):
    """What the console's evaluate page lists: each pair's rank of its first positive."""
    from strop.index.metrics import query_ranks

    client = make_client()
    client.post("/collections", json={"name": "ranked"})
    docs = [{"id": f"d{i}", "text": f"a note about topic number {i} and nothing else"} for i in range(20)]
    client.put("/collections/ranked/documents", json={"documents": docs})
    pairs = [{"query": docs[3]["text"], "positive_ids": ["d3"]}, {"query": docs[7]["text"], "positive_ids": ["x", "d7"]}]
    client.put("/collections/ranked/documents", json={"documents": [{"id": "x", "text": "unrelated words"}]})
    plain = client.post("/collections/ranked/evaluate", json={"pairs": pairs}).json()
    assert "queries" not in plain
    out = client.post("/collections/ranked/evaluate", json={"pairs": pairs, "per_query": True, "k": 5}).json()
    assert [q["query"] for q in out["queries"]] == [p["query"] for p in pairs]
    first = out["queries"][0]
    assert first["rank"] == 1 and first["reciprocal_rank"] == 1.0 and first["top"] == []  # its own text
    assert out["mrr@10"] == plain["mrr@10"]
    assert query_ranks([["a", "b", "c", "d"], ["a", "b"]], [["c"], ["z"]], k=3) == [
        {"rank": 3, "reciprocal_rank": 1 / 3, "top": ["a", "b"]},
        {"rank": None, "reciprocal_rank": 0.0, "top": ["a", "b"]}]
