"""The command line's MLflow flags: `argd submit --mlflow-*` sends the block (a server without a tracking
URI refuses it in one clear line), and `show_job` prints a job's warnings and its MLflow run."""

from __future__ import annotations

import uuid

import pytest

from argd.cli.client_cmds import show_job
from argd.cli.common import EXIT_SERVER
from tests.cli.conftest import argd_env, run_argd
from tests.fixtures.server import LiveServer


@pytest.mark.service
def test_submit_sends_the_mlflow_block(api_server: LiveServer) -> None:
    env = argd_env(
        ARGD_URL=api_server.base_url, ARGD_API_KEY=api_server.new_key(f"cli-{uuid.uuid4().hex[:8]}")
    )
    result = run_argd(
        "submit",
        "--model-id",
        "m",
        "--clean-id",
        "c",
        "--mlflow-experiment",
        "e",
        "--mlflow-register",
        "toy",
        env=env,
    )
    assert result.returncode == EXIT_SERVER, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "HTTP 422" in lines[0] and "ARGD_MLFLOW_TRACKING_URI" in lines[0], lines


def test_show_job_prints_warnings_and_the_run(capsys: pytest.CaptureFixture[str]) -> None:
    job = {
        "id": "j1",
        "status": "succeeded",
        "metrics": {},
        "warnings": [{"code": "mlflow_export_failed", "message": "The MLflow export to http://x failed"}],
        "mlflow": {"experiment": "e", "run_id": "r123", "model_version": "4"},
    }
    show_job(job, as_json=False)
    out, err = capsys.readouterr()
    assert "warning mlflow_export_failed: The MLflow export to http://x failed" in err
    assert "MLflow run r123 in experiment e, model version 4" in out
