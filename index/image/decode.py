"""Decode untrusted image payloads (PNG, JPEG, WebP, SVG) into bounded RGB images.

Image collections take base64 images from callers, so every decode is a possible attack or a
plain mistake. This module is the one gate: it recognises the format by its magic bytes (never
by a declared content type or file name), enforces limits *before* any pixel is decoded, forces
a full decode so a truncated file fails here rather than deep inside an encoder, and turns every
failure into an :class:`ImageError` whose ``code`` the service maps to a 4xx and whose message
names the limit and the value.

Limits (``IMAGE_LIMITS``, overridable per call):

* ``max_bytes``  = 8 MiB: the encoded payload (after base64 decoding), any format;
* ``max_pixels`` = 16,000,000: width x height of a raster image, read from the header before
  decoding (PIL's own decompression-bomb guard, 89 MP warn / 179 MP error, stays on as a
  backstop). A PNG or WebP cannot be decoded at reduced scale, so this bounds what one decode
  holds: a 16 MP RGBA decode and its RGB copy need about 110 MB, a 40 MP one 0.45-0.9 GB;
* ``max_side``   = 12,000 px: either side of a raster image (rejects 1 x 40M strips);
* ``svg_side``   = 512 px: SVGs are rendered with cairosvg into a ``svg_side`` square (aspect
  kept by the SVG's viewBox, ``meet``); a logo needs no more, and it bounds the render cost.

SVG safety: cairosvg runs with ``unsafe=False`` (its XML parser forbids entities and external
DTDs) and with a URL fetcher that only allows inline ``data:`` URLs, so an SVG can read no file
and reach no network; on top, any ``<!DOCTYPE`` or ``<!ENTITY`` is refused outright and gzip
(svgz) payloads are not accepted. Transparent images (RGBA, LA, P with transparency, SVG) are
composited onto white: logos are drawn for light backgrounds and the encoders see RGB.
JPEG EXIF orientation is applied, animated images give their first frame.

Error codes: ``empty_image``, ``image_too_large``, ``image_too_many_pixels``,
``image_truncated``, ``not_an_image``, ``unsupported_image_format``, ``unsafe_svg``, ``svg_too_complex``,
``invalid_image``.
"""

from __future__ import annotations

import io
import re
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageOps

MiB = 1 << 20


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 8 * MiB
    max_pixels: int = 16_000_000
    max_side: int = 12_000
    svg_side: int = 512


IMAGE_LIMITS = ImageLimits()
# Decoded images are downscaled to this side at most (JPEG at decode time, by draft mode): the
# visual encoder letterboxes to 160 px and OCR reads logos' text well below it.
MAX_DECODED_SIDE = 1024
# Raster decodes that run at once, process-wide: a 16 MP decode holds about 110 MB while it runs.
_DECODE_SLOTS = threading.BoundedSemaphore(2)
FORMATS = ("png", "jpeg", "webp", "svg")


class ImageError(ValueError):
    """A payload that is not an acceptable image; ``code`` is stable, ``message`` says what to do."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


_OTHER_FORMATS = [
    (b"GIF87a", "GIF"), (b"GIF89a", "GIF"), (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"),
    (b"\x00\x00\x01\x00", "ICO"), (b"%PDF", "PDF"), (b"\x1f\x8b", "gzip (svgz)"), (b"8BPS", "PSD"),
]
_SVG_HEAD = re.compile(rb"^\s*(<\?xml[^>]*>\s*)?(<!--.*?-->\s*)*<svg[\s>]", re.S)
_SVG_FORBIDDEN = re.compile(rb"<!\s*(doctype|entity)", re.I)


def sniff_format(data: bytes) -> str | None:
    """The format named by ``data``'s magic bytes: png, jpeg, webp, svg, or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    head = data[:4096].lstrip(b"\xef\xbb\xbf")
    if _SVG_HEAD.match(head) or (head.lstrip().startswith(b"<") and b"<svg" in head):
        return "svg"
    return None


def decode_image(data: bytes, *, max_bytes: int | None = None, max_pixels: int | None = None,
                 max_side: int | None = None, svg_side: int | None = None) -> Image.Image:
    """Decode ``data`` into an RGB ``PIL.Image`` or raise :class:`ImageError`.

    Safe on hostile input: limits are checked before decoding, the decode is forced in full.
    """
    lim = IMAGE_LIMITS
    max_bytes = lim.max_bytes if max_bytes is None else max_bytes
    max_pixels = lim.max_pixels if max_pixels is None else max_pixels
    max_side = lim.max_side if max_side is None else max_side
    svg_side = lim.svg_side if svg_side is None else svg_side
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ImageError("not_an_image", f"expected image bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise ImageError("empty_image", "the image is empty (0 bytes): send PNG, JPEG, WebP or SVG bytes")
    if len(data) > max_bytes:
        raise ImageError("image_too_large",
                         f"the image is {len(data):,} bytes; the limit is {max_bytes:,} bytes "
                         f"({max_bytes / MiB:g} MiB): send a smaller or more compressed image")
    fmt = sniff_format(data)
    if fmt is None:
        for magic, name in _OTHER_FORMATS:
            if data.startswith(magic):
                raise ImageError("unsupported_image_format",
                                 f"{name} images are not supported: send PNG, JPEG, WebP or SVG")
        raise ImageError("not_an_image",
                         "the bytes are not a PNG, JPEG, WebP or SVG image (unrecognised magic bytes "
                         f"{data[:8]!r})")
    if fmt == "svg":
        return _render_svg(data, svg_side)
    return _decode_raster(data, fmt, max_pixels, max_side)


def _decode_raster(data: bytes, fmt: str, max_pixels: int, max_side: int) -> Image.Image:
    with _DECODE_SLOTS:  # a few big decodes at once, whatever the number of callers
        img = _decode_raster_now(data, fmt, max_pixels, max_side)
        if max(img.size) > MAX_DECODED_SIDE:  # what encoders and OCR need; bounds memory downstream
            img.thumbnail((MAX_DECODED_SIDE, MAX_DECODED_SIDE), Image.Resampling.LANCZOS)
        return img


def _decode_raster_now(data: bytes, fmt: str, max_pixels: int, max_side: int) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=[fmt.upper()])
            w, h = img.size
            _check_size(w, h, max_pixels, max_side)
            if fmt == "jpeg":  # decode at 1/2, 1/4 or 1/8 scale when that still covers the target
                img.draft("RGB", (MAX_DECODED_SIDE, MAX_DECODED_SIDE))
            img.load()
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError("image_too_many_pixels", f"decompression bomb guard: {e}") from None
    except OSError as e:
        msg = str(e)
        if "truncated" in msg.lower() or "broken data stream" in msg.lower():
            raise ImageError("image_truncated",
                             f"the {fmt.upper()} image is truncated or corrupt ({msg}): re-send the whole file") from None
        raise ImageError("invalid_image", f"the {fmt.upper()} image could not be decoded: {msg}") from None
    except (SyntaxError, ValueError, EOFError, Image.UnidentifiedImageError) as e:
        raise ImageError("image_truncated" if isinstance(e, EOFError) else "invalid_image",
                         f"the {fmt.upper()} image could not be decoded: {e}") from None
    if fmt == "jpeg":
        img = ImageOps.exif_transpose(img) or img
    return to_rgb(img)


def _check_size(w: int, h: int, max_pixels: int, max_side: int) -> None:
    if w <= 0 or h <= 0:
        raise ImageError("invalid_image", f"the image has an empty size {w}x{h}")
    if max(w, h) > max_side:
        raise ImageError("image_too_many_pixels",
                         f"the image is {w}x{h}; each side is limited to {max_side:,} px: downscale it")
    if w * h > max_pixels:
        raise ImageError("image_too_many_pixels",
                         f"the image is {w}x{h} = {w * h:,} pixels; the limit is {max_pixels:,}: downscale it")


def to_rgb(img: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """RGB copy of ``img``; transparency is composited onto ``background`` (white)."""
    if img.mode == "RGB":
        return img
    has_alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        out = Image.new("RGB", rgba.size, background)
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        img = img.point(lambda v: v / 256).convert("L")  # 16-bit greyscale -> 8-bit
    return img.convert("RGB")


def _refuse_url(url: str, resource_type: Any = None) -> dict[str, Any]:
    """cairosvg URL fetcher: inline data: URLs only; no file and no network access."""
    if url.startswith("data:"):
        from cairosvg.url import fetch

        return fetch(url, resource_type)
    raise ImageError("unsafe_svg", f"the SVG references an external resource ({url[:80]}): inline it or "
                     "send a raster image")


def _render_svg(data: bytes, side: int) -> Image.Image:
    if _SVG_FORBIDDEN.search(data):
        raise ImageError("unsafe_svg", "SVGs with a DOCTYPE or ENTITY declaration are refused "
                         "(external entities could read files): remove the declaration")
    from strop.index.image.svgrender import renderer

    png = renderer().render(data, side)  # in a child process, within a time budget
    img = Image.open(io.BytesIO(png))
    img.load()
    return to_rgb(img)


def render_svg_png(data: bytes, side: int) -> bytes:
    """Render a (checked) SVG to PNG bytes with cairosvg: no file or network access. Runs in the
    renderer's child process (:mod:`strop.index.image.svgrender`)."""
    from cairosvg.surface import PNGSurface

    try:
        png = PNGSurface.convert(bytestring=data, output_width=side, output_height=side, unsafe=False,
                                 url_fetcher=_refuse_url)
    except ImageError:
        raise
    except Exception as e:  # cairosvg raises many types (ParseError, ValueError, ...) on bad SVG
        text = str(e) or type(e).__name__
        if "entit" in text.lower() or "external" in text.lower():
            raise ImageError("unsafe_svg", f"the SVG was refused by the safe parser: {text}") from None
        raise ImageError("invalid_image", f"the SVG could not be rendered: {text[:200]}") from None
    return png


def check_crops(scales: Sequence[float]) -> tuple[float, ...]:
    """Validated query-crop scales: 1 to 4 values in [0.25, 1], the whole image (1.0) first."""
    out = tuple(float(s) for s in scales)
    if not 1 <= len(out) <= 4 or any(not 0.25 <= s <= 1.0 for s in out) or out[0] != 1.0:
        raise ValueError(f"query crops must be 1-4 scales in [0.25, 1] starting with 1.0, got {list(scales)}")
    return out
