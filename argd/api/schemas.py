"""Request and response bodies of the REST API: the JSON half of the public contract.

Responses are plain pydantic models built from database rows by the routes; requests forbid unknown keys so
a typo in a parameter name is a 422 rather than a silently ignored default.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from argd.core.params import CleanseParams
from argd.core.spec import ModelSpec

JobStatus = Literal["queued", "running", "succeeded", "failed", "canceled"]
JobPhase = Literal["teacher", "distill", "evaluate"]
Method = Literal["argd", "nad", "finetune"]


class ModelOut(BaseModel):
    """An uploaded model: its spec and the stored (safetensors) weights' identity."""

    id: str
    name: str = Field(description="The name given at upload, else the uploaded file's name")
    filename: str | None = Field(default=None, description="File name the client uploaded")
    sha256: str = Field(description="SHA-256 of the stored .safetensors weights (what jobs reference)")
    upload_sha256: str | None = Field(default=None, description="SHA-256 of the bytes as uploaded")
    size_bytes: int = Field(description="Size of the stored .safetensors weights")
    parameters: int = Field(description="Number of parameters (buffers excluded)")
    spec: ModelSpec
    created_at: datetime


class DatasetOut(BaseModel):
    """An uploaded image set, stored as an .npz (a .zip of images is converted at upload)."""

    id: str
    name: str = Field(description="The name given at upload, else the uploaded file's name")
    filename: str | None = None
    sha256: str = Field(description="SHA-256 of the stored .npz (what jobs reference)")
    upload_sha256: str | None = Field(default=None, description="SHA-256 of the bytes as uploaded")
    size_bytes: int
    source_format: Literal["npz", "zip"] = Field(description="Format of the upload")
    count: int = Field(description="Number of images")
    shape: list[int] = Field(description="Image shape [channels, height, width]")
    classes: list[int] = Field(description="Sorted distinct labels present")
    class_names: list[str] = Field(description="Name of each label in `classes` (zip folder names)")
    class_counts: list[int] = Field(description="Images per label in `classes`")
    created_at: datetime


class Page(BaseModel):
    """One page of a listing; pass `next_cursor` back as `cursor` for the next one (null: last page)."""

    next_cursor: str | None = None


class ModelPage(Page):
    items: list[ModelOut]


class DatasetPage(Page):
    items: list[DatasetOut]


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
    method: Method = Field(default="argd", description="argd (default), nad or finetune")
    params: CleanseParams | None = Field(
        default=None, description="Hyperparameters; unset ones take defaults"
    )
    webhook_url: str | None = Field(
        default=None, max_length=2048, description="Called (signed) when the job reaches a final status"
    )

    @model_validator(mode="after")
    def _poisoned_needs_target(self) -> JobCreate:
        if (self.poisoned_dataset_id is None) != (self.target_label is None):
            raise ValueError("poisoned_dataset_id and target_label must be given together")
        return self


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
    status: JobStatus
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
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None


class JobOut(JobSummary):
    """A job with its per-epoch history."""

    history: list[HistoryEntry] = Field(description="Finished epochs, teacher first, in order")


class JobPage(Page):
    """Jobs without their history (read one job for it)."""

    items: list[JobSummary]


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    version: str


class Readiness(BaseModel):
    status: Literal["ready"] = "ready"
    checks: dict[str, str] = Field(description="Each dependency and 'ok'")


class WebhookSecret(BaseModel):
    secret: str = Field(description="whsec_<base64>: verify webhook-signature with it (Standard Webhooks)")
    headers: list[str] = Field(
        default=["webhook-id", "webhook-timestamp", "webhook-signature"],
        description="The headers every delivery carries",
    )
