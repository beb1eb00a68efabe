"""Errors are RFC 9457 problem documents everywhere; missing or bad keys answer 401; the probes work."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from argd.api.app import create_app
from argd.persistence.settings import Settings

pytestmark = pytest.mark.service


def assert_problem(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """The response is a problem+json document of this status (and code), without internals."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    body = response.json()
    assert body["status"] == status
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    assert body["type"] == f"urn:argd:problem:{body['code']}"
    if code is not None:
        assert body["code"] == code, body
    assert "Traceback" not in response.text and 'File "' not in response.text
    return body


def test_missing_key_is_401_with_challenge(anonymous: TestClient) -> None:
    response = anonymous.get("/v1/models")
    body = assert_problem(response, 401, "unauthorized")
    assert response.headers["www-authenticate"] == 'Bearer realm="argd"'
    assert "Bearer" in body["detail"]


def test_unknown_and_malformed_keys_are_401(anonymous: TestClient) -> None:
    for header in ("Bearer argd_not-a-real-key", "Bearer nonsense", "Basic dXNlcjpwYXNz"):
        response = anonymous.get("/v1/jobs", headers={"Authorization": header})
        assert_problem(response, 401, "unauthorized")
        assert response.headers["www-authenticate"].startswith('Bearer realm="argd"')


def test_every_v1_route_needs_a_key(anonymous: TestClient) -> None:
    some_id = "00000000-0000-0000-0000-000000000000"
    calls = [
        ("GET", "/v1/models"),
        ("POST", "/v1/models"),
        ("GET", f"/v1/models/{some_id}"),
        ("DELETE", f"/v1/models/{some_id}"),
        ("GET", "/v1/datasets"),
        ("POST", "/v1/datasets"),
        ("GET", f"/v1/datasets/{some_id}"),
        ("DELETE", f"/v1/datasets/{some_id}"),
        ("GET", "/v1/jobs"),
        ("POST", "/v1/jobs"),
        ("GET", f"/v1/jobs/{some_id}"),
        ("DELETE", f"/v1/jobs/{some_id}"),
        ("POST", f"/v1/jobs/{some_id}/cancel"),
        ("GET", f"/v1/jobs/{some_id}/model"),
        ("GET", f"/v1/jobs/{some_id}/report"),
    ]
    for method, path in calls:
        assert_problem(anonymous.request(method, path), 401, "unauthorized")


def test_unknown_route_and_method_are_problems(client: TestClient) -> None:
    body = assert_problem(client.get("/v1/nothing-here"), 404, "not_found")
    assert "/v1/nothing-here" in body["detail"]
    response = client.put("/v1/models")
    assert_problem(response, 405, "method_not_allowed")
    assert "POST" in response.headers["allow"]


def test_unknown_ids_are_404(client: TestClient) -> None:
    for path in ("/v1/models/nope", "/v1/datasets/nope", "/v1/jobs/nope", "/v1/jobs/" + "x" * 500):
        body = assert_problem(client.get(path), 404, "not_found")
        assert body["instance"] == path


def test_body_validation_errors_list_fields(client: TestClient) -> None:
    response = client.post("/v1/jobs", content=b"{not json", headers={"content-type": "application/json"})
    assert_problem(response, 422, "validation_error")
    response = client.post("/v1/jobs", json={"model_id": "m", "clean_dataset_id": "d", "params": {"lrr": 1}})
    body = assert_problem(response, 422, "validation_error")
    assert any(error["loc"][-1] == "lrr" for error in body["errors"]), body
    assert "params.lrr" in body["detail"]
    response = client.get("/v1/jobs", params={"limit": 0, "status": "sleeping"})
    body = assert_problem(response, 422, "validation_error")
    assert {tuple(error["loc"]) for error in body["errors"]} == {("query", "limit"), ("query", "status")}


def test_unexpected_exception_is_a_500_problem_without_internals(app_settings: Settings) -> None:
    app = create_app(app_settings)

    def explode() -> None:
        raise RuntimeError("secret internal state /etc/passwd")

    app.add_api_route("/explode", explode)
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/explode")
    body = assert_problem(response, 500, "internal")
    assert "secret" not in response.text and "RuntimeError" not in response.text
    assert body["detail"] == "The server failed to process the request."


def test_healthz_and_readyz(anonymous: TestClient) -> None:
    assert anonymous.get("/healthz").json()["status"] == "ok"
    response = anonymous.get("/readyz")
    assert response.status_code == 200, response.text
    assert response.json()["checks"] == {"database": "ok", "broker": "ok", "artifact_store": "ok"}


def test_readyz_is_503_when_the_broker_or_database_is_down(app_settings: Settings) -> None:
    broken = app_settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    with TestClient(create_app(broken), raise_server_exceptions=False) as client:
        body = assert_problem(client.get("/readyz"), 503, "not_ready")
        assert body["checks"] == {"database": "ok", "broker": "unavailable", "artifact_store": "ok"}
        assert client.get("/healthz").status_code == 200
    broken = app_settings.model_copy(
        update={
            "database_url": "postgresql+psycopg://nobody@127.0.0.1:1/none",
            "broker_url": "redis://127.0.0.1:1",
        }
    )
    with TestClient(create_app(broken), raise_server_exceptions=False) as client:
        body = assert_problem(client.get("/readyz"), 503, "not_ready")
        assert body["checks"] == {"database": "unavailable", "broker": "unavailable", "artifact_store": "ok"}


def test_json_bodies_are_capped(client: TestClient) -> None:
    """Non-upload routes read their body whole, so it is capped (declared or streamed) at 1 MiB."""
    big = b'{"model_id": "' + b"m" * (2 << 20) + b'"}'
    response = client.post("/v1/jobs", content=big, headers={"content-type": "application/json"})
    assert_problem(response, 413, "payload_too_large")

    def chunks():
        yield b'{"model_id": "'
        for _ in range(3):
            yield b"m" * (512 << 10)
        yield b'"}'

    response = client.post("/v1/jobs", content=chunks(), headers={"content-type": "application/json"})
    assert_problem(response, 413, "payload_too_large")
    response = client.post("/v1/jobs", json={"model_id": "m" * 1000, "clean_dataset_id": "d"})
    assert_problem(response, 404, "not_found")  # a small body goes through to the route
