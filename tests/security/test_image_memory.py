"""Big images at the edge of the limits cost bounded memory, however many arrive at once."""

from __future__ import annotations

import base64
import io
import re
import threading
from pathlib import Path

import httpx
from conftest import free_port, render_logo, serve_env, start_serve, stop_serve
from PIL import Image, ImageDraw

N = 6  # max-size images searched at once


def _hwm_mib(pid: int) -> float:
    """The process's peak resident memory so far (VmHWM)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024


def _big_png() -> bytes:
    """A 16-megapixel PNG (the pixel limit) that still fits the 8 MiB payload limit."""
    im = Image.new("RGB", (4000, 4000), "white")
    d = ImageDraw.Draw(im)
    for i in range(0, 4000, 50):
        d.line((i, 0, 4000 - i, 4000), fill=(i % 255, 40, 90), width=3)
    buf = io.BytesIO()
    im.save(buf, "PNG", optimize=True)
    assert len(buf.getvalue()) < 8 << 20
    return buf.getvalue()


def test_concurrent_max_size_images_are_decoded_a_few_at_a_time(tmp_path: Path, tiny_encoder_path: str) -> None:
    port = free_port()
    p = start_serve(tmp_path / "data", port, serve_env(tiny_encoder_path), tmp_path / "serve.log")
    url = f"http://127.0.0.1:{port}"
    try:
        assert httpx.post(url + "/collections", json={"name": "logos", "modality": "image"}, timeout=120).status_code == 201
        refs = [{"id": f"b{i}", "text": f"Brand {i}", "image": base64.b64encode(render_logo(i)).decode()}
                for i in range(3)]
        assert httpx.put(url + "/collections/logos/documents", json={"documents": refs}, timeout=300).status_code == 200
        small = base64.b64encode(render_logo(1)).decode()
        assert httpx.post(url + "/collections/logos/search", json={"image": small}, timeout=120).status_code == 200
        warm = _hwm_mib(p.pid)  # models loaded, one search done
        big = base64.b64encode(_big_png()).decode()
        answers: list[int] = []

        def search() -> None:
            r = httpx.post(url + "/collections/logos/search", json={"image": big, "top_k": 3}, timeout=300)
            answers.append(r.status_code)

        threads = [threading.Thread(target=search) for _ in range(N)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        assert answers == [200] * N
        grown = _hwm_mib(p.pid) - warm
        # each request holds its body, its decoded image (downscaled to 1,024 px) and its encode; the
        # decodes themselves run two at a time. 300 MiB per hostile request is the budget.
        assert grown < 300 * N and grown < 1024, f"peak RSS grew {grown:.0f} MiB for {N} concurrent 16 MP images"
        assert httpx.get(url + "/healthz", timeout=10).status_code == 200
    finally:
        stop_serve(p)
