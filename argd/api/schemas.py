"""Request and response bodies of the REST API: the JSON half of the public contract.

Responses are plain pydantic models built from database rows by the routes; requests forbid unknown keys so
a typo in a parameter name is a 422 rather than a silently ignored default. The job's own schemas (request,
summary, progress, metrics, error) are the domain's, in `argd.jobs.schemas`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from argd.core.spec import ModelSpec
from argd.jobs.schemas import JobSummary


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


class ArchitectureKwarg(BaseModel):
    """One `arch_kwargs` entry an architecture accepts."""

    name: str
    type: Literal["bool", "int", "float", "str"]
    help: str


class ArchitectureOut(BaseModel):
    """An entry of the allowlisted architecture registry: what `spec.architecture` may name."""

    id: str = Field(description="The value for `spec.architecture`, e.g. 'wrn-16-1'")
    family: str
    description: str
    arch_kwargs: list[ArchitectureKwarg] = Field(description="The `spec.arch_kwargs` it accepts")
    feature_layers: list[str] | None = Field(
        description="Default attention levels (null: detected from the model at upload)"
    )


class ArchitectureList(BaseModel):
    items: list[ArchitectureOut]


class PresetOut(BaseModel):
    """A named parameter set: every CleanseParams field, to send as a job's `params` or to start from."""

    name: str
    description: str
    params: dict[str, Any] = Field(description="Every CleanseParams field of the preset")


class PresetList(BaseModel):
    items: list[PresetOut]
