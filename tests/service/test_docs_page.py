"""/docs renders with no network: every asset the page references is served by strop itself."""

from __future__ import annotations

import re


def test_docs_page_assets_come_from_the_server(make_client) -> None:
    client = make_client()
    page = client.get("/docs")
    assert page.status_code == 200 and "swagger" in page.text.lower()
    refs = set(re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text))
    refs |= set(re.findall(r"""url: ?["']([^"']+)["']""", page.text))  # the OpenAPI document itself
    assert refs, page.text
    external = [r for r in refs if re.match(r"^(https?:)?//", r)]
    assert not external, f"/docs loads {external} from outside the server"
    for ref in refs:
        r = client.get(ref)
        assert r.status_code == 200 and r.content, (ref, r.status_code)
    assert any(ref.endswith("swagger-ui-bundle.js") for ref in refs)
    assert client.get("/openapi.json").json()["info"]["title"] == "strop"
    assert client.get("/redoc").status_code == 404  # ReDoc would need a CDN: not offered
