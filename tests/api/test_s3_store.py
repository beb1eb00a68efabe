"""The API and a job on the S3 store (moto's server over HTTP): uploads land in the bucket under their
sha256, the cleansed model downloads streamed or through a presigned redirect, deleting a job, a model or a
dataset removes its objects, `/readyz` names a broken store's cause, and a job whose store is unreachable is
queued again (up to max_attempts) and then fails with `storage_unavailable`, at once when the bucket is gone.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from argd.api.app import create_app
from argd.client import ArgdClient
from argd.devserver import free_port
from argd.persistence.db import session_scope
from argd.persistence.settings import Settings
from argd.worker.runner import run_job_attempt
from tests.api import payloads
from tests.api.conftest import TenantAccount
from tests.api.test_jobs import upload
from tests.api.test_problems import assert_problem
from tests.fixtures.s3 import S3Server, s3_configured
from tests.worker.helpers import read_job

pytestmark = pytest.mark.service

TINY = {"epochs": 1, "teacher_epochs": 1, "batch_size": 8, "eval_batch_size": 16, "seed": 1}


@pytest.fixture
def settings(app_settings: Settings, s3_server: S3Server, tmp_path: Path) -> Settings:
    """The API's settings on the S3 store, with a data directory of its own (only scratch goes there)."""
    prefix = f"api-{uuid.uuid4().hex[:8]}"
    return s3_configured(app_settings, s3_server, prefix, data_dir=tmp_path / "api-host")


@pytest.fixture
def client(settings: Settings, tenant: TenantAccount) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False, headers=tenant.headers) as client:
        yield client


def _seed() -> int:
    """Bytes no other test stores: artifact rows are shared by content, so a twin would keep the object."""
    return uuid.uuid4().int % 1_000_000


def _key(settings: Settings, sha: str) -> str:
    prefix = settings.artifact_url.split("/", 3)[3]
    return f"{prefix}/sha256/{sha[:2]}/{sha[2:4]}/{sha}"


def _queued_job(client: TestClient, tmp_path: Path) -> tuple[dict, dict, dict]:
    """A fresh model and clean dataset uploaded, and a tiny job on them created (not run yet)."""
    model = upload(
        client,
        "/v1/models",
        payloads.safetensors_bytes(payloads.state_dict(seed=_seed()), tmp_path),
        "m.safetensors",
        spec=payloads.spec_json(),
    )
    x, y = payloads.images(32, seed=_seed())
    clean = upload(client, "/v1/datasets", payloads.npz_bytes(x, y), "clean.npz")
    job = client.post(
        "/v1/jobs", json={"model_id": model["id"], "clean_dataset_id": clean["id"], "params": TINY}
    ).json()
    return model, clean, job


def _succeeded_job(client: TestClient, settings: Settings, tmp_path: Path) -> tuple[dict, dict, dict]:
    model, clean, job = _queued_job(client, tmp_path)
    assert run_job_attempt(job["id"], settings) == "succeeded"
    return model, clean, client.get(f"/v1/jobs/{job['id']}").json()


def test_uploads_results_and_deletion_live_in_the_bucket(
    client: TestClient, settings: Settings, s3_server: S3Server, tmp_path: Path
) -> None:
    model, clean, job = _succeeded_job(client, settings, tmp_path)
    keys = set(s3_server.keys(_key(settings, "0" * 64).split("/sha256/")[0]))
    assert {_key(settings, model["sha256"]), _key(settings, clean["sha256"])} <= keys
    assert not list(settings.artifacts_dir.glob("sha256/**/*")), "an artifact was written to local disk"
    with session_scope(settings) as session:
        row = read_job(session, job["id"])
        result_sha, report_sha = row.result_model_sha256, row.report_sha256
    assert (
        result_sha
        and report_sha
        and _key(settings, result_sha) in keys
        and _key(settings, report_sha) in keys
    )

    streamed = client.get(f"/v1/jobs/{job['id']}/model")
    assert streamed.status_code == 200 and streamed.headers["etag"] == f'"{result_sha}"'
    assert int(streamed.headers["content-length"]) == len(streamed.content)
    obj = s3_server.client().get_object(Bucket=s3_server.bucket, Key=_key(settings, result_sha))
    assert streamed.content == obj["Body"].read()
    assert client.get(f"/v1/jobs/{job['id']}/report").json()["job_id"] == job["id"]

    presigning = settings.model_copy(update={"s3_presign_downloads": True})
    with TestClient(create_app(presigning), headers=client.headers) as other:
        redirect = other.get(f"/v1/jobs/{job['id']}/model", follow_redirects=False)
    assert redirect.status_code == 307, redirect.text
    location = redirect.headers["location"]
    assert location.startswith(settings.s3_endpoint_url) and "Expires=" in location
    assert httpx.get(location, timeout=10).content == streamed.content
    # The Python client (and so `argd download`) follows the redirect, without sending its key to S3.
    with TestClient(create_app(presigning)) as raw:
        sdk = ArgdClient(
            "http://testserver", client.headers["authorization"].split()[1], transport=raw._transport
        )
        saved = sdk.download_model(job["id"], tmp_path / "downloaded.safetensors")
    assert saved.read_bytes() == streamed.content

    assert client.delete(f"/v1/jobs/{job['id']}").status_code == 204
    assert client.delete(f"/v1/models/{model['id']}").status_code == 204
    assert client.delete(f"/v1/datasets/{clean['id']}").status_code == 204
    left = set(s3_server.keys(_key(settings, "0" * 64).split("/sha256/")[0]))
    for sha in (model["sha256"], clean["sha256"], result_sha, report_sha):
        assert _key(settings, sha) not in left, f"{sha} was not deleted from the bucket"


def test_readyz_names_the_cause_of_a_broken_store(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["checks"]["artifact_store"] == "ok"
    broken = {
        "the bucket 'argd-missing-bucket' does not exist": {"artifact_url": "s3://argd-missing-bucket/x"},
        "cannot reach the S3 endpoint": {
            "s3_endpoint_url": f"http://127.0.0.1:{free_port()}",
            "s3_max_attempts": 1,
        },
    }
    for cause, update in broken.items():
        with TestClient(
            create_app(settings.model_copy(update=update)), raise_server_exceptions=False
        ) as client:
            body = assert_problem(client.get("/readyz"), 503, "not_ready")
        assert cause in body["detail"] and "artifact_store" in body["detail"], body
        assert body["checks"]["database"] == "ok" and cause in body["checks"]["artifact_store"]
        assert "secret" not in body["detail"].lower()


def test_a_job_whose_store_is_down_fails_with_storage_unavailable(
    client: TestClient, settings: Settings, tmp_path: Path
) -> None:
    model, clean, job = _queued_job(client, tmp_path)
    x, y = payloads.images(32, seed=_seed())
    down = settings.model_copy(
        update={
            "s3_endpoint_url": f"http://127.0.0.1:{free_port()}",
            "s3_max_attempts": 2,
            "cache_max_bytes": 0,
        }
    )
    # An endpoint that does not answer may come back: the job goes back to the queue, up to max_attempts.
    for attempt in range(1, settings.max_attempts):
        assert run_job_attempt(job["id"], down) == "retry"
        again = client.get(f"/v1/jobs/{job['id']}").json()
        assert (again["status"], again["attempts"], again["error"]) == ("queued", attempt, None), again
    assert run_job_attempt(job["id"], down) == "failed"
    error = client.get(f"/v1/jobs/{job['id']}").json()["error"]
    assert error["code"] == "storage_unavailable" and "artifact store" in error["message"]

    # A missing bucket will not fix itself: the job fails at once.
    second = client.post(
        "/v1/jobs", json={"model_id": model["id"], "clean_dataset_id": clean["id"], "params": TINY}
    ).json()
    no_bucket = settings.model_copy(update={"artifact_url": "s3://argd-gone-bucket/x", "cache_max_bytes": 0})
    assert run_job_attempt(second["id"], no_bucket) == "failed"
    failed = client.get(f"/v1/jobs/{second['id']}").json()
    assert failed["attempts"] == 1 and failed["error"]["code"] == "storage_unavailable"
    # The API on a dead store answers a clear 503 rather than a 500.
    with TestClient(create_app(down), raise_server_exceptions=False, headers=client.headers) as dead:
        assert_problem(dead.get(f"/v1/jobs/{job['id']}/model"), 409, "job_not_succeeded")
        response = dead.post("/v1/datasets", files={"file": ("d.npz", payloads.npz_bytes(x, y))})
        assert_problem(response, 503, "storage_unavailable")
