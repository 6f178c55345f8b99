"""Hostile images cost bounded time and memory: SVG renders have a time budget, big rasters are
decoded downscaled and a few at a time."""

from __future__ import annotations

import io
import time

import pytest
from PIL import Image

from strop.index.image.decode import MAX_DECODED_SIDE, ImageError, decode_image

PLAIN = b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"><circle cx="32" cy="32" r="20"/></svg>'


def fan_out_svg(levels: int = 9, width: int = 10) -> bytes:
    """Each level uses the one below ``width`` times: width ** levels shapes in a few kilobytes."""
    defs = ['<g id="l0"><rect width="1" height="1"/></g>']
    for i in range(1, levels + 1):
        defs.append(f'<g id="l{i}">' + f'<use xlink:href="#l{i - 1}"/>' * width + "</g>")
    return ('<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" width="64" '
            f'height="64"><defs>{"".join(defs)}</defs><use xlink:href="#l{levels}"/></svg>').encode()


def test_an_svg_that_renders_forever_is_stopped_and_the_next_one_renders() -> None:
    bomb = fan_out_svg()
    assert len(bomb) < 20_000
    t0 = time.monotonic()
    with pytest.raises(ImageError) as err:
        decode_image(bomb)
    assert err.value.code == "svg_too_complex" and time.monotonic() - t0 < 30
    img = decode_image(PLAIN)  # a fresh renderer takes the next SVG
    assert img.mode == "RGB" and img.size == (512, 512)


def test_svg_render_errors_still_carry_their_codes() -> None:
    with pytest.raises(ImageError) as err:
        decode_image(b'<svg xmlns="http://www.w3.org/2000/svg"><image href="file:///etc/passwd"/></svg>')
    assert err.value.code == "unsafe_svg"
    with pytest.raises(ImageError) as err:
        decode_image(b"<svg xmlns='http://www.w3.org/2000/svg'><rect width='1'")
    assert err.value.code == "invalid_image"


def test_big_rasters_are_decoded_downscaled() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (4800, 3200), "red").save(buf, "JPEG", quality=60)
    t0 = time.process_time()
    img = decode_image(buf.getvalue())
    assert max(img.size) <= MAX_DECODED_SIDE and img.size[0] / img.size[1] == pytest.approx(1.5, rel=0.01)
    assert time.process_time() - t0 < 2.0
    buf = io.BytesIO()
    Image.new("RGB", (5000, 100), "blue").save(buf, "PNG")
    w, h = decode_image(buf.getvalue()).size
    assert w == MAX_DECODED_SIDE and abs(h - 100 * MAX_DECODED_SIDE / 5000) <= 1
