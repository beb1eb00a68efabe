"""MLflow export: a job with an `mlflow` block, created through the API and run by the worker's runner,
shows up on a real `mlflow server` (run, parameters, per-epoch metrics with steps, artifacts, tags, a
registered version), read back through MLflow's own client; a dead tracking server leaves the job
succeeded with a warning; bad blocks, and blocks on a deployment without a server, are clear 422s.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from argd.api.app import create_app
from argd.devserver import free_port
from argd.persistence.db import session_scope
from argd.persistence.models import Tenant
from argd.persistence.settings import Settings
from argd.worker.runner import run_job_attempt
from tests.api.test_problems import assert_problem
from tests.fixtures.mlflow_server import MlflowServer
from tests.fixtures.server import make_api_key
from tests.worker.helpers import Uploaded, upload_inputs

pytestmark = pytest.mark.service

PARAMS = {"epochs": 2, "teacher_epochs": 1, "batch_size": 16, "eval_batch_size": 64, "seed": 5}


def _client_for(settings: Settings, inputs: Uploaded) -> TestClient:
    with session_scope(settings) as session:
        tenant = session.get(Tenant, inputs.tenant_id)
        assert tenant is not None
        name = tenant.name
    key = make_api_key(settings, name)
    return TestClient(
        create_app(settings), raise_server_exceptions=False, headers={"Authorization": f"Bearer {key}"}
    )


@pytest.fixture
def tracked(app_settings: Settings, mlflow_server: MlflowServer) -> Settings:
    return app_settings.model_copy(update={"mlflow_tracking_uri": mlflow_server.url, "mlflow_timeout_s": 20})


def _run(client: TestClient, settings: Settings, inputs: Uploaded, mlflow: dict[str, Any]) -> dict[str, Any]:
    """Create the job over HTTP (it waits in an unconsumed queue), run its attempt, return GET's answer."""
    body = {
        "model_id": inputs.model_id,
        "clean_dataset_id": inputs.clean_id,
        "test_dataset_id": inputs.test_id,
    }
    response = client.post("/v1/jobs", json={**body, "params": PARAMS, "mlflow": mlflow})
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    assert response.json()["mlflow"]["experiment"] == mlflow["experiment"]
    assert run_job_attempt(job_id, settings) == "succeeded"
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded", job
    return dict(job)


def test_job_is_exported_with_metrics_artifacts_tags_and_a_version(
    tracked: Settings, mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    from mlflow.tracking import MlflowClient

    inputs = upload_inputs(tracked, tmp_path, images=64)
    mlflow = {
        "experiment": "argd-tests",
        "run_name": "cleanse-1",
        "registered_model": "toy",
    }
    with _client_for(tracked, inputs) as client:
        job = _run(client, tracked, inputs, mlflow)
        report = client.get(f"/v1/jobs/{job['id']}/report").json()
    assert job["warnings"] == [], job["warnings"]
    run_id, version = job["mlflow"]["run_id"], job["mlflow"]["model_version"]
    assert run_id and version == "1"

    reader = MlflowClient(tracking_uri=mlflow_server.url, registry_uri=mlflow_server.url)
    run = reader.get_run(run_id)
    assert run.info.run_name == "cleanse-1" and run.info.status == "FINISHED"
    assert reader.get_experiment(run.info.experiment_id).name == "argd-tests"
    # Every effective parameter, as the job answers it.
    for key, value in job["params"].items():
        assert run.data.params[key] == (
            value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        )
    # Tags that trace the run to its inputs and outputs.
    tags = run.data.tags
    assert tags["argd.job_id"] == job["id"] and tags["argd.output.sha256"] == job["result_sha256"]
    assert tags["argd.input.model.sha256"] == report["inputs"]["model"]["sha256"]
    assert tags["argd.input.clean.sha256"] == report["inputs"]["clean"]["sha256"]
    # The per-epoch losses with their epochs as steps, and the results.
    distill = [entry for entry in job["history"] if entry["phase"] == "distill"]
    loss_name = sorted(distill[0]["losses"])[0]
    history = reader.get_metric_history(run_id, f"distill/{loss_name}")
    assert sorted((m.step, m.value) for m in history) == [
        (entry["epoch"], pytest.approx(entry["losses"][loss_name])) for entry in distill
    ]
    assert [m.step for m in reader.get_metric_history(run_id, "distill/seconds")] == [1, 2]
    for phase in ("before", "teacher", "after"):
        assert run.data.metrics[f"{phase}_acc"] == pytest.approx(job["metrics"][phase]["acc"])
    # The report and the cleansed weights, byte for byte.
    assert {a.path for a in reader.list_artifacts(run_id)} == {"report.json", "model"}
    downloaded = Path(reader.download_artifacts(run_id, "report.json", str(tmp_path)))
    assert json.loads(downloaded.read_text())["job_id"] == job["id"]
    weights = Path(reader.download_artifacts(run_id, "model/cleansed.safetensors", str(tmp_path)))
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == job["result_sha256"]
    # The registered version points at this run.
    registered = reader.get_model_version("toy", version)
    assert registered.run_id == run_id and registered.tags["argd.job_id"] == job["id"]


def test_a_dead_tracking_server_leaves_the_job_succeeded_with_a_warning(
    app_settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dead = app_settings.model_copy(
        update={"mlflow_tracking_uri": f"http://user:secret@127.0.0.1:{free_port()}", "mlflow_timeout_s": 2}
    )
    inputs = upload_inputs(dead, tmp_path, images=32)
    with _client_for(dead, inputs) as client:
        job = _run(client, dead, inputs, {"experiment": "argd-tests"})
    assert job["result_sha256"] and job["metrics"]["after"]["acc"] is not None
    assert [w["code"] for w in job["warnings"]] == ["mlflow_export_failed"]
    message = job["warnings"][0]["message"]
    assert "127.0.0.1" in message and "secret" not in message and "succeeded" in message
    assert job["mlflow"]["run_id"] is None
    assert "MLflow export" in caplog.text and "secret" not in caplog.text  # nor in the worker's log


@pytest.fixture
def untracked_client(app_settings: Settings, tmp_path: Path) -> Iterator[tuple[TestClient, Uploaded]]:
    inputs = upload_inputs(app_settings, tmp_path, images=16)
    with _client_for(app_settings, inputs) as client:
        yield client, inputs


@pytest.mark.parametrize(
    ("mlflow", "named"),
    [
        ({"registered_model": ""}, "registered_model"),
        ({"registered_model": "../x"}, "registered_model"),
        ({"experiment": "bad\nname"}, "experiment"),
        ({"run_name": "x" * 251}, "run_name"),
        ({"experiment": "e", "tracking_uri": "http://elsewhere"}, "tracking_uri"),
    ],
)
def test_bad_mlflow_blocks_are_422_naming_the_field(
    tracked: Settings, tmp_path: Path, mlflow: dict[str, Any], named: str
) -> None:
    inputs = upload_inputs(tracked, tmp_path, images=16)
    with _client_for(tracked, inputs) as client:
        body = {"model_id": inputs.model_id, "clean_dataset_id": inputs.clean_id, "mlflow": mlflow}
        response = client.post("/v1/jobs", json=body)
    problem = assert_problem(response, 422)
    assert named in response.text and "mlflow" in response.text, problem


def test_mlflow_on_a_deployment_without_a_server_is_422(
    untracked_client: tuple[TestClient, Uploaded],
) -> None:
    client, inputs = untracked_client
    body = {"model_id": inputs.model_id, "clean_dataset_id": inputs.clean_id, "mlflow": {"experiment": "e"}}
    problem = assert_problem(client.post("/v1/jobs", json=body), 422, "mlflow_not_configured")
    assert "ARGD_MLFLOW_TRACKING_URI" in problem["detail"]


def test_a_worker_without_the_tracking_uri_warns_instead_of_writing_locally(
    tracked: Settings, app_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # where MLflow's default local store would appear
    inputs = upload_inputs(tracked, tmp_path, images=32)
    with _client_for(tracked, inputs) as client:  # the API has the URI; the worker below does not
        body = {
            "model_id": inputs.model_id,
            "clean_dataset_id": inputs.clean_id,
            "test_dataset_id": inputs.test_id,
        }
        job_id = client.post("/v1/jobs", json={**body, "params": PARAMS, "mlflow": {}}).json()["id"]
        assert run_job_attempt(job_id, app_settings) == "succeeded"
        job = client.get(f"/v1/jobs/{job_id}").json()
    assert [w["code"] for w in job["warnings"]] == ["mlflow_export_failed"]
    assert "ARGD_MLFLOW_TRACKING_URI" in job["warnings"][0]["message"]
    assert not (tmp_path / "mlruns").exists()
