"""The OpenAPI document describes strop as it answers: its error shape, its statuses, every field."""

from __future__ import annotations


def test_openapi_describes_errors_statuses_and_every_field(make_client) -> None:
    doc = make_client().get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and "ValidationError" not in schemas  # FastAPI's {"detail"}
    assert set(schemas["ErrorBody"]["properties"]) == {"error"}
    undocumented = [f"{name}.{prop}" for name, s in schemas.items()
                    for prop, p in s.get("properties", {}).items() if not p.get("description")]
    assert not undocumented, undocumented
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            responses = op["responses"]
            errors = {s: r for s, r in responses.items() if s[0] in "45"}
            for status, r in errors.items():
                (media,) = r["content"].values()
                assert media["schema"]["$ref"].endswith("/ErrorBody"), (method, path, status)
            if path.startswith(("/collections", "/jobs", "/v1")):
                assert {"401", "422"} <= set(errors), (method, path, sorted(errors))
            if "{" in path:
                assert "404" in errors, (method, path)
            if method in ("put", "post") and path.startswith("/collections/"):
                assert "413" in errors, (method, path)
    assert set(doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == {"text/plain"}
    ingest = doc["paths"]["/collections/{name}/ingest/code"]["post"]["requestBody"]
    assert ingest["required"] and "application/zip" in ingest["content"]
    assert "409" in doc["paths"]["/collections"]["post"]["responses"]  # a name that exists
    assert "503" in doc["paths"]["/collections/{name}/jobs"]["post"]["responses"]  # no queue
