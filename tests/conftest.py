"""Shared fixtures: a tiny locally built encoder (speed), the packaged MiniLM (quality), apps over real parts."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_encoder_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 2-layer, 64-d random BERT sentence encoder with the MiniLM tokenizer, built once per run."""
    from strop.index.encoder import build_tiny_encoder

    return str(build_tiny_encoder(tmp_path_factory.mktemp("tiny") / "encoder"))


@pytest.fixture()
def data_dir(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "data"
    d.mkdir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture()
def make_client(data_dir: Path, tiny_encoder_path: str):
    """Build a TestClient (real HTTP through the ASGI app, lifespan included) over ``data_dir``."""
    from fastapi.testclient import TestClient

    from strop.index.settings import Settings
    from strop.service.app import create_app

    clients: list[TestClient] = []

    def make(**overrides) -> TestClient:
        kwargs = {"data_dir": data_dir, "default_encoder": tiny_encoder_path, "precision": "fp32",
                  "poll_interval_s": 0.2, **overrides}
        settings = Settings(**kwargs)
        client = TestClient(create_app(settings))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for c in clients:
        try:
            c.__exit__(None, None, None)
        except Exception:
            pass


LOGO_WORDS = ["Acme", "Zenith", "Orbit", "Quill", "Nova", "Pixel", "Delta", "Ember", "Fjord", "Gamut"]
LOGO_COLOURS = ["red", "blue", "green", "purple", "orange", "black", "teal", "brown", "navy", "olive"]


def render_logo(i: int, fmt: str = "PNG") -> bytes:
    """A small distinct logo: a coloured mark (circle, square or triangle) and a word."""
    import io

    from PIL import Image, ImageDraw, ImageFont

    im = Image.new("RGB", (220, 120), "white")
    d = ImageDraw.Draw(im)
    colour = LOGO_COLOURS[i % len(LOGO_COLOURS)]
    if i % 3 == 0:
        d.ellipse((10, 10, 70, 70), fill=colour)
    elif i % 3 == 1:
        d.rectangle((10, 10, 70, 70), fill=colour)
    else:
        d.polygon([(10, 70), (40, 10), (70, 70)], fill=colour)
    d.text((80, 30), LOGO_WORDS[i % len(LOGO_WORDS)], fill=colour, font=ImageFont.load_default(size=34))
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()
