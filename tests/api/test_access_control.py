# ruff: noqa: F811  (the `inputs` fixture of test_jobs, imported, is named as the tests' parameter)
"""Access control: every id-bearing route of the OpenAPI document hides another tenant's resources (404),
failed authentication is throttled (429 + Retry-After), a revoked key stops at once, per-tenant quotas
refuse with the quota named, and a database that is down answers 503, not 500."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from argd.api.app import create_app
from argd.cli.main import main
from argd.persistence import keys
from argd.persistence.db import get_sessionmaker
from argd.persistence.quotas import set_quotas
from argd.persistence.settings import Settings
from tests.api import payloads
from tests.api.conftest import TenantAccount, stored_files
from tests.api.test_jobs import Inputs, inputs  # noqa: F401  (the fixture)
from tests.api.test_problems import assert_problem

pytestmark = pytest.mark.service

PARAM = re.compile(r"\{(\w+)\}")


def test_every_route_with_an_id_answers_404_to_another_tenant(
    app: FastAPI, client: TestClient, inputs: Inputs, other_tenant: TenantAccount
) -> None:
    job = client.post("/v1/jobs", json=inputs.job()).json()
    ids = {"model_id": inputs.model["id"], "dataset_id": inputs.clean["id"], "job_id": job["id"]}
    walked = []
    with TestClient(app, raise_server_exceptions=False, headers=other_tenant.headers) as other:
        for path, operations in app.openapi()["paths"].items():
            names = PARAM.findall(path)
            if not names:
                continue
            url = PARAM.sub(lambda m: ids[m.group(1)], path)
            for method in operations:
                response = other.request(method.upper(), url)
                assert_problem(response, 404, "not_found")
                walked.append((method, path))
    # The walk reached every id-bearing operation (a new route is walked the day it is added).
    assert len(walked) >= 9, walked
    assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "queued"  # nothing of ours changed


def _throttled_app(app_settings: Settings, limit: int) -> FastAPI:
    return create_app(app_settings.model_copy(update={"auth_failure_limit": limit}))


def test_failed_authentication_is_throttled_with_retry_after(
    app_settings: Settings, tenant: TenantAccount
) -> None:
    with TestClient(_throttled_app(app_settings, 3), raise_server_exceptions=False) as anyone:
        bad = {"Authorization": "Bearer argd_not-a-key"}
        for _ in range(3):
            assert_problem(anyone.get("/v1/jobs", headers=bad), 401, "unauthorized")
        throttled = anyone.get("/v1/jobs", headers=bad)
        body = assert_problem(throttled, 429, "too_many_failed_authentications")
        assert 1 <= int(throttled.headers["retry-after"]) <= 60 and "try again in" in body["detail"]
        # While throttled even a valid key waits: the check comes before any database work.
        assert anyone.get("/v1/jobs", headers=tenant.headers).status_code == 429
        # A missing key is not a guess and says what is missing.
        assert_problem(anyone.get("/v1/jobs"), 401, "unauthorized")


def test_a_valid_key_clears_earlier_typos(app_settings: Settings, tenant: TenantAccount) -> None:
    with TestClient(_throttled_app(app_settings, 2), raise_server_exceptions=False) as anyone:
        bad = {"Authorization": "Bearer argd_typo"}
        for _ in range(3):
            assert anyone.get("/v1/jobs", headers=bad).status_code == 401
            assert anyone.get("/v1/jobs", headers=tenant.headers).status_code == 200


def test_a_revoked_key_stops_at_once(
    client: TestClient, app_settings: Settings, tenant: TenantAccount
) -> None:
    assert client.get("/v1/jobs").status_code == 200
    with get_sessionmaker(app_settings)() as session:
        assert keys.revoke_key(session, tenant.key[:13]) == 1
        session.commit()
    assert_problem(client.get("/v1/jobs"), 401, "unauthorized")


def _quotas(settings: Settings, tenant: TenantAccount, **limits: int | None) -> None:
    with get_sessionmaker(settings)() as session:
        set_quotas(session, tenant.name, limits)
        session.commit()


def test_stored_bytes_quota_refuses_the_upload_and_stores_nothing(
    client: TestClient, app_settings: Settings, tenant: TenantAccount, tmp_path: Path
) -> None:
    x, y = payloads.images(16)
    first = client.post("/v1/datasets", files={"file": ("a.npz", payloads.npz_bytes(x, y))})
    assert first.status_code == 201
    _quotas(app_settings, tenant, max_stored_bytes=first.json()["size_bytes"] + 100)
    before = stored_files(app_settings)
    x2, y2 = payloads.images(16, seed=5)
    refused = client.post("/v1/datasets", files={"file": ("b.npz", payloads.npz_bytes(x2, y2))})
    body = assert_problem(refused, 413, "quota_exceeded")
    assert body["details"]["quota"] == "max_stored_bytes" and "max_stored_bytes" in body["detail"]
    assert stored_files(app_settings) == before and tenant.counts()["datasets"] == 1
    model = client.post(
        "/v1/models",
        files={"file": ("m.safetensors", payloads.safetensors_bytes(payloads.state_dict(), tmp_path))},
        data={"spec": payloads.spec_json()},
    )
    assert_problem(model, 413, "quota_exceeded")


def test_job_quotas_name_the_quota(
    client: TestClient, inputs: Inputs, app_settings: Settings, tenant: Any
) -> None:
    short = {"epochs": 5, "teacher_epochs": 5}
    _quotas(app_settings, tenant, max_job_epochs=12, max_active_jobs=1)
    long_job = client.post("/v1/jobs", json=inputs.job(params={"epochs": 10, "teacher_epochs": 5}))
    body = assert_problem(long_job, 413, "quota_exceeded")
    assert body["details"] == {"quota": "max_job_epochs", "limit": 12, "used": 15}
    assert client.post("/v1/jobs", json=inputs.job(params=short)).status_code == 202
    second = client.post("/v1/jobs", json=inputs.job(params=short))
    assert_problem(second, 429, "quota_exceeded")
    assert second.json()["details"]["quota"] == "max_active_jobs" and int(second.headers["retry-after"]) > 0
    assert tenant.counts()["jobs"] == 1
    _quotas(app_settings, tenant, max_active_jobs=None)  # lifted by the operator: accepted again
    assert client.post("/v1/jobs", json=inputs.job(params=short)).status_code == 202


def test_the_quota_command_sets_and_lifts_limits(
    app_settings: Settings, tenant: TenantAccount, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    for name, value in app_settings.to_env(["database_url", "data_dir"]).items():
        monkeypatch.setenv(name, value)
    assert main(["quota", "--tenant", tenant.name, "--max-active-jobs", "2", "--max-stored-bytes", "9"]) == 0
    assert '"max_active_jobs": 2' in capsys.readouterr().out
    assert main(["quota", "--tenant", tenant.name, "--max-active-jobs", "none"]) == 0
    out = capsys.readouterr().out
    assert '"max_active_jobs": null' in out and '"max_stored_bytes": 9' in out
    assert main(["quota", "--tenant", "no-such-tenant"]) == 2


def test_a_database_that_is_down_answers_503(tmp_path: Path) -> None:
    down = Settings(data_dir=tmp_path, database_url="postgresql+psycopg://postgres@127.0.0.1:9/none")
    with TestClient(create_app(down), raise_server_exceptions=False) as anyone:
        response = anyone.get("/v1/jobs", headers={"Authorization": "Bearer argd_anything"})
        body = assert_problem(response, 503, "database_unavailable")
        assert response.headers["retry-after"] and "Traceback" not in body["detail"]
