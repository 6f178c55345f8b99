"""Geometric verification in logo search, over HTTP: local features decide between look-alikes and
for unknown logos; real OpenCV SIFT, the packaged EfficientNet-Lite0, MiniLM, rapidocr and FAISS."""

from __future__ import annotations

import base64
import io
import math

import pytest
from PIL import Image, ImageDraw

pytestmark = [pytest.mark.slow]

# Marks without words (OCR reads nothing, so the visual view and verification decide). "star" and
# "cross" are the look-alikes: the same red disc with a white figure inside, only the figure differs.
GALLERY = [("star", "disc", "red", "star"), ("cross", "disc", "red", "cross"),
           ("tiles", "square", "blue", "grid"), ("peak", "triangle", "green", "bars")]
UNSEEN = ("hex", "hexagon", "orange", "ring")


def _star(cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    return [(cx + (r if k % 2 == 0 else r * 0.42) * math.sin(k * math.pi / 5),
             cy - (r if k % 2 == 0 else r * 0.42) * math.cos(k * math.pi / 5)) for k in range(10)]


def logo(shape: str, colour: str, figure: str) -> Image.Image:
    """A flat mark: a coloured shape with a white figure inside, on white."""
    im = Image.new("RGB", (200, 200), "white")
    d = ImageDraw.Draw(im)
    if shape == "disc":
        d.ellipse((20, 20, 180, 180), fill=colour)
    elif shape == "square":
        d.rectangle((25, 25, 175, 175), fill=colour)
    elif shape == "triangle":
        d.polygon([(20, 175), (100, 20), (180, 175)], fill=colour)
    else:
        d.polygon([(100 + 80 * math.cos(k * math.pi / 3), 100 + 80 * math.sin(k * math.pi / 3)) for k in range(6)],
                  fill=colour)
    if figure == "star":
        d.polygon(_star(100, 104, 62), fill="white")
    elif figure == "cross":
        d.polygon([(85, 45), (115, 45), (115, 85), (155, 85), (155, 115), (115, 115), (115, 155), (85, 155),
                   (85, 115), (45, 115), (45, 85), (85, 85)], fill="white")
    elif figure == "grid":
        for x in (45, 105):
            for y in (45, 105):
                d.rectangle((x, y, x + 45, y + 45), fill="white")
    elif figure == "bars":
        for i, x in enumerate((70, 92, 114)):
            d.rectangle((x, 150 - 25 * (i + 1), x + 14, 160), fill="white")
    else:
        d.ellipse((60, 60, 140, 140), fill="white")
        d.ellipse((80, 80, 120, 120), fill=colour)
    return im


def b64(img: Image.Image, fmt: str = "PNG", **kw: int) -> str:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return base64.b64encode(buf.getvalue()).decode()


def photo(img: Image.Image) -> str:
    """A photographed-looking query: on a grey card, rotated, smaller, JPEG."""
    card = Image.new("RGB", (300, 280), (205, 200, 190))
    card.paste(img, (50, 40))
    return b64(card.rotate(9, fillcolor=(90, 90, 90)).resize((192, 179)), "JPEG", quality=75)


@pytest.fixture()
def client(make_client):
    c = make_client()
    assert c.post("/collections", json={"name": "brands", "modality": "image"}).status_code == 201
    docs = [{"id": i, "text": w, "image": b64(logo(s, col, w))} for i, s, col, w in GALLERY]
    r = c.put("/collections/brands/documents", json={"documents": docs})
    assert r.status_code == 200, r.text
    return c


def hits_by_id(body: dict) -> dict[str, dict]:
    return {h["id"]: h for h in body["hits"]}


def test_verified_match_beats_a_look_alike(client) -> None:
    q = photo(logo("disc", "red", "star"))
    plain = client.post("/collections/brands/search", json={"image": q, "top_k": 4, "verify": False}).json()
    assert "timings" not in plain and set(plain["hits"][0]["scores"]) == {"visual", "text"}
    assert plain["hits"][0]["id"] == "cross"  # the untrained embedding prefers the look-alike
    body = client.post("/collections/brands/search", json={"image": q, "top_k": 4}).json()
    h = hits_by_id(body)
    assert body["hits"][0]["id"] == "star"
    assert h["star"]["scores"]["inliers"] > h["cross"]["scores"]["inliers"]
    # the look-alike's lead or deficit in the embedding is outweighed by the inliers
    assert h["star"]["score"] - h["cross"]["score"] > (h["star"]["scores"]["fused"] - h["cross"]["scores"]["fused"])
    assert body["match"]["id"] == "star"
    assert 0 < body["timings"]["verify_ms"] < 5000


def test_unseen_logo_with_few_inliers_is_unknown(client) -> None:
    known = client.post("/collections/brands/search", json={"image": photo(logo("disc", "red", "star"))}).json()
    body = client.post("/collections/brands/search", json={"image": photo(logo(*UNSEEN[1:])), "top_k": 4}).json()
    most = max(x["scores"]["inliers"] for x in body["hits"])
    assert most < known["hits"][0]["scores"]["inliers"] / 2  # chance matches only
    assert body["match"] is None
    assert all(x["score"] < body["threshold"] for x in body["hits"])


BAD = {"not_an_image": b"hello, this is text" * 10, "empty_image": b"",
       "unsafe_svg": b'<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
                     b'<svg xmlns="http://www.w3.org/2000/svg"><text>&x;</text></svg>'}


@pytest.mark.parametrize("verify", [True, False])
def test_bad_images_answer_their_4xx_with_or_without_verification(client, verify: bool) -> None:
    good = b64(logo("disc", "red", "star"))
    BAD["image_truncated"] = base64.b64decode(good)[:300]
    for code, data in BAD.items():
        r = client.post("/collections/brands/search", json={"image": base64.b64encode(data).decode(), "verify": verify})
        assert 400 <= r.status_code < 500 and r.json()["error"]["code"] == code, r.text
    r = client.post("/collections/brands/search", json={"image": "%%%", "verify": verify})
    assert r.json()["error"]["code"] == "bad_base64"
    r = client.post("/collections/brands/search", json={"image": good, "verify": "yes please"})
    assert r.status_code == 422
    assert client.post("/collections", json={"name": "docs", "modality": "text"}).status_code == 201
    r = client.post("/collections/docs/search", json={"query": "hello", "verify": verify})
    assert r.status_code == 422 and r.json()["error"]["code"] == "verify_unsupported"
