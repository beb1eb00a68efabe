"""Export a finished job to MLflow: parameters, per-epoch metrics with steps, the results, the report and
the cleansed weights as artifacts, tags that trace it to its inputs, and optionally a registered version.

It runs in the worker after the results are stored and before the job is marked succeeded, so the job's
answer already carries the run id or the warning. A failing tracking server never fails the cleanse:
every error becomes a `mlflow_export_failed` warning on the job. Only MLflow's REST client is used
(`mlflow-skinny`, the `argd[mlflow]` extra), imported when a job asks for an export.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from argd.jobs.schemas import MlflowOptions
from argd.persistence import jobs
from argd.persistence.db import session_scope
from argd.persistence.settings import Settings

log = logging.getLogger(__name__)

WARNING_CODE = "mlflow_export_failed"
PHASES = ("before", "teacher", "after")
BATCH = 100  # params per log_batch call (MLflow's limit; metrics allow 1,000)


@dataclass(frozen=True)
class FinishedJob:
    """What the export needs of a job whose results are stored."""

    job_id: str
    tenant_id: str
    options: dict[str, Any]
    params: dict[str, Any]
    target_label: int | None
    inputs: dict[str, str | None]  # role -> sha256 of the stored input
    result_sha256: str
    report_sha256: str
    metrics: dict[str, Any]
    report: bytes
    weights: Path


@dataclass
class ExportOutcome:
    """The job's `mlflow` block after the export, and the warnings to record (empty when it worked)."""

    mlflow: dict[str, Any]
    warnings: list[dict[str, str]]


def safe_uri(uri: str) -> str:
    """The tracking URI without credentials, for messages the tenant reads."""
    parts = urlsplit(uri)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def export_job(settings: Settings, job: FinishedJob) -> ExportOutcome:
    """Export `job` to the deployment's tracking server; never raises for a tracking-side failure."""
    block = dict(job.options)
    started = time.monotonic()
    try:
        client = _client(settings)
        block.update(_export(client, job, _history(settings, job.job_id)))
    except Exception as exc:
        if isinstance(exc, _Partial):
            block.update(exc.done)
            exc = exc.cause
        warning = _warning(settings.mlflow_tracking_uri, exc, block.get("run_id"))
        # The message without the URI's credentials; MLflow's own texts (in the traceback) carry them.
        log.warning("job %s: %s", job.job_id, warning["message"])
        log.debug("job %s: the MLflow export's error", job.job_id, exc_info=exc)
        return ExportOutcome(block, [warning])
    log.info(
        "job %s exported to MLflow run %s in %.1f s", job.job_id, block["run_id"], time.monotonic() - started
    )
    return ExportOutcome(block, [])


@dataclass(frozen=True)
class _Epoch:
    phase: str
    epoch: int
    values: dict[str, Any]
    ms: int


def _history(settings: Settings, job_id: str) -> list[_Epoch]:
    """The job's recorded epochs (the database's, deduplicated across resumed attempts)."""
    with session_scope(settings) as session:
        return [
            _Epoch(
                event.phase,
                int(event.epoch),
                {**(event.losses or {}), **(event.metrics or {})},
                int(event.created_at.timestamp() * 1000),
            )
            for event in jobs.job_events(session, job_id)
        ]


def _warning(uri: str, exc: BaseException, run_id: str | None) -> dict[str, str]:
    shown = safe_uri(uri)
    detail = (str(exc).strip().splitlines() or [""])[0].replace(uri, shown)[:300]
    where = f" (run {run_id} is incomplete)" if run_id else ""
    message = (
        f"The MLflow export to {shown} failed{where}: {exc.__class__.__name__}: {detail}. "
        "The cleanse itself succeeded; its results are here as usual."
    )
    return {"code": WARNING_CODE, "message": message}


def _client(settings: Settings) -> Any:
    """An MlflowClient on the deployment's server, with short timeouts and one retry."""
    if not settings.mlflow_tracking_uri:  # MLflow would fall back to a local ./mlruns folder
        raise RuntimeError("this worker has no ARGD_MLFLOW_TRACKING_URI (set it for the API and the workers)")
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(int(max(settings.mlflow_timeout_s, 1)))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # a service does not report its usage
    try:
        from mlflow.tracking import MlflowClient
    except ImportError as exc:
        raise RuntimeError("the worker has no MLflow client; install argd[mlflow]") from exc
    uri = settings.mlflow_tracking_uri
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _export(client: Any, job: FinishedJob, history: list[_Epoch]) -> dict[str, Any]:
    from mlflow.entities import Metric, Param
    from mlflow.exceptions import MlflowException

    options = MlflowOptions.model_validate(job.options)
    experiment = client.get_experiment_by_name(options.experiment)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(options.experiment)
    tags = _tags(job)
    run = client.create_run(experiment_id, run_name=options.run_name or f"argd-{job.job_id}", tags=tags)
    run_id = run.info.run_id
    done: dict[str, Any] = {"run_id": run_id, "experiment_id": str(experiment_id)}
    try:
        for chunk in _chunks([Param(k, v) for k, v in _params(job).items()], BATCH):
            client.log_batch(run_id, params=chunk)
        metrics = [Metric(key, value, ms, step) for key, value, ms, step in _metrics(job, history)]
        for chunk in _chunks(metrics, 1000):
            client.log_batch(run_id, metrics=chunk)
        staging = job.weights.parent / "mlflow"
        staging.mkdir(parents=True, exist_ok=True)
        (staging / "report.json").write_bytes(job.report)
        client.log_artifact(run_id, str(staging / "report.json"))
        client.log_artifact(run_id, str(job.weights), artifact_path="model")
        if options.registered_model is not None:
            name = options.registered_model
            try:
                client.create_registered_model(name, description="Cleansed by argd")
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
            version = client.create_model_version(
                name,
                source=f"{run.info.artifact_uri}/model",
                run_id=run_id,
                tags={"argd.job_id": job.job_id, "argd.output.sha256": job.result_sha256},
                description=f"argd job {job.job_id}",
            )
            done["model_version"] = str(version.version)
        client.set_terminated(run_id, "FINISHED")
    except Exception as exc:
        _terminate_failed(client, run_id)
        raise _Partial(done, exc) from exc
    return done


class _Partial(Exception):
    """An export that failed after its run was created: the caller keeps the run id."""

    def __init__(self, done: dict[str, Any], cause: Exception):
        super().__init__(str(cause))
        self.done, self.cause = done, cause


def _terminate_failed(client: Any, run_id: str) -> None:
    try:
        client.set_terminated(run_id, "FAILED")
    except Exception:
        log.info("could not mark MLflow run %s failed", run_id, exc_info=True)


def _tags(job: FinishedJob) -> dict[str, str]:
    tags = {
        "argd.job_id": job.job_id,
        "argd.tenant_id": job.tenant_id,
        "argd.method": str(job.params.get("method", "")),
        "argd.output.sha256": job.result_sha256,
        "argd.report.sha256": job.report_sha256,
    }
    for role, sha256 in job.inputs.items():
        if sha256:
            tags[f"argd.input.{role}.sha256"] = sha256
    return tags


def _params(job: FinishedJob) -> dict[str, str]:
    values: dict[str, Any] = {**job.params, "target_label": job.target_label}
    return {
        key: value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        for key, value in sorted(values.items())
    }


def _metrics(job: FinishedJob, history: list[_Epoch]) -> Iterator[tuple[str, float, int, int]]:
    """(key, value, timestamp ms, step): every epoch's losses and epoch-end values, then the results."""
    for epoch in history:
        for name, value in epoch.values.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                yield f"{epoch.phase}/{name}", float(value), epoch.ms, epoch.epoch
    now = int(time.time() * 1000)
    for phase in PHASES:
        for name, value in (job.metrics.get(phase) or {}).items():
            if value is not None:
                yield f"{phase}_{name}", float(value), now, 0
    for name in ("der", "fidelity"):
        if job.metrics.get(name) is not None:
            yield name, float(job.metrics[name]), now, 0


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
