"""The CLI client and the Python client against a live API server and a real worker (Postgres + Redis).

Uses the session's `api_server` and `worker` (tests/fixtures); each test works under its own tenant, so
listings only show its own jobs.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from pathlib import Path

import pytest

from argd.cli.common import EXIT_FAILURE, EXIT_SERVER, EXIT_USAGE
from argd.client import ApiError, ArgdClient, ServerUnreachable, page_items
from argd.core.spec import ModelSpec
from argd.core.weights import load_model
from argd.jobs.status import JobStatus
from tests.cli.conftest import Kit, argd_env, run_argd
from tests.fixtures.server import LiveServer
from tests.fixtures.worker import WorkerProcess

pytestmark = pytest.mark.service

QUICK = ["--epochs", "1", "--teacher-epochs", "1"]


@pytest.fixture
def tenant_key(api_server: LiveServer, worker: WorkerProcess) -> str:
    """A key of a fresh tenant on the live server; the worker is running."""
    return api_server.new_key(f"cli-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def cli_env(api_server: LiveServer, tenant_key: str) -> dict[str, str]:
    """ARGD_URL / ARGD_API_KEY as a pipeline would set them."""
    return argd_env(ARGD_URL=api_server.base_url, ARGD_API_KEY=tenant_key)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_submit_wait_downloads_the_cleansed_model(
    tiny_kit: Kit, cli_env: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "result"
    result = run_argd(
        "submit",
        "--model",
        tiny_kit.model,
        *tiny_kit.spec_flags(),
        *tiny_kit.data_flags(),
        *QUICK,
        "--wait",
        "--download",
        out,
        env=cli_env,
    )
    assert result.returncode == 0, result.stderr
    match = re.search(r"job (\S+): succeeded", result.stdout)
    assert match, result.stdout
    job_id = match.group(1)
    assert "after" in result.stdout and "ASR" in result.stdout  # the metrics table
    assert "\r" not in result.stderr  # no progress bar when stderr is not a terminal

    # The downloaded model is loadable and is the one the report describes.
    model_file, report_file = out / "model.safetensors", out / "report.json"
    load_model(model_file, ModelSpec.model_validate(tiny_kit.spec))
    report = json.loads(report_file.read_text())
    assert report["outputs"]["model"]["sha256"] == _sha256(model_file)
    assert report["job_id"] == job_id
    assert report["params"]["epochs"] == 1 and report["target_label"] == tiny_kit.target

    # status, jobs and download see the same job.
    status = run_argd("status", job_id, "--json", env=cli_env)
    assert status.returncode == 0, status.stderr
    body = json.loads(status.stdout)
    assert body["status"] == "succeeded" and 0.0 <= body["metrics"]["after"]["asr"] <= 1.0
    listing = run_argd("jobs", env=cli_env)
    assert listing.returncode == 0 and job_id in listing.stdout and "succeeded" in listing.stdout
    again = run_argd("download", job_id, "--out", tmp_path / "again", env=cli_env)
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == model_file.read_bytes()


def test_submit_prints_the_id_and_status_wait_follows(
    tiny_kit: Kit, cli_env: dict[str, str], api_server: LiveServer, tenant_key: str
) -> None:
    # Upload once with the Python client, then submit by id (what a pipeline re-running a step does).
    with ArgdClient(api_server.base_url, tenant_key) as client:
        clean_id = client.upload_dataset(tiny_kit.clean)["id"]
    result = run_argd(
        "submit",
        "--model",
        tiny_kit.model,
        *tiny_kit.spec_flags(),
        "--clean-id",
        clean_id,
        *QUICK,
        env=cli_env,
    )
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip()
    assert re.fullmatch(r"[0-9a-f-]{36}", job_id), result.stdout
    follow = run_argd("status", job_id, "--wait", env=cli_env)
    assert follow.returncode == 0, follow.stdout + follow.stderr
    assert f"job {job_id}: succeeded" in follow.stdout


def test_http_errors_are_one_clear_line(tiny_kit: Kit, cli_env: dict[str, str], tmp_path: Path) -> None:
    # A key the server does not know.
    bad_key = {**cli_env, "ARGD_API_KEY": "argd_not-a-real-key"}
    result = run_argd("jobs", env=bad_key)
    assert result.returncode == EXIT_SERVER
    assert _one_line(result.stderr).startswith("argd: error: HTTP 401")

    # A job that is not there (or belongs to another tenant).
    result = run_argd("status", "00000000-0000-0000-0000-000000000000", env=cli_env)
    assert result.returncode == EXIT_SERVER
    assert "HTTP 404" in _one_line(result.stderr)

    # An upload the server refuses: weights that do not fit the declared spec; the message names them.
    result = run_argd(
        "submit",
        "--model",
        tiny_kit.model,
        "--architecture",
        "small-cnn",
        "--num-classes",
        "5",
        "--in-channels",
        "1",
        "--image-size",
        "16",
        "--clean",
        tiny_kit.clean,
        env=cli_env,
    )
    assert result.returncode == EXIT_SERVER
    line = _one_line("\n".join(ln for ln in result.stderr.splitlines() if not ln.startswith("uploading")))
    assert "HTTP 422" in line and "fc." in line

    # Bad input caught before any upload.
    result = run_argd("submit", "--model-id", "m", "--clean-id", "c", "--epochs", "0", env=cli_env)
    assert result.returncode == EXIT_USAGE
    assert "invalid parameters: epochs" in _one_line(result.stderr)


def test_python_client_round_trip(
    tiny_kit: Kit, api_server: LiveServer, tenant_key: str, tmp_path: Path
) -> None:
    seen: list[str] = []
    with ArgdClient(api_server.base_url, tenant_key) as client:
        model = client.upload_model(tiny_kit.model, tiny_kit.spec, name="tiny")
        assert model["spec"]["architecture"] == "small-cnn" and model["name"] == "tiny"
        clean = client.upload_dataset(tiny_kit.clean)
        assert clean["count"] == 48 and clean["shape"] == [1, 16, 16]
        key = f"pipeline-step-{uuid.uuid4().hex}"
        job = client.create_job(
            model["id"], clean["id"], method="finetune", params={"epochs": 1}, idempotency_key=key
        )
        replay = client.create_job(
            model["id"], clean["id"], method="finetune", params={"epochs": 1}, idempotency_key=key
        )
        assert replay["id"] == job["id"]  # a retried pipeline step never starts a second job

        final = client.wait(job["id"], on_progress=lambda j: seen.append(j["status"]), poll_interval=0.2)
        assert final["status"] == "succeeded" and seen[-1] == "succeeded"
        path = client.download_model(job["id"], tmp_path)
        assert path == tmp_path / f"{job['id']}.safetensors" and path.stat().st_size > 0
        assert not list(tmp_path.glob("*.part"))
        report = client.report(job["id"])
        assert report["outputs"]["model"]["sha256"] == _sha256(path)
        typed = client.job(job["id"])  # the public schema: the same job, with typed fields
        assert typed.status is JobStatus.SUCCEEDED and typed.result_sha256 == _sha256(path)
        assert typed.metrics.after is not None and typed.history
        assert job["id"] in [j["id"] for j in page_items(client.list_jobs(limit=5))]
        assert job["id"] in [j["id"] for j in client.iter_jobs(page_size=1)]

        with pytest.raises(ApiError) as missing:
            client.get_job("00000000-0000-0000-0000-000000000000")
        assert missing.value.status == 404 and missing.value.title and missing.value.detail
        with pytest.raises(ApiError) as finished:
            client.cancel(job["id"])
        assert finished.value.status == 409 and "succeeded" in (finished.value.detail or "")

    with pytest.raises(ServerUnreachable), ArgdClient("http://127.0.0.1:9", tenant_key, timeout=2) as dead:
        dead.get_job(job["id"])


def test_failed_job_exits_non_zero_with_its_error(
    tiny_kit: Kit, cli_env: dict[str, str], tmp_path: Path
) -> None:
    # Two node weights for a three-level network: accepted as parameters, refused by the engine at run time.
    params = tmp_path / "params.json"
    params.write_text(json.dumps({"beta": [1.0, 2.0], "epochs": 1, "teacher_epochs": 1}))
    result = run_argd(
        "submit", "--model", tiny_kit.model, *tiny_kit.spec_flags(), "--clean", tiny_kit.clean,
        "--params", params, "--wait", "--download", tmp_path / "never", env=cli_env,
    )  # fmt: skip
    assert result.returncode == EXIT_FAILURE, result.stdout + result.stderr
    match = re.search(r"job (\S+): failed", result.stdout)
    assert match, result.stdout
    assert "beta has 2 node weights" in result.stderr
    assert not (tmp_path / "never").exists()
    # Its model cannot be downloaded: the server says why.
    download = run_argd("download", match.group(1), "--out", tmp_path / "dl", env=cli_env)
    assert download.returncode == EXIT_SERVER
    assert "HTTP 409" in _one_line(download.stderr)
