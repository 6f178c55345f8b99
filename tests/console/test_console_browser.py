"""The web console in a real browser: Debian's Chromium driven by Playwright against a live `strop serve`
(uvicorn, the embedded Redis, a worker) that has API keys configured.

One browser and one server for the module; the tests run in order and build on each other (a
collection, then a job on it, then its versions), as a person using the console would.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import free_port, render_logo, serve_env, start_serve, stop_serve

CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium") or "") if p and Path(p).exists()), None)
try:
    from playwright.sync_api import Browser, Page, expect, sync_playwright
except ImportError:  # pragma: no cover - the test extra installs it
    sync_playwright = None

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sync_playwright is None, reason="playwright is not installed (pip install -e '.[test]')"),
    pytest.mark.skipif(CHROMIUM is None, reason="no Chromium at /usr/bin/chromium: apt-get install -y chromium "
                                                "(.ci/run installs it)"),
]

ADMIN = "console-admin-key-0123456789"
TOPICS = ["apples and pears", "compilers and parsers", "rivers and lakes", "guitars and drums",
          "stars and galaxies", "bread and pastry", "trains and rails", "cats and dogs"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_encoder_path: str) -> Iterator[str]:
    root = tmp_path_factory.mktemp("console")
    port = free_port()
    env = serve_env(tiny_encoder_path, STROP_API_KEYS=f"{ADMIN}:admin")
    p = start_serve(root / "data", port, env, root / "serve.log")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_serve(p)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


class Console:
    """One browser tab; every console message of type error and every uncaught exception is kept."""

    def __init__(self, browser: Browser, url: str, width: int = 1280):
        self.url = url
        self.context = browser.new_context(viewport={"width": width, "height": 900})
        self.page: Page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(f"console: {m.text}") if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        self.page.on("dialog", lambda d: d.accept())  # confirmations: the tests confirm
        self.page.set_default_timeout(20_000)

    def open(self, path: str) -> Page:
        self.page.goto(self.url + path)
        expect(self.page.locator("body")).to_have_attribute("data-ready", "true")
        self.check_page()
        return self.page

    def check_page(self) -> None:
        """No script errors so far, and every form control has a label (its own, or aria-label)."""
        unlabelled = self.page.evaluate("""() => [...document.querySelectorAll('input, select, textarea')]
            .filter(c => c.type !== 'hidden' && !(c.labels && c.labels.length) && !c.getAttribute('aria-label'))
            .map(c => c.id || c.name)""")
        assert unlabelled == [], unlabelled
        assert self.errors == [], self.errors


@pytest.fixture(scope="module")
def tab(browser: Browser, server: str) -> Iterator[Console]:
    c = Console(browser, server)
    yield c
    c.context.close()


def api(server: str, method: str, path: str, **kw) -> httpx.Response:
    r = httpx.request(method, server + path, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=120, **kw)
    assert r.status_code < 300, r.text
    return r


def test_the_console_asks_for_the_key_then_lists_collections(tab: Console):
    page = tab.page
    page.goto(tab.url + "/console")
    expect(page.locator("#alert")).to_contain_text("needs an API key")
    assert tab.errors == []  # asked before calling the API: no 401 in the console either
    page.get_by_label("API key").fill(ADMIN)
    page.keyboard.press("Enter")
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    expect(page.locator("#collections tbody")).to_contain_text("No collections yet")
    expect(page.locator("#key-state")).to_contain_text("key in use")
    assert page.evaluate("sessionStorage.getItem('strop.apiKey')") == ADMIN
    tab.check_page()


def test_create_a_collection_and_see_its_documents(tab: Console):
    page = tab.open("/console")
    page.get_by_label("Name").fill("notes")
    page.get_by_label("Modality").select_option("text")
    page.get_by_role("button", name="Create").click()
    row = page.locator("#collections tr[data-name=notes]")
    expect(row).to_contain_text("v0001")
    docs = [{"id": f"{t.split()[0]}-{j}", "text": f"notes about {t}, part {j}", "metadata": {"part": j}}
            for t in TOPICS for j in range(3)]
    api(tab.url, "PUT", "/collections/notes/documents", json={"documents": docs})
    page = tab.open("/console")
    row = page.locator("#collections tr[data-name=notes]")
    expect(row.locator("td").nth(1)).to_have_text("24")  # documents, counted by the store
    expect(row.locator("td").nth(3)).to_have_text("flat")  # the active version's index
    assert "B" in row.locator("td").nth(4).inner_text()  # disk used
    tab.check_page()


def search(page: Page, query: str, **fields: str) -> list[tuple[str, str]]:
    page.get_by_label("Query", exact=True).fill(query)
    for label, value in fields.items():
        page.get_by_label(label).fill(value)
    before = page.locator("#search-meta").inner_text()
    page.get_by_role("button", name="Search", exact=True).click()
    expect(page.locator("#search-meta")).not_to_have_text(before or "-")
    expect(page.locator("#search-meta")).to_contain_text("hits from version")
    return [(li.get_attribute("data-id"), li.locator(".hit-head").inner_text())
            for li in page.locator("#hits > li").all()]


def test_search_shows_the_expected_hit_and_sends_feedback(tab: Console):
    page = tab.open("/console/collections/notes")
    expect(page.locator("#summary")).to_contain_text("24 documents")
    hits = search(page, "notes about rivers and lakes, part 1")
    assert hits[0][0] == "rivers-1", hits  # the same text embeds to the same vector
    hits = search(page, "rivers", **{"Metadata filter": "part=2", "Lexical weight": "1"})
    assert hits and all(h[0].endswith("-2") for h in hits), hits
    assert hits[0][0] == "rivers-2" and "lexical" in hits[0][1]  # score parts shown
    page.get_by_role("button", name="Mark rivers-2 as relevant to the query").click()
    expect(page.locator("#hits li[data-id=rivers-2] .feedback")).to_have_text("Marked relevant")
    tab.check_page()


def test_a_job_is_followed_live_until_it_succeeds(tab: Console):
    page = tab.open("/console/jobs?collection=notes")
    page.evaluate("window.__sameDocument = true")
    pairs = "\n".join(json.dumps({"query": f"notes about {t}", "positive_id": f"{t.split()[0]}-0"}) for t in TOPICS)
    expect(page.get_by_label("Collection", exact=True)).to_have_value("notes")
    page.get_by_label("Training pairs (JSONL)").fill(pairs)
    page.get_by_label("Max steps").fill("3")
    page.get_by_label("Batch size").fill("4")
    page.get_by_label("Learning rate").fill("0.001")
    page.get_by_label("Gate: min. evaluation pairs").fill("1")
    page.get_by_label("Gate: min. MRR@10 change").fill("-1")
    page.get_by_role("button", name="Submit job").click()
    expect(page.locator("#live")).to_be_visible()
    expect(page.locator("#live")).to_have_attribute("data-state", "succeeded", timeout=120_000)
    assert page.evaluate("window.__sameDocument") is True  # followed without reloading the page
    expect(page.locator("#live-version")).to_have_text("v0002")
    expect(page.locator("#live-metrics")).to_contain_text("mrr@10")
    expect(page.locator("#jobs tbody")).to_contain_text("succeeded")
    tab.check_page()


def test_versions_chart_and_rollback_change_search(tab: Console):
    page = tab.open("/console/collections/notes/versions")
    expect(page.locator("#chart")).to_have_attribute("data-points", "2")
    expect(page.locator("#chart canvas")).to_have_count(1)
    expect(page.locator("#versions tr.active")).to_have_attribute("data-id", "v0002")

    page = tab.open("/console/collections/notes")
    trained = search(page, "rivers")
    assert page.locator("#search-meta").get_attribute("data-version") == "v0002"

    page = tab.open("/console/collections/notes/versions")
    page.get_by_role("button", name="Roll back to v0001").click()  # the confirmation is accepted
    expect(page.locator("#versions tr.active")).to_have_attribute("data-id", "v0001")
    expect(page.locator("#alert")).to_contain_text("Now serving v0001")

    page = tab.open("/console/collections/notes")
    base = search(page, "rivers")
    assert page.locator("#search-meta").get_attribute("data-version") == "v0001"
    assert base != trained  # another encoder ranks and scores differently
    tab.check_page()


def test_evaluate_lists_the_worst_queries(tab: Console, tmp_path: Path):
    pairs = tmp_path / "eval.jsonl"
    pairs.write_text("\n".join(json.dumps({"query": f"notes about {t}, part 1", "positive_ids": [f"{t.split()[0]}-1"]})
                               for t in TOPICS[:3]) + "\n" + json.dumps({"query": "zzz", "positive_id": "cats-2"}) + "\n")
    page = tab.open("/console/collections/notes/evaluate")
    page.get_by_label("Pairs (JSONL)").set_input_files(str(pairs))
    page.get_by_role("button", name="Evaluate").click()
    expect(page.locator("#eval-version")).to_contain_text("4 queries")
    expect(page.locator("#worst tbody tr")).to_have_count(4)
    # exact texts rank first; the nonsense query is the worst
    assert page.locator("#worst tbody tr").last.locator("td").nth(2).inner_text() == "1"
    assert page.locator("#worst tbody tr").first.locator("td").first.inner_text() == "zzz"
    mrr = float(page.locator("dd[data-metric='mrr@10']").inner_text())
    assert 0.75 <= mrr <= 1.0
    tab.check_page()


def test_image_search_shows_thumbnails_and_the_verdict(tab: Console, tmp_path: Path):
    api(tab.url, "POST", "/collections", json={"name": "logos", "modality": "image"})
    refs = [{"id": f"brand-{i}", "text": f"Brand {i}", "image": base64.b64encode(render_logo(i)).decode()}
            for i in range(4)]
    api(tab.url, "PUT", "/collections/logos/documents", json={"documents": refs})
    query = tmp_path / "query.png"
    query.write_bytes(render_logo(2))
    page = tab.open("/console/collections/logos")
    expect(page.locator("#query-field")).to_be_hidden()
    extra = tmp_path / "brand-4.png"  # one more reference, added from the console
    extra.write_bytes(render_logo(4))
    page.get_by_text("Add documents", exact=True).first.click()
    page.get_by_label("Reference images (the file name is the id and the text)").set_input_files(str(extra))
    page.get_by_role("button", name="Add documents").click()
    expect(page.locator("#docs-status")).to_have_text("1 document stored and searchable")
    expect(page.locator("#summary")).to_contain_text("5 documents")
    page.get_by_label("Query image (PNG, JPEG, WebP or SVG)").set_input_files(str(query))
    page.get_by_role("button", name="Search", exact=True).click()
    expect(page.locator("#hits > li")).to_have_count(5)
    assert page.locator("#hits > li").first.get_attribute("data-id") == "brand-2"
    thumbs = page.locator("#hits img.thumb")
    expect(thumbs.first).to_have_attribute("src", re.compile(r"^data:image/png;base64,"))
    page.wait_for_function("[...document.querySelectorAll('#hits img.thumb')].every(i => i.complete && i.naturalWidth > 0)")
    expect(page.locator("#verdict")).to_contain_text("threshold")
    expect(page.locator("#verdict .badge")).to_have_text(re.compile("^(match|unknown)$"))
    tab.check_page()


def test_pages_fit_a_phone_screen(browser: Browser, server: str):
    phone = Console(browser, server, width=390)
    try:
        phone.page.goto(server + "/console")
        phone.page.evaluate(f"sessionStorage.setItem('strop.apiKey', {json.dumps(ADMIN)})")
        for path in ("/console", "/console/collections/notes", "/console/collections/notes/versions",
                     "/console/collections/notes/evaluate", "/console/jobs"):
            page = phone.open(path)
            overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            wide = page.evaluate("""() => [...document.querySelectorAll('body *')]
                .filter(e => e.getBoundingClientRect().right > window.innerWidth + 1 && !e.closest('.scroll'))
                .map(e => e.tagName + '#' + e.id + '.' + e.className).slice(0, 8)""")
            assert overflow <= 0, (path, overflow, wide)
        phone.check_page()
    finally:
        phone.context.close()


def test_keyboard_alone_runs_a_search(tab: Console):
    page = tab.open("/console/collections/notes")
    page.get_by_label("Query", exact=True).focus()
    page.keyboard.type("notes about cats and dogs, part 0")
    page.keyboard.press("Enter")
    expect(page.locator("#hits > li").first).to_have_attribute("data-id", "cats-0")
    tab.check_page()


def test_a_running_job_is_cancelled_from_its_panel(tab: Console):
    page = tab.open("/console/jobs?collection=notes")
    pairs = "\n".join(json.dumps({"query": f"notes about {t}", "positive_id": f"{t.split()[0]}-{j}"})
                      for t in TOPICS for j in range(3))
    page.get_by_label("Training pairs (JSONL)").fill(pairs)
    page.get_by_label("Epochs").fill("100")  # hundreds of steps: still running when cancelled
    page.get_by_label("Batch size").fill("2")
    page.get_by_role("button", name="Submit job").click()
    expect(page.locator("#live")).to_have_attribute("data-state", "running", timeout=60_000)
    expect(page.locator("#live-step")).not_to_have_text("–", timeout=60_000)  # progress arrives
    page.get_by_role("button", name="Cancel job").click()  # the confirmation is accepted
    expect(page.locator("#live")).to_have_attribute("data-state", "cancelled", timeout=30_000)
    expect(page.get_by_role("button", name="Cancel job")).to_be_hidden()
    job_id = page.locator("#live-id").inner_text()
    assert api(tab.url, "GET", f"/jobs/{job_id}").json()["state"] == "cancelled"
    tab.check_page()


def test_documents_added_from_the_console_are_searchable(tab: Console):
    page = tab.open("/console/collections/notes")
    count = int(page.locator("#summary").inner_text().split(" documents")[0].split("·")[-1].strip())
    page.get_by_text("Add documents", exact=True).first.click()  # opens the section
    page.get_by_label("Documents (JSONL)").fill(
        json.dumps({"id": "kites-0", "text": "notes about kites and wind", "metadata": {"part": 0}}) + "\n"
        + json.dumps({"id": "kites-1", "text": "notes about kites and strings", "metadata": {"part": 1}}) + "\n")
    page.get_by_role("button", name="Add documents").click()
    expect(page.locator("#docs-status")).to_have_text("2 documents stored and searchable")
    expect(page.locator("#summary")).to_contain_text(f"{count + 2} documents")
    hits = search(page, "notes about kites and strings")
    assert hits[0][0] == "kites-1", hits
    tab.check_page()


def test_an_unknown_collection_is_named_in_the_alert(tab: Console):
    page = tab.page
    page.goto(tab.url + "/console/collections/no-such-thing")
    expect(page.locator("body")).to_have_attribute("data-ready", "error")
    expect(page.locator("#alert")).to_contain_text('collection "no-such-thing" does not exist')
    tab.check_page()


def test_delete_a_collection(tab: Console):
    page = tab.open("/console")
    page.get_by_role("button", name="Delete collection logos").click()  # the confirmation is accepted
    expect(page.locator("#collections tr[data-name=logos]")).to_have_count(0)
    assert httpx.get(tab.url + "/collections/logos", headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 404
    tab.check_page()
