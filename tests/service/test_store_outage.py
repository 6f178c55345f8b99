"""PostgreSQL going away under a running API (a TCP proxy in front of the real server, cut and restored):
searches keep answering from the loaded version, everything that needs the store answers 503, and
the service recovers when the database comes back."""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from fastapi.testclient import TestClient

from strop.index.settings import Settings
from strop.service.app import create_app


class Proxy:
    """Forwards a local port to the database; ``cut()`` closes every connection and refuses new ones."""

    def __init__(self, target: tuple[str, int], port: int = 0):
        self.target = target
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", port))
        self.server.listen(64)
        self.port = self.server.getsockname()[1]
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        try:
            self.server.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(): close() alone would not
        except OSError:
            pass
        self.server.close()
        for c in self.conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()


def test_searches_answer_through_a_store_outage(tmp_path: Path, tiny_encoder_path: str, pg_url: str) -> None:
    parts = urlsplit(pg_url)
    proxy = Proxy((parts.hostname or "127.0.0.1", parts.port or 5432))
    via_proxy = urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}"))
    settings = Settings(data_dir=tmp_path / "data", default_encoder=tiny_encoder_path, precision="fp32",
                        poll_interval_s=0.2, store_url=via_proxy)
    with TestClient(create_app(settings)) as c:
        assert c.post("/collections", json={"name": "notes"}).status_code == 201
        docs = [{"id": f"d{i}", "text": f"note {i} about {['rivers', 'stars', 'bread'][i % 3]}"} for i in range(30)]
        assert c.put("/collections/notes/documents", json={"documents": docs}).status_code == 200
        before = c.post("/collections/notes/search", json={"query": "rivers", "top_k": 5}).json()
        assert "degraded" not in before

        proxy.cut()
        during = c.post("/collections/notes/search", json={"query": "rivers", "top_k": 5})
        assert during.status_code == 200, during.text
        body = during.json()
        assert body["degraded"] == "store_unavailable"
        assert [h["id"] for h in body["hits"]] == [h["id"] for h in before["hits"]]
        assert all(h.get("text") is None for h in body["hits"])
        r = c.get("/collections/notes/documents/d1")
        assert r.status_code == 503 and r.json()["error"]["code"] == "store_unavailable", r.text
        r = c.put("/collections/notes/documents", json={"documents": [{"id": "new", "text": "x"}]})
        assert r.status_code == 503, r.text

        restored = Proxy(proxy.target, proxy.port)
        try:
            after = c.post("/collections/notes/search", json={"query": "rivers", "top_k": 5}).json()
            for _ in range(20):  # the pool reconnects on its own
                if "degraded" not in after:
                    break
                after = c.post("/collections/notes/search", json={"query": "rivers", "top_k": 5}).json()
            assert "degraded" not in after and after["hits"][0]["text"]
            assert c.get("/collections/notes/documents/d1").status_code == 200
        finally:
            restored.cut()
