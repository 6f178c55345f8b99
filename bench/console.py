"""The web console: how fast each page answers over a large collection, and the screenshots in docs/.

``python -m bench.console`` (latency): a `strop serve` over a fresh data dir, a text collection of
``--docs`` documents (100,000 by default) ingested through ``PUT /collections/{c}/documents`` in
batches of 1,000, one training job (so the versions page has two versions), then for each page:

- **browser**: Debian's Chromium (Playwright) opens the page with a key and waits until the page
  says it is ready (its data loaded and drawn); ``data-ready-ms`` is ``performance.now()`` at that
  moment, i.e. from the start of navigation: HTML, scripts, every API call and the drawing. Once
  right after a one-document write (so no cached collection size can be reused), once without;
- **API**: the same API calls the page makes, one after another over httpx (server time plus
  loopback), and the HTML shell alone.

Medians and p90 over ``--loads`` loads per page. The encoder is the tiny random test encoder
(64-d): page loads encode nothing, and it keeps the 100,000-document ingest to minutes on 2 cores.

``python -m bench.console --screens docs/img``: a small demo with the packaged MiniLM (the README's
walk-through documents with a trained version, the functions of a few standard-library modules
trained on their docstrings, a logo collection) and a screenshot of every page at 1280 px wide,
plus the search page at 390 px.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench._util import log, machine_line, median, pct, table

KEY = "bench-console-admin-key-0123"
CHROMIUM = "/usr/bin/chromium"


def serve(data_dir: Path, encoder: str | None, port: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STROP_")}
    env.update({"STROP_API_KEYS": f"{KEY}:admin", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
                "HF_HUB_OFFLINE": "1"})
    if encoder:
        env["STROP_DEFAULT_ENCODER"] = encoder
    p = subprocess.Popen([sys.executable, "-m", "strop.service.cli", "serve", "--port", str(port),
                          "--data-dir", str(data_dir)], env=env, stdout=open(data_dir.parent / "serve.log", "a"),
                         stderr=subprocess.STDOUT, start_new_session=True)
    end = time.time() + 120
    while time.time() < end:
        if p.poll() is not None:
            raise SystemExit(f"strop serve exited {p.returncode}; see {data_dir.parent / 'serve.log'}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return p
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit("strop serve did not become ready")


def stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Api:
    def __init__(self, url: str):
        self.http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=600)

    def __call__(self, method: str, path: str, **kw: Any) -> Any:
        r = self.http.request(method, path, **kw)
        if r.status_code >= 300:
            raise SystemExit(f"{method} {path}: {r.status_code} {r.text[:500]}")
        return r.json() if r.headers.get("content-type", "").startswith("application/json") else r.text

    def wait_job(self, job_id: str, timeout: float = 1800) -> dict:
        end = time.time() + timeout
        while time.time() < end:
            job = self("GET", f"/jobs/{job_id}")
            if job["state"] in ("succeeded", "rejected", "failed", "cancelled"):
                return job
            time.sleep(1)
        raise SystemExit(f"job {job_id} did not finish")


WORDS = ("vector index search query encoder corpus document version rollback shard replica queue worker "
         "redis sqlite faiss cosine recall ranking teacher student negative positive gradient batch epoch "
         "latency memory thread process cache token language python module function class").split()


def synthetic_docs(start: int, n: int) -> list[dict]:
    out = []
    for i in range(start, start + n):
        words = [WORDS[(i * 7 + j * 13) % len(WORDS)] for j in range(12)]
        out.append({"id": f"doc-{i:06d}", "text": f"document {i}: " + " ".join(words),
                    "metadata": {"shard": i % 16, "even": i % 2 == 0}})
    return out


def train_spec(pairs: list[dict], steps: int = 3) -> dict:
    return {"train": {"pairs": pairs}, "max_steps": steps, "batch_size": 4, "learning_rate": 1e-3,
            "gate": {"min_delta": -1.0, "min_pairs": 1}}


# -- latency --------------------------------------------------------------------------------
PAGES = {  # page -> (console path, the API calls it makes on load)
    "collections": ("/console", ["/collections", "/collections/{c}/versions"]),
    "search": ("/console/collections/{c}", ["/collections"]),
    "versions": ("/console/collections/{c}/versions", ["/collections/{c}/versions"]),
    "evaluate": ("/console/collections/{c}/evaluate", ["/collections"]),
    "jobs": ("/console/jobs?collection={c}", ["/collections", "/jobs?collection={c}"]),
}


def latency(args: argparse.Namespace) -> None:
    from playwright.sync_api import sync_playwright

    from strop.index.encoder import build_tiny_encoder

    root = Path(tempfile.mkdtemp(prefix="bench-console-"))
    encoder = str(build_tiny_encoder(root / "tiny"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = serve(root / "data", encoder, port)
    try:
        api = Api(url)
        c = "big"
        api("POST", "/collections", json={"name": c})
        t0 = time.time()
        for start in range(0, args.docs, 1000):
            api("PUT", f"/collections/{c}/documents", json={"documents": synthetic_docs(start, min(1000, args.docs - start))})
            if start and start % 20000 == 0:
                log(f"{start} documents in {time.time() - t0:.0f} s")
        log(f"ingested {args.docs} documents in {time.time() - t0:.0f} s")
        pairs = [{"query": d["text"], "positive_id": d["id"]} for d in synthetic_docs(0, 16)]
        t0 = time.time()
        job = api.wait_job(api("POST", f"/collections/{c}/jobs", json=train_spec(pairs))["job_id"])
        log(f"job {job['state']} (version {job['version']}) in {time.time() - t0:.0f} s")
        rows = []
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
            ctx = browser.new_context(viewport={"width": 1280, "height": 900})
            page = ctx.new_page()
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(url + "/console")
            page.evaluate(f"sessionStorage.setItem('strop.apiKey', {json.dumps(KEY)})")
            def load(path: str) -> float:
                page.goto(url + path.format(c=c))
                page.wait_for_selector("body[data-ready=true]", timeout=30_000)
                return float(page.get_attribute("body", "data-ready-ms"))

            for name, (path, calls) in PAGES.items():
                browser_ms, api_ms, shell_ms, written_ms = [], [], [], []
                for i in range(args.loads):  # each right after a one-document write: nothing cached holds
                    api("PUT", f"/collections/{c}/documents", json={"documents": synthetic_docs(args.docs + i, 1)})
                    written_ms.append(load(path))
                for i in range(args.loads + 1):
                    ms = load(path)
                    t = time.perf_counter()
                    api.http.get(path.format(c=c))
                    shell = (time.perf_counter() - t) * 1000
                    t = time.perf_counter()
                    for call in calls:
                        api("GET", call.format(c=c))
                    total = (time.perf_counter() - t) * 1000
                    if i:  # the first load warms caches
                        browser_ms.append(ms)
                        api_ms.append(total)
                        shell_ms.append(shell)
                rows.append([name, f"{median(browser_ms):.0f}", f"{pct(browser_ms, 90):.0f}",
                             f"{median(written_ms):.0f}", f"{pct(written_ms, 90):.0f}",
                             f"{median(api_ms):.1f}", f"{median(shell_ms):.1f}", ", ".join(calls)])
                log(f"{name}: browser {median(browser_ms):.0f} ms ({median(written_ms):.0f} ms after a write), "
                    f"API {median(api_ms):.1f} ms")
            browser.close()
        count = api("GET", f"/collections/{c}")["count"]
        print(f"{machine_line()}; collection of {count:,} documents, {args.loads} loads per page\n")
        print(table(["page", "ready, median ms", "p90", "ready after a write, median ms", "p90",
                     "its API calls, median ms", "HTML shell, median ms", "API calls"], rows))
        if errors:
            print("\nconsole errors:", errors)
    finally:
        stop(proc)


# -- screenshots ----------------------------------------------------------------------------
README_DOCS = [
    {"id": "faiss", "text": "FAISS is a library for efficient similarity search of dense vectors", "metadata": {"lang": "c++"}},
    {"id": "redis", "text": "Redis is an in-memory key-value store", "metadata": {"lang": "c"}},
    {"id": "rq", "text": "RQ is a simple Python library for queueing jobs on Redis", "metadata": {"lang": "python"}},
    {"id": "sqlite", "text": "SQLite is a small, fast, self-contained SQL database engine", "metadata": {"lang": "c"}},
    {"id": "uvicorn", "text": "Uvicorn is an ASGI web server implementation for Python", "metadata": {"lang": "python"}},
    {"id": "numpy", "text": "NumPy is the fundamental package for array computing with Python", "metadata": {"lang": "python"}},
]
README_PAIRS = [{"query": "vector similarity", "positive_id": "faiss"},
                {"query": "background jobs in python", "positive_id": "rq"},
                {"query": "an in-memory cache", "positive_id": "redis"},
                {"query": "an embedded sql database", "positive_id": "sqlite"},
                {"query": "serve an asgi app", "positive_id": "uvicorn"},
                {"query": "arrays and matrices", "positive_id": "numpy"}]


def code_docs() -> list[dict]:
    """Functions of a few stdlib modules, parsed as `strop ingest code` parses a source tree."""
    from strop.index.code.parse import parse_source

    out = []
    for mod in ("textwrap", "shlex", "fnmatch", "glob", "ntpath", "posixpath", "string", "base64"):
        path = Path(__import__(mod).__file__)
        out += [{"id": d.id, "text": d.text, "metadata": d.metadata}
                for d in parse_source(path.read_text(), mod, path.name)]
    return out


def logo(i: int) -> bytes:
    from PIL import Image, ImageDraw, ImageFont

    words = ["Acme", "Zenith", "Orbit", "Quill", "Nova", "Pixel"]
    colours = ["red", "blue", "green", "purple", "orange", "teal"]
    im = Image.new("RGB", (220, 120), "white")
    d = ImageDraw.Draw(im)
    shape = [d.ellipse, d.rectangle, lambda box, fill: d.polygon([(10, 70), (40, 10), (70, 70)], fill=fill)][i % 3]
    shape((10, 10, 70, 70), fill=colours[i])
    d.text((80, 30), words[i], fill=colours[i], font=ImageFont.load_default(size=34))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def screens(args: argparse.Namespace) -> None:
    from playwright.sync_api import sync_playwright

    out = Path(args.screens)
    out.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="bench-console-screens-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = serve(root / "data", None, port)  # the packaged MiniLM: real search results
    try:
        api = Api(url)
        api("POST", "/collections", json={"name": "docs", "modality": "text"})
        api("PUT", "/collections/docs/documents", json={"documents": README_DOCS})
        job = api.wait_job(api("POST", "/collections/docs/jobs", json=train_spec(README_PAIRS, steps=6))["job_id"])
        log(f"docs job {job['state']}")
        api("POST", "/collections", json={"name": "stdlib", "modality": "code"})
        functions = code_docs()
        api("PUT", "/collections/stdlib/documents", json={"documents": functions})
        job = api.wait_job(api("POST", "/collections/stdlib/jobs", json={
            "train": {"source": "docstrings"}, "epochs": 2, "batch_size": 16, "seed": 1})["job_id"])
        log(f"stdlib docstrings job {job['state']}: {job['metrics'].get('gate', {}).get('reason')}")
        api("POST", "/collections", json={"name": "logos", "modality": "image"})
        api("PUT", "/collections/logos/documents", json={"documents": [
            {"id": name.lower(), "text": name, "image": base64.b64encode(logo(i)).decode()}
            for i, name in enumerate(["Acme", "Zenith", "Orbit", "Quill", "Nova", "Pixel"])]})
        query = root / "query.png"
        query.write_bytes(logo(2))
        evalfile = root / "eval.jsonl"  # docstring summaries -> their functions
        evalfile.write_text("\n".join(json.dumps({"query": d["metadata"]["docstring"], "positive_ids": [d["id"]]})
                                      for d in functions if d["metadata"].get("docstring")) + "\n")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])

            def tab(width: int, height: int = 900):
                page = browser.new_context(viewport={"width": width, "height": height}, device_scale_factor=1).new_page()
                page.goto(url + "/console")
                page.evaluate(f"sessionStorage.setItem('strop.apiKey', {json.dumps(KEY)})")
                return page

            def go(page, path: str) -> None:
                page.goto(url + path)
                page.wait_for_selector("body[data-ready=true]")

            page = tab(1280)
            go(page, "/console")
            page.screenshot(path=out / "console-collections.png", full_page=True)
            go(page, "/console/collections/docs")
            page.get_by_label("Query", exact=True).fill("nearest neighbour search")
            page.get_by_role("button", name="Search", exact=True).click()
            page.wait_for_selector("#hits > li")
            page.screenshot(path=out / "console-search.png", full_page=True)
            go(page, "/console/collections/stdlib")
            page.get_by_label("Query", exact=True).fill("remove common leading whitespace")
            page.get_by_role("button", name="Search", exact=True).click()
            page.wait_for_selector("#hits > li pre")
            page.screenshot(path=out / "console-code-search.png", clip={"x": 0, "y": 0, "width": 1280, "height": 900})
            go(page, "/console/collections/logos")
            page.get_by_label("Query image (PNG, JPEG, WebP or SVG)").set_input_files(str(query))
            page.get_by_role("button", name="Search", exact=True).click()
            page.wait_for_function("[...document.querySelectorAll('#hits img.thumb')].length > 0 && "
                                   "[...document.querySelectorAll('#hits img.thumb')].every(i => i.naturalWidth > 0)")
            page.screenshot(path=out / "console-image-search.png", clip={"x": 0, "y": 0, "width": 1280, "height": 900})
            go(page, "/console/collections/stdlib/evaluate")
            page.get_by_label("Pairs (JSONL)").set_input_files(str(evalfile))
            page.get_by_role("button", name="Evaluate").click()
            page.wait_for_selector("#worst tbody tr")
            page.screenshot(path=out / "console-evaluate.png", full_page=True)
            go(page, "/console/jobs?collection=stdlib")
            page.get_by_label("Training pairs from").select_option("docstrings")
            page.get_by_label("Epochs").fill("4")
            page.get_by_label("Batch size").fill("16")
            page.get_by_role("button", name="Submit job").click()
            page.wait_for_selector("#live[data-state=succeeded], #live[data-state=rejected]", timeout=900_000)
            page.screenshot(path=out / "console-jobs.png", clip={"x": 0, "y": 0, "width": 1280, "height": 1000})
            go(page, "/console/collections/stdlib/versions")
            page.screenshot(path=out / "console-versions.png", full_page=True)
            phone = tab(390, 844)
            go(phone, "/console/collections/docs")
            phone.get_by_label("Query", exact=True).fill("background jobs")
            phone.get_by_role("button", name="Search", exact=True).click()
            phone.wait_for_selector("#hits > li")
            phone.screenshot(path=out / "console-search-phone.png")
            browser.close()
        log(f"screenshots in {out}")
    finally:
        stop(proc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, default=100_000, help="documents in the measured collection")
    ap.add_argument("--loads", type=int, default=10, help="measured loads per page (after one warm-up)")
    ap.add_argument("--screens", metavar="DIR", help="take the documentation's screenshots into DIR instead")
    ap.add_argument("--chromium", default=CHROMIUM, help="the Chromium executable (apt-get install chromium)")
    args = ap.parse_args()
    screens(args) if args.screens else latency(args)


if __name__ == "__main__":
    main()
