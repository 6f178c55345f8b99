"""Image collections over HTTP: logo references in, identification out, every bad image a named 4xx.

Real parts: the packaged EfficientNet-Lite0, rapidocr, MiniLM for the text view, FAISS.
"""

from __future__ import annotations

import base64
import io

import pytest
from conftest import LOGO_WORDS, render_logo
from PIL import Image

pytestmark = [pytest.mark.slow]

N = 6


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def view(i: int) -> str:
    """A photographed-looking query: rotated, rescaled, JPEG."""
    img = Image.open(io.BytesIO(render_logo(i))).rotate(7, expand=True, fillcolor="white").resize((190, 130))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=80)
    return b64(buf.getvalue())


@pytest.fixture()
def client(make_client):
    c = make_client()
    r = c.post("/collections", json={"name": "logos", "modality": "image"})
    assert r.status_code == 201, r.text
    assert r.json()["encoder"] == "efficientnet-lite0"
    docs = [{"id": LOGO_WORDS[i], "text": LOGO_WORDS[i], "image": b64(render_logo(i)), "metadata": {"n": i}}
            for i in range(N)]
    r = c.put("/collections/logos/documents", json={"documents": docs})
    assert r.status_code == 200, r.text
    return c


def test_identifies_views_with_both_scores(client) -> None:
    for i in range(N):
        r = client.post("/collections/logos/search", json={"image": view(i), "top_k": 3})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["hits"][0]["id"] == LOGO_WORDS[i]
        assert set(body["hits"][0]["scores"]) == {"visual", "text", "fused", "inliers"}  # verified by default
        assert body["timings"]["verify_ms"] > 0
        assert "match" in body and body["match"]["id"] == LOGO_WORDS[i]
        assert body["hits"][0]["score"] >= body["hits"][1]["score"]
    # a filter applies before the top_k cut
    r = client.post("/collections/logos/search", json={"image": view(0), "top_k": 2, "filter": {"n": 3}})
    assert [h["id"] for h in r.json()["hits"]] == [LOGO_WORDS[3]]


def test_blank_image_is_not_matched(client) -> None:
    """A plain grey square shares nothing with any reference: below the threshold, match is null."""
    buf = io.BytesIO()
    Image.new("RGB", (120, 120), (128, 128, 128)).save(buf, "PNG")
    r = client.post("/collections/logos/search", json={"image": b64(buf.getvalue())})
    assert r.status_code == 200, r.text
    assert r.json()["match"] is None and len(r.json()["hits"]) == N


def _svg(body: str) -> bytes:
    return f'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64">{body}</svg>'.encode()


BAD = {
    "not_an_image": b"hello, this is text" * 10,
    "image_truncated": render_logo(1)[:300],
    "empty_image": b"",
    "unsafe_svg": b'<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
                  b'<svg xmlns="http://www.w3.org/2000/svg"><text>&x;</text></svg>',
    "unsupported_image_format": b"GIF89a" + b"\x00" * 64,
}


@pytest.mark.parametrize("code", sorted(BAD))
def test_bad_images_are_named_4xx_and_lose_nothing(client, code: str) -> None:
    data = BAD[code]
    r = client.put("/collections/logos/documents",
                   json={"documents": [{"id": "ok", "image": b64(render_logo(2))}, {"id": "bad", "image": b64(data)}]})
    assert 400 <= r.status_code < 500 and r.json()["error"]["code"] == code, r.text
    assert "documents[1].image" in r.json()["error"]["message"]
    r = client.post("/collections/logos/search", json={"image": b64(data)})
    assert 400 <= r.status_code < 500 and r.json()["error"]["code"] == code
    assert client.get("/collections/logos").json()["count"] == N


def test_oversized_and_wrong_modality(client) -> None:
    huge = Image.new("RGB", (13000, 10), "white")
    buf = io.BytesIO()
    huge.save(buf, "PNG")
    r = client.post("/collections/logos/search", json={"image": b64(buf.getvalue())})
    assert r.status_code == 413 and r.json()["error"]["code"] in ("image_too_many_pixels", "image_too_large")
    assert client.post("/collections/logos/search", json={"image": "%%%not base64"}).json()["error"]["code"] == "bad_base64"
    assert client.post("/collections/logos/search", json={"query": "acme"}).json()["error"]["code"] == "wrong_modality"
    assert client.post("/collections/logos/search", json={}).json()["error"]["code"] == "missing_image"
    png = b64(render_logo(0))
    for extra in ({"rerank": True}, {"lexical": 0.1}):  # text-collection options
        r = client.post("/collections/logos/search", json={"image": png, **extra})
        assert r.status_code == 422 and r.json()["error"]["code"] == "rerank_unsupported"
    r = client.put("/collections/logos/documents", json={"documents": [{"id": "t", "text": "only text"}]})
    assert r.json()["error"]["code"] == "missing_image"
    r = client.post("/collections/logos/evaluate", json={"pairs": [{"query": "x", "positive_ids": ["Acme"]}]})
    assert r.status_code == 422
    r = client.post("/collections/logos/jobs", json={"train": {"pairs": [{"query": "x", "positive_id": "Acme"}]}})
    assert r.status_code in (422, 503)
    # a text encoder for an image collection (and the reverse) is refused up front
    r = client.post("/collections", json={"name": "bad", "modality": "image", "encoder": "all-MiniLM-L6-v2"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "bad_encoder"
    r = client.post("/collections", json={"name": "bad", "modality": "text", "encoder": "efficientnet-lite0"})
    assert r.status_code == 422
    assert client.get("/collections/logos").json()["count"] == N


def test_svg_reference_and_restart(client, make_client) -> None:
    svg = _svg('<circle cx="32" cy="32" r="28" fill="#d00"/><rect x="20" y="20" width="24" height="24" fill="#fff"/>')
    r = client.put("/collections/logos/documents", json={"documents": [{"id": "svg", "image": b64(svg)}]})
    assert r.status_code == 200, r.text
    before = client.post("/collections/logos/search", json={"image": view(4), "top_k": 4}).json()
    client.__exit__(None, None, None)
    again = make_client()
    after = again.post("/collections/logos/search", json={"image": view(4), "top_k": 4}).json()
    assert [h["id"] for h in after["hits"]] == [h["id"] for h in before["hits"]]
    assert after["version"] == before["version"]
