"""Inputs for worker tests: a tiny small-cnn and synthetic images, stored like uploads; job polling."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from sqlalchemy.orm import Session

from argd.core.architectures import build_model
from argd.core.data import ImageData, save_npz
from argd.core.spec import ModelSpec
from argd.core.weights import save_weights
from argd.persistence.artifacts import register_artifact
from argd.persistence.db import session_scope
from argd.persistence.jobs import create_job
from argd.persistence.keys import get_or_create_tenant
from argd.persistence.models import Dataset, Job, Model
from argd.persistence.settings import Settings
from argd.persistence.stores import get_store

SPEC = ModelSpec(
    architecture="small-cnn", num_classes=4, in_channels=1, image_size=12, arch_kwargs={"width": 4}
)


@dataclass
class Uploaded:
    tenant_id: str
    model_id: str
    clean_id: str
    test_id: str


def upload_inputs(settings: Settings, tmp: Path, *, images: int = 256, spec: ModelSpec = SPEC) -> Uploaded:
    """A tenant with a random small-cnn and random clean/test sets, stored the way the API stores uploads."""
    store = get_store(settings)
    torch.manual_seed(0)
    weights = tmp / f"{uuid.uuid4().hex}.safetensors"
    save_weights(build_model(spec), weights)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (images, 1, 12, 12), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 4, (images,), generator=g)
    clean_path, test_path = tmp / f"{uuid.uuid4().hex}.npz", tmp / f"{uuid.uuid4().hex}.npz"
    save_npz(ImageData(x, y), clean_path)
    save_npz(ImageData(x[:64], y[:64]), test_path)
    with session_scope(settings) as session:
        tenant = get_or_create_tenant(session, f"worker-{uuid.uuid4().hex[:8]}")
        model_blob = store.put_file(weights)
        register_artifact(session, model_blob, "model")
        model = Model(
            tenant_id=tenant.id,
            name="tiny",
            sha256=model_blob.sha256,
            size=model_blob.size,
            spec=spec.model_dump(mode="json"),
        )
        rows = []
        for path, count in ((clean_path, images), (test_path, 64)):
            blob = store.put_file(path)
            register_artifact(session, blob, "dataset")
            rows.append(
                Dataset(
                    tenant_id=tenant.id,
                    name=path.name,
                    sha256=blob.sha256,
                    size=blob.size,
                    format="npz",
                    count=count,
                    shape=[1, 12, 12],
                    classes=[0, 1, 2, 3],
                )
            )
        session.add_all([model, *rows])
        session.flush()
        return Uploaded(tenant.id, model.id, rows[0].id, rows[1].id)


def submit(settings: Settings, inputs: Uploaded, params: dict[str, Any], **kwargs: Any) -> str:
    """Create a queued job (committed), as the API does before it enqueues."""
    full = {"teacher_epochs": 1, "batch_size": 16, "eval_batch_size": 64, **params}
    with session_scope(settings) as session:
        job, _ = create_job(
            session,
            tenant_id=inputs.tenant_id,
            model_id=inputs.model_id,
            clean_dataset_id=inputs.clean_id,
            test_dataset_id=inputs.test_id,
            params=full,
            **kwargs,
        )
        return job.id


def read_job(session: Session, job_id: str) -> Job:
    job = session.get(Job, job_id, populate_existing=True)
    assert job is not None
    return job


def wait_for(settings: Settings, job_id: str, condition: Any, timeout: float, what: str) -> Job:
    """Poll the job row until `condition(job)` holds; fail with the last state seen."""
    deadline = time.monotonic() + timeout
    with session_scope(settings) as session:
        while True:
            job = read_job(session, job_id)
            if condition(job):
                return job
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out waiting for {what}: status={job.status} phase={job.phase} epoch={job.epoch} "
                    f"attempts={job.attempts} error={job.error_code} {job.error_message}"
                )
            session.rollback()
            time.sleep(0.05)


def finished(job: Job) -> bool:
    return job.status in ("succeeded", "failed", "canceled")
