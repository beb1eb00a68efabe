"""Job creation, reading, listing, cancellation and deletion over HTTP; tenant isolation on every resource.

These run in-process against a queue no worker consumes, so created jobs stay `queued`; the live flow with a
worker is in test_live.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from argd.api.app import create_app
from argd.core.params import CleanseParams
from argd.persistence.db import get_sessionmaker
from argd.persistence.models import Job
from argd.persistence.settings import Settings
from tests.api import payloads
from tests.api.conftest import TenantAccount
from tests.api.test_problems import assert_problem

pytestmark = pytest.mark.service


@dataclass
class Inputs:
    model: dict[str, Any]
    clean: dict[str, Any]
    poisoned: dict[str, Any]

    def job(self, **changes: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"model_id": self.model["id"], "clean_dataset_id": self.clean["id"]}
        body.update(changes)
        return body


def upload(client: TestClient, path: str, data: bytes, filename: str, **form: str) -> dict[str, Any]:
    response = client.post(path, files={"file": (filename, data)}, data=form or None)
    assert response.status_code == 201, response.text
    return response.json()


@pytest.fixture
def inputs(client: TestClient, tmp_path: Path) -> Inputs:
    model = upload(
        client,
        "/v1/models",
        payloads.safetensors_bytes(payloads.state_dict(), tmp_path),
        "m.safetensors",
        spec=payloads.spec_json(),
    )
    x, y = payloads.images(16)
    clean = upload(client, "/v1/datasets", payloads.npz_bytes(x, y), "clean.npz")
    px, py = payloads.images(8, seed=9)
    poisoned = upload(client, "/v1/datasets", payloads.npz_bytes(px, py), "poisoned.npz")
    return Inputs(model, clean, poisoned)


def set_status(settings: Settings, job_id: str, status: str) -> None:
    """Move a job as a worker would have (the in-process tests have no worker).

    A running job also gets a heartbeat an hour ahead: the session worker's recovery pass shares this
    database, and would otherwise end a running job that never beat as lost.
    """
    values: dict[str, Any] = {"status": status}
    if status == "running":
        values["heartbeat_at"] = datetime.now(UTC) + timedelta(hours=1)
    with get_sessionmaker(settings)() as session:
        session.execute(update(Job).where(Job.id == job_id).values(**values))
        session.commit()


def test_create_job_answers_202_with_location_and_defaults(client: TestClient, inputs: Inputs) -> None:
    response = client.post("/v1/jobs", json=inputs.job())
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued" and job["method"] == "argd"
    assert job["params"] == CleanseParams().model_dump(mode="json")
    assert job["progress"] == {"epoch": None, "epochs": 10, "fraction": 0.0, "eta_s": None}
    assert job["metrics"] == {"before": None, "teacher": None, "after": None, "der": None, "fidelity": None}
    assert job["history"] == [] and job["error"] is None
    assert client.get(f"/v1/jobs/{job['id']}").json() == job


def test_method_and_params(client: TestClient, inputs: Inputs) -> None:
    job = client.post("/v1/jobs", json=inputs.job(method="nad", params={"epochs": 2, "lr": 0.05})).json()
    assert job["method"] == job["params"]["method"] == "nad"
    assert job["params"]["epochs"] == 2 and job["params"]["lr"] == 0.05
    assert job["params"]["w_edge"] == CleanseParams().w_edge  # unset ones keep their defaults
    job = client.post("/v1/jobs", json=inputs.job(params={"method": "finetune"})).json()
    assert job["method"] == "finetune"
    response = client.post("/v1/jobs", json=inputs.job(method="argd", params={"method": "nad"}))
    assert "params.method" in assert_problem(response, 422, "validation_error")["detail"]
    response = client.post("/v1/jobs", json=inputs.job(params={"epochs": 0}))
    assert_problem(response, 422, "validation_error")
    response = client.post("/v1/jobs", json=inputs.job(method="magic"))
    assert_problem(response, 422, "validation_error")
    response = client.post("/v1/jobs", json=inputs.job(colour="blue"))
    assert_problem(response, 422, "validation_error")
    for method in ("fst", "ft-sam"):
        job = client.post("/v1/jobs", json=inputs.job(method=method)).json()
        assert job["method"] == method and job["params"]["teacher"] == CleanseParams().teacher
    job = client.post("/v1/jobs", json=inputs.job(params={"teacher": "sam"})).json()
    assert job["params"]["teacher"] == "sam"
    response = client.post("/v1/jobs", json=inputs.job(params={"teacher": "random"}))
    assert "teacher" in assert_problem(response, 422, "validation_error")["detail"]
    response = client.post("/v1/jobs", json=inputs.job(params={"teacher": "uploaded"}))
    assert "needs a teacher model" in assert_problem(response, 422, "validation_error")["detail"]


def test_poisoned_set_needs_target_label_in_range(client: TestClient, inputs: Inputs) -> None:
    response = client.post("/v1/jobs", json=inputs.job(poisoned_dataset_id=inputs.poisoned["id"]))
    assert "target_label" in assert_problem(response, 422, "validation_error")["detail"]
    response = client.post("/v1/jobs", json=inputs.job(target_label=1))
    assert_problem(response, 422, "validation_error")
    response = client.post(
        "/v1/jobs", json=inputs.job(poisoned_dataset_id=inputs.poisoned["id"], target_label=4)
    )
    assert "num_classes=4" in assert_problem(response, 422)["detail"]
    response = client.post(
        "/v1/jobs",
        json=inputs.job(
            poisoned_dataset_id=inputs.poisoned["id"], target_label=0, test_dataset_id=inputs.clean["id"]
        ),
    )
    assert response.status_code == 202, response.text
    job = response.json()
    assert (job["poisoned_dataset_id"], job["target_label"]) == (inputs.poisoned["id"], 0)


def test_datasets_must_fit_the_model(client: TestClient, inputs: Inputs) -> None:
    x, y = payloads.images(8, channels=3)
    rgb = upload(client, "/v1/datasets", payloads.npz_bytes(x, y), "rgb.npz")
    x, y = payloads.images(8, size=20)
    larger = upload(client, "/v1/datasets", payloads.npz_bytes(x, y), "20px.npz")
    x, y = payloads.images(8, classes=6)
    six = upload(client, "/v1/datasets", payloads.npz_bytes(x, y), "six.npz")
    cases = [
        ({"clean_dataset_id": rgb["id"]}, "3-channel"),
        ({"test_dataset_id": larger["id"]}, "20x20"),
        ({"poisoned_dataset_id": six["id"], "target_label": 0}, "labels [4, 5]"),
    ]
    for changes, words in cases:
        body = assert_problem(client.post("/v1/jobs", json=inputs.job(**changes)), 422, "dataset_mismatch")
        field = next(iter(changes))
        assert body["detail"].startswith(field) and words in body["detail"], body["detail"]


def test_unknown_references_are_404_naming_the_field(client: TestClient, inputs: Inputs) -> None:
    for field in ("model_id", "clean_dataset_id", "test_dataset_id", "teacher_model_id"):
        body = assert_problem(
            client.post("/v1/jobs", json=inputs.job(**{field: "missing"})), 404, "not_found"
        )
        assert body["detail"].startswith(f"{field}:")


def test_teacher_must_share_the_model_geometry(client: TestClient, inputs: Inputs, tmp_path: Path) -> None:
    other_spec = payloads.SPEC.model_copy(update={"num_classes": 5})
    teacher = upload(
        client,
        "/v1/models",
        payloads.safetensors_bytes(payloads.state_dict(other_spec), tmp_path),
        "t.safetensors",
        spec=other_spec.model_dump_json(),
    )
    response = client.post("/v1/jobs", json=inputs.job(teacher_model_id=teacher["id"]))
    assert "num_classes" in assert_problem(response, 422, "teacher_mismatch")["detail"]
    response = client.post("/v1/jobs", json=inputs.job(teacher_model_id=inputs.model["id"]))
    assert response.status_code == 202 and response.json()["teacher_model_id"] == inputs.model["id"]
    assert response.json()["params"]["teacher"] == "uploaded"  # an uploaded teacher is the teacher
    # Bad combinations: a teacher recipe beside an uploaded teacher, or a method that has no teacher.
    for params, message in (
        ({"teacher": "fst"}, "set teacher to 'uploaded'"),
        ({"method": "fst"}, "no teacher"),
    ):
        response = client.post(
            "/v1/jobs", json=inputs.job(teacher_model_id=inputs.model["id"], params=params)
        )
        assert message in assert_problem(response, 422, "validation_error")["detail"]


def test_webhook_url_is_checked(client: TestClient, inputs: Inputs) -> None:
    for url in (
        "http://example.com/hook",
        "https://10.0.0.8/hook",
        "ftp://example.com",
        "https://intranet/x",
    ):
        body = assert_problem(
            client.post("/v1/jobs", json=inputs.job(webhook_url=url)), 422, "invalid_webhook_url"
        )
        assert body["detail"].startswith("webhook_url:")
    response = client.post("/v1/jobs", json=inputs.job(webhook_url="https://hooks.example.com/argd"))
    assert response.status_code == 202 and response.json()["webhook_url"] == "https://hooks.example.com/argd"


def test_idempotency_key_replays_the_same_job(
    client: TestClient, inputs: Inputs, tenant: TenantAccount
) -> None:
    headers = {"Idempotency-Key": "nightly-2024-05-01"}
    first = client.post("/v1/jobs", json=inputs.job(params={"epochs": 3}), headers=headers)
    assert first.status_code == 202
    again = client.post("/v1/jobs", json=inputs.job(params={"epochs": 3}), headers=headers)
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert again.headers["location"] == first.headers["location"]
    # The same meaning spelled differently (a default made explicit) is the same request.
    explicit = client.post("/v1/jobs", json=inputs.job(method="argd", params={"epochs": 3}), headers=headers)
    assert explicit.status_code == 200 and explicit.json()["id"] == first.json()["id"]
    different = client.post("/v1/jobs", json=inputs.job(params={"epochs": 4}), headers=headers)
    body = assert_problem(different, 422, "idempotency_key_reused")
    assert body["details"]["job_id"] == first.json()["id"]
    assert tenant.counts()["jobs"] == 1
    other = client.post("/v1/jobs", json=inputs.job(params={"epochs": 3}), headers={"Idempotency-Key": "x2"})
    assert other.status_code == 202 and other.json()["id"] != first.json()["id"]
    assert_problem(client.post("/v1/jobs", json=inputs.job(), headers={"Idempotency-Key": "k" * 300}), 400)


def test_list_jobs_paginates_and_filters(client: TestClient, inputs: Inputs, app_settings: Settings) -> None:
    ids = [client.post("/v1/jobs", json=inputs.job()).json()["id"] for _ in range(5)]
    set_status(app_settings, ids[1], "failed")
    seen: list[str] = []
    cursor = None
    while True:
        page = client.get("/v1/jobs", params={"limit": 2, **({"cursor": cursor} if cursor else {})}).json()
        assert len(page["items"]) <= 2 and all("history" not in item for item in page["items"])
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == ids[::-1]
    failed = client.get("/v1/jobs", params={"status": "failed"}).json()["items"]
    assert [item["id"] for item in failed] == [ids[1]]
    queued = client.get("/v1/jobs", params={"status": "queued"}).json()["items"]
    assert len(queued) == 4


def test_cancel_queued_job_and_delete_rules(
    client: TestClient, inputs: Inputs, app_settings: Settings
) -> None:
    job = client.post("/v1/jobs", json=inputs.job()).json()
    # Queued: nothing to download yet, cannot be deleted, and its inputs cannot be deleted either.
    assert_problem(client.get(f"/v1/jobs/{job['id']}/model"), 409, "job_not_succeeded")
    assert_problem(client.get(f"/v1/jobs/{job['id']}/report"), 409, "job_not_succeeded")
    assert_problem(client.delete(f"/v1/jobs/{job['id']}"), 409, "job_active")
    body = assert_problem(client.delete(f"/v1/models/{inputs.model['id']}"), 409, "in_use")
    assert body["details"]["jobs"] == [job["id"]]
    assert_problem(client.delete(f"/v1/datasets/{inputs.clean['id']}"), 409, "in_use")

    response = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "canceled" and response.json()["finished_at"]
    assert_problem(client.post(f"/v1/jobs/{job['id']}/cancel"), 409, "job_finished")

    # Finished: the inputs are free again, and the job can go.
    assert client.delete(f"/v1/jobs/{job['id']}").status_code == 204
    assert_problem(client.get(f"/v1/jobs/{job['id']}"), 404, "not_found")
    assert client.delete(f"/v1/datasets/{inputs.clean['id']}").status_code == 204
    assert client.delete(f"/v1/models/{inputs.model['id']}").status_code == 204


def test_cancel_running_job_sets_the_flag(client: TestClient, inputs: Inputs, app_settings: Settings) -> None:
    job = client.post("/v1/jobs", json=inputs.job()).json()
    set_status(app_settings, job["id"], "running")
    response = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "running" and response.json()["cancel_requested"] is True
    assert_problem(client.delete(f"/v1/jobs/{job['id']}"), 409, "job_active")


def test_other_tenants_see_404_everywhere(
    app: Any, client: TestClient, inputs: Inputs, other_tenant: TenantAccount, tmp_path: Path
) -> None:
    job = client.post("/v1/jobs", json=inputs.job()).json()
    with TestClient(app, raise_server_exceptions=False, headers=other_tenant.headers) as other:
        for path in (
            f"/v1/models/{inputs.model['id']}",
            f"/v1/datasets/{inputs.clean['id']}",
            f"/v1/jobs/{job['id']}",
            f"/v1/jobs/{job['id']}/model",
            f"/v1/jobs/{job['id']}/report",
        ):
            assert_problem(other.get(path), 404, "not_found")
        for path in (
            f"/v1/models/{inputs.model['id']}",
            f"/v1/datasets/{inputs.clean['id']}",
            f"/v1/jobs/{job['id']}",
        ):
            assert_problem(other.delete(path), 404, "not_found")
        assert_problem(other.post(f"/v1/jobs/{job['id']}/cancel"), 404, "not_found")
        # Their listings are empty, and they cannot build a job on these inputs.
        for path in ("/v1/models", "/v1/datasets", "/v1/jobs"):
            assert other.get(path).json()["items"] == []
        assert_problem(other.post("/v1/jobs", json=inputs.job()), 404, "not_found")
        own = upload(
            other,
            "/v1/models",
            payloads.safetensors_bytes(payloads.state_dict(), tmp_path),
            "m.safetensors",
            spec=payloads.spec_json(),
        )
        body = assert_problem(
            other.post("/v1/jobs", json={"model_id": own["id"], "clean_dataset_id": inputs.clean["id"]}), 404
        )
        assert body["detail"].startswith("clean_dataset_id:")
    # Nothing of theirs changed ours.
    assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "queued"
    assert client.get(f"/v1/models/{inputs.model['id']}").status_code == 200


def test_unreachable_queue_is_503_and_leaves_no_job(
    app_settings: Settings, inputs: Inputs, tenant: TenantAccount
) -> None:
    """The row is committed before enqueueing; when the broker refuses, the job is withdrawn again."""
    broken = app_settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    with TestClient(create_app(broken), raise_server_exceptions=False, headers=tenant.headers) as client:
        response = client.post("/v1/jobs", json=inputs.job(), headers={"Idempotency-Key": "down"})
        assert_problem(response, 503, "queue_unavailable")
        assert tenant.counts()["jobs"] == 0
        assert client.get("/v1/jobs").json()["items"] == []
