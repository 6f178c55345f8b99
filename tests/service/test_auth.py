"""Bearer API keys with scopes read < write < admin, and the refusal to bind publicly without keys."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from strop.index.settings import Settings

READ = "readkey0123456789ab"
WRITE = "writekey0123456789a"
ADMIN = "adminkey0123456789a"
KEYS = f"{READ}:read,{WRITE}:write,{ADMIN}:admin"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_error(r, status: int, code: str) -> None:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.json() == {"error": {"code": code, "message": r.json()["error"]["message"]}}


@pytest.fixture()
def client(make_client):
    c = make_client(api_keys=KEYS)
    r = c.post("/collections", json={"name": "docs", "modality": "text"}, headers=bearer(ADMIN))
    assert r.status_code == 201, r.text
    r = c.put("/collections/docs/documents", headers=bearer(WRITE),
              json={"documents": [{"id": "a", "text": "alpha"}, {"id": "b", "text": "beta"}]})
    assert r.status_code == 200, r.text
    return c


# (method, path, body, scope it needs, success status)
ENDPOINTS = [
    ("GET", "/collections", None, "read", 200),
    ("GET", "/collections/docs", None, "read", 200),
    ("GET", "/collections/docs/documents/a", None, "read", 200),
    ("POST", "/collections/docs/search", {"query": "alpha", "top_k": 1}, "read", 200),
    ("POST", "/collections/docs/evaluate", {"pairs": [{"query": "alpha", "positive_ids": ["a"]}]}, "read", 200),
    ("POST", "/v1/embeddings", {"model": "docs", "input": "alpha"}, "read", 200),
    ("GET", "/collections/docs/versions", None, "read", 200),
    ("PUT", "/collections/docs/documents", {"documents": [{"id": "c", "text": "gamma"}]}, "write", 200),
    ("POST", "/collections/docs/feedback", {"query": "alpha", "positive_ids": ["a"]}, "write", 202),
    ("POST", "/collections", {"name": "other", "modality": "text"}, "admin", 201),
    ("POST", "/collections/docs/versions/v0001/activate", None, "admin", 200),
]
RANK = {"read": 0, "write": 1, "admin": 2}
KEY_OF = {"read": READ, "write": WRITE, "admin": ADMIN}


@pytest.mark.parametrize("method,path,body,needs,ok", ENDPOINTS, ids=[f"{e[0]} {e[1]}" for e in ENDPOINTS])
def test_scopes(client, method: str, path: str, body, needs: str, ok: int) -> None:
    # no key, a malformed header, a wrong key: 401 with a Bearer challenge
    r = client.request(method, path, json=body)
    assert_error(r, 401, "unauthorized")
    assert r.headers["www-authenticate"] == "Bearer"
    for headers in (bearer("wrongkey0123456789ab"), bearer(READ + "x"), bearer(READ[:-1]),
                    {"Authorization": READ}, {"Authorization": f"Basic {READ}"}, bearer("")):
        r = client.request(method, path, json=body, headers=headers)
        assert_error(r, 401, "unauthorized")
    # keys below the needed scope: 403; at or above: success
    for scope, key in KEY_OF.items():
        r = client.request(method, path, json=body, headers=bearer(key))
        if RANK[scope] < RANK[needs]:
            assert_error(r, 403, "forbidden")
        else:
            assert r.status_code == ok, (scope, r.status_code, r.text)
            if method == "POST" and path == "/collections":  # create once per key: clean up
                assert client.request("DELETE", "/collections/other", headers=bearer(ADMIN)).status_code == 200


def test_delete_needs_admin(client) -> None:
    assert_error(client.delete("/collections/docs/documents/a", headers=bearer(READ)), 403, "forbidden")
    assert client.delete("/collections/docs/documents/a", headers=bearer(WRITE)).status_code == 200
    assert_error(client.delete("/collections/docs", headers=bearer(WRITE)), 403, "forbidden")
    assert_error(client.delete("/collections/docs"), 401, "unauthorized")
    assert client.get("/collections/docs", headers=bearer(READ)).json()["count"] == 1
    assert client.delete("/collections/docs", headers=bearer(ADMIN)).status_code == 200


def test_rejected_writes_change_nothing(client) -> None:
    r = client.put("/collections/docs/documents", headers=bearer(READ),
                   json={"documents": [{"id": "z", "text": "zeta"}]})
    assert r.status_code == 403
    r = client.post("/collections", json={"name": "sneaky", "modality": "text"}, headers=bearer(WRITE))
    assert r.status_code == 403
    assert client.get("/collections/docs", headers=bearer(READ)).json()["count"] == 2
    assert [c["name"] for c in client.get("/collections", headers=bearer(READ)).json()["collections"]] == ["docs"]


def test_probes_are_open_and_metrics_need_a_read_key(client) -> None:
    # load balancers probe without keys; /metrics names every collection, so it takes a read key
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=bearer(READ)).status_code == 200


def test_no_keys_means_open_on_loopback(make_client) -> None:
    c = make_client()
    assert c.post("/collections", json={"name": "docs", "modality": "text"}).status_code == 201
    assert c.post("/collections/docs/search", json={"query": "x"}).status_code == 200


def test_settings_refuse_public_bind_without_keys(tmp_path) -> None:
    for host in ("0.0.0.0", "::", "192.168.1.10", "example.com"):
        with pytest.raises(ValidationError, match="refusing to bind"):
            Settings(host=host, data_dir=tmp_path)
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert Settings(host=host, data_dir=tmp_path).host == host
    s = Settings(host="0.0.0.0", api_keys=KEYS, data_dir=tmp_path)
    assert s.keys() == {READ: "read", WRITE: "write", ADMIN: "admin"}


@pytest.mark.parametrize("keys", ["short:admin", f"{READ}:root", f"{READ}", ":admin", f"{READ}:read,{WRITE}"])
def test_settings_reject_bad_keys(tmp_path, keys: str) -> None:
    with pytest.raises(ValidationError):
        Settings(api_keys=keys, data_dir=tmp_path)


def test_settings_read_environment(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STROP_HOST", "0.0.0.0")
    with pytest.raises(ValidationError):
        Settings(data_dir=tmp_path)
    monkeypatch.setenv("STROP_API_KEYS", f"{ADMIN}:admin")
    assert Settings(data_dir=tmp_path).keys() == {ADMIN: "admin"}
