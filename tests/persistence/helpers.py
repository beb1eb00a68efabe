"""Rows the persistence tests build on: a tenant with a model and a dataset (bytes in a given store)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy.orm import Session

from argd.persistence.artifacts import LocalArtifactStore, register_artifact
from argd.persistence.jobs import create_job
from argd.persistence.keys import get_or_create_tenant
from argd.persistence.models import Dataset, Job, Model


@dataclass
class Inputs:
    tenant_id: str
    model_id: str
    dataset_id: str


def make_inputs(session: Session, store: LocalArtifactStore) -> Inputs:
    tenant = get_or_create_tenant(session, f"tenant-{uuid.uuid4().hex[:8]}")
    blob = store.put_stream([uuid.uuid4().bytes])
    register_artifact(session, blob, "upload")
    model = Model(tenant_id=tenant.id, name="m", sha256=blob.sha256, size=blob.size, spec={})
    dataset = Dataset(
        tenant_id=tenant.id,
        name="d",
        sha256=blob.sha256,
        size=blob.size,
        count=1,
        shape=[1, 8, 8],
        classes=[0],
    )
    session.add_all([model, dataset])
    session.flush()
    return Inputs(tenant.id, model.id, dataset.id)


def make_job(session: Session, inputs: Inputs, **kwargs: object) -> Job:
    params = kwargs.pop("params", {"method": "argd", "epochs": 3})
    job, created = create_job(
        session,
        tenant_id=inputs.tenant_id,
        model_id=inputs.model_id,
        clean_dataset_id=inputs.dataset_id,
        params=params,  # type: ignore[arg-type]
        **kwargs,  # type: ignore[arg-type]
    )
    assert created
    session.commit()
    return job
