"""The committed OpenAPI document is the app's, its operation ids are the stable ones, and the API package
starts without torch."""

from __future__ import annotations

import json
import subprocess
import sys

from argd.api.openapi import OPENAPI_PATH, build_openapi, main, render

EXPECTED_OPERATIONS = {
    ("post", "/v1/models"): "createModel",
    ("get", "/v1/models"): "listModels",
    ("get", "/v1/models/{model_id}"): "getModel",
    ("delete", "/v1/models/{model_id}"): "deleteModel",
    ("post", "/v1/datasets"): "createDataset",
    ("get", "/v1/datasets"): "listDatasets",
    ("get", "/v1/datasets/{dataset_id}"): "getDataset",
    ("delete", "/v1/datasets/{dataset_id}"): "deleteDataset",
    ("post", "/v1/jobs"): "createJob",
    ("get", "/v1/jobs"): "listJobs",
    ("get", "/v1/jobs/{job_id}"): "getJob",
    ("delete", "/v1/jobs/{job_id}"): "deleteJob",
    ("post", "/v1/jobs/{job_id}/cancel"): "cancelJob",
    ("get", "/v1/jobs/{job_id}/model"): "downloadJobModel",
    ("get", "/v1/jobs/{job_id}/report"): "getJobReport",
    ("get", "/v1/jobs/{job_id}/events"): "streamJobEvents",
    ("get", "/v1/architectures"): "listArchitectures",
    ("get", "/v1/presets"): "listPresets",
    ("get", "/v1/webhooks/secret"): "getWebhookSecret",
    ("get", "/healthz"): "getHealth",
    ("get", "/readyz"): "getReadiness",
}


def test_committed_openapi_json_is_up_to_date() -> None:
    committed = OPENAPI_PATH.read_text(encoding="utf-8")
    assert committed == render(build_openapi()), "run: python -m argd.api.openapi --write"
    assert main(["--check"]) == 0


def test_check_fails_on_drift(tmp_path) -> None:
    stale = tmp_path / "openapi.json"
    stale.write_text(OPENAPI_PATH.read_text().replace("createModel", "uploadModel"))
    assert main(["--check", "--path", str(stale)]) == 1


def test_operation_ids_are_stable_and_errors_documented() -> None:
    document = json.loads(OPENAPI_PATH.read_text())
    found = {
        (method, path): operation["operationId"]
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
    }
    assert found == EXPECTED_OPERATIONS
    for (method, path), operation_id in found.items():
        operation = document["paths"][path][method]
        for status, response in operation["responses"].items():
            if status[0] in "45":
                assert list(response["content"]) == ["application/problem+json"], (operation_id, status)
        if path.startswith("/v1/"):
            assert operation["security"] == [{"ApiKey": []}], operation_id
    schemas = document["components"]["schemas"]
    assert "HTTPValidationError" not in schemas
    assert {"code", "detail", "status", "title", "type"} <= set(schemas["ProblemDetails"]["required"])
    # Job parameters are the engine's own schema, unknown keys refused.
    assert schemas["CleanseParams"]["additionalProperties"] is False
    assert "lr" in schemas["CleanseParams"]["properties"]
    multipart = document["paths"]["/v1/models"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert multipart["schema"]["required"] == ["file", "spec"]


def test_api_starts_without_torch() -> None:
    code = (
        "import sys, tempfile\n"
        "from argd.api.app import create_app\n"
        "from argd.persistence.settings import Settings\n"
        "create_app(Settings(data_dir=tempfile.mkdtemp(), database_url='sqlite://')).openapi()\n"
        "print('torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False", result.stderr
