"""The one public shape of a job: what `GET /v1/jobs/{id}` answers, what a webhook carries in `data`, and
what the Python client parses its answers into.

Plain pydantic over `argd.core.params` (itself pydantic only), so the client can use it without the server's
dependencies. The rows-to-schema mapping lives in `argd.jobs.views`.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, model_validator

from argd.core.params import CleanseParams, Method
from argd.jobs.status import JobPhase, JobStatus

__all__ = [
    "HistoryEntry",
    "JobCreate",
    "JobError",
    "JobOut",
    "JobPhase",
    "JobStatus",
    "JobSummary",
    "JobWarning",
    "Method",
    "Metrics",
    "MlflowExport",
    "MlflowOptions",
    "PhaseMetrics",
    "Progress",
    "StatusName",
]

# The statuses as a field type: a JobStatus once validated, an inline string enum in the JSON schema (the
# OpenAPI document keeps the shape it had as a Literal), generated from the enum so it cannot drift.
if TYPE_CHECKING:
    StatusName = JobStatus
else:
    StatusName = Annotated[Literal[tuple(str(status) for status in JobStatus)], AfterValidator(JobStatus)]


def _methods_text(default: str, *others: str) -> str:
    """'argd (default), nad or finetune': the engine's new methods show up here (and in the enum) by
    themselves."""
    listed = [f"{default} (default)", *others]
    return listed[0] if len(listed) == 1 else f"{', '.join(listed[:-1])} or {listed[-1]}"


METHODS_TEXT = _methods_text(*get_args(Method))


class Progress(BaseModel):
    """Where a running job is: epoch counts are of the current phase."""

    epoch: int | None = None
    epochs: int | None = None
    fraction: float = Field(default=0.0, description="Fraction of the whole job done, 0..1")
    eta_s: float | None = Field(default=None, description="Estimated seconds left")


class PhaseMetrics(BaseModel):
    """Fractions in [0, 1]; null when the data to measure them was not given."""

    acc: float | None = None
    asr: float | None = None
    ra: float | None = None


class Metrics(BaseModel):
    before: PhaseMetrics | None = None
    teacher: PhaseMetrics | None = None
    after: PhaseMetrics | None = None
    der: float | None = Field(default=None, description="Defense effectiveness rating")
    fidelity: float | None = None


class JobError(BaseModel):
    code: str
    message: str


class JobWarning(BaseModel):
    """Something that went wrong beside the job without failing it (e.g. the MLflow export)."""

    code: str = Field(description="Stable code, e.g. mlflow_export_failed")
    message: str


# MLflow names: printable, no control characters; experiments may be paths ("/team/argd").
ExperimentName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9_./ -]+$", strip_whitespace=True),
]
RunName = Annotated[str, StringConstraints(min_length=1, max_length=250, pattern=r"^[^\x00-\x1f\x7f]+$")]
RegisteredModelName = Annotated[
    str, StringConstraints(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
]


class MlflowOptions(BaseModel):
    """Export the finished job to the deployment's MLflow tracking server (ARGD_MLFLOW_TRACKING_URI)."""

    model_config = ConfigDict(extra="forbid")

    experiment: ExperimentName = Field(
        default="argd", description="MLflow experiment (created when missing); letters, digits, _ . / - space"
    )
    run_name: RunName | None = Field(
        default=None, description="Name of the MLflow run (default: argd-<job id>)"
    )
    registered_model: RegisteredModelName | None = Field(
        default=None,
        description="Register the cleansed model as a new version of this registered model (created when "
        "missing); unset: no registration",
    )


class MlflowExport(MlflowOptions):
    """The job's MLflow options and, once the worker exported it, where the run is."""

    model_config = ConfigDict(extra="ignore")

    run_id: str | None = Field(
        default=None, description="The MLflow run (null until exported or if it failed)"
    )
    experiment_id: str | None = None
    model_version: str | None = Field(default=None, description="Version registered for this job, if any")


class HistoryEntry(BaseModel):
    """One finished epoch of a phase, as the worker recorded it."""

    phase: str
    epoch: int
    losses: dict[str, Any] = Field(description="Mean loss of each term over the epoch")
    metrics: dict[str, Any] | None = Field(
        default=None, description="Epoch-end values the engine reported (lr, val_acc, seconds, ...)"
    )
    recorded_at: datetime


class JobSummary(BaseModel):
    """A cleanse job: status, live progress, metrics, and the error if it failed."""

    id: str
    status: StatusName
    phase: JobPhase | None = None
    method: Method
    model_id: str | None = Field(description="null once the model was deleted")
    clean_dataset_id: str | None
    test_dataset_id: str | None = None
    poisoned_dataset_id: str | None = None
    target_label: int | None = None
    teacher_model_id: str | None = None
    params: dict[str, Any] = Field(description="The effective hyperparameters (every one, defaults filled)")
    webhook_url: str | None = None
    progress: Progress
    metrics: Metrics
    error: JobError | None = None
    cancel_requested: bool = False
    attempts: int = Field(0, description="Attempts started (more than 1 after a worker was lost)")
    result_sha256: str | None = Field(default=None, description="SHA-256 of the cleansed .safetensors")
    mlflow: MlflowExport | None = Field(default=None, description="The MLflow export asked for, and its run")
    warnings: list[JobWarning] = Field(
        default_factory=list, description="Problems that did not fail the job (e.g. the MLflow export)"
    )
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None


class JobOut(JobSummary):
    """A job with its per-epoch history."""

    history: list[HistoryEntry] = Field(description="Finished epochs, teacher first, in order")


class JobCreate(BaseModel):
    """What to cleanse, with which data and settings. Defaults are the reference settings of ARGD."""

    model_config = ConfigDict(extra="forbid")

    model_id: str = Field(description="The uploaded (possibly backdoored) model to cleanse")
    clean_dataset_id: str = Field(description="The small clean subset used for fine-tuning and distillation")
    test_dataset_id: str | None = Field(default=None, description="Clean test set for ACC (optional)")
    poisoned_dataset_id: str | None = Field(
        default=None,
        description="Triggered images with their ORIGINAL labels, for ASR/RA (needs target_label)",
    )
    target_label: int | None = Field(default=None, ge=0, description="The backdoor's target class")
    teacher_model_id: str | None = Field(
        default=None, description="Use this uploaded model as the teacher instead of fine-tuning one"
    )
    method: Method = Field(default="argd", description=METHODS_TEXT)
    params: CleanseParams | None = Field(
        default=None, description="Hyperparameters; unset ones take defaults"
    )
    webhook_url: str | None = Field(
        default=None, max_length=2048, description="Called (signed) when the job reaches a final status"
    )
    mlflow: MlflowOptions | None = Field(
        default=None,
        description="Export the run (parameters, per-epoch metrics, results, report, cleansed weights) to "
        "the deployment's MLflow server; 422 when the deployment has none",
    )

    @model_validator(mode="after")
    def _poisoned_needs_target(self) -> JobCreate:
        if (self.poisoned_dataset_id is None) != (self.target_label is None):
            raise ValueError("poisoned_dataset_id and target_label must be given together")
        return self
