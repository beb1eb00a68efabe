"""`/v1/datasets`: upload (validated at once), list, read, delete."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from argd.api.auth import Principal
from argd.api.deps import PrincipalDep, SessionDep, SettingsDep, StoreDep
from argd.api.errors import problem_responses
from argd.api.pagination import DEFAULT_LIMIT, CursorQuery, LimitQuery
from argd.api.routes.common import (
    delete_unused,
    multipart_body,
    owned,
    owned_page,
    upload_name,
)
from argd.api.schemas import DatasetOut, DatasetPage
from argd.api.uploads import end_transaction, receive_multipart
from argd.api.validation import DatasetIntake, check_dataset_file
from argd.jobs.quotas import check_upload
from argd.persistence.artifacts import ArtifactStore, register_artifact
from argd.persistence.models import Dataset
from argd.persistence.tempfiles import scratch_file, upload_dir

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])

DATASET_SUFFIXES = (".npz", ".zip")

_UPLOAD_BODY = multipart_body(
    {
        "file": {
            "type": "string",
            "format": "binary",
            "description": ".npz with x uint8 [N,H,W] or [N,H,W,C] and y int [N] (no pickles), or a .zip of "
            "class folders of PNG/JPEG images",
        },
        "name": {"type": "string", "maxLength": 255, "description": "Optional label"},
    },
    ["file"],
)


def dataset_out(row: Dataset) -> DatasetOut:
    meta = row.meta or {}
    return DatasetOut(
        id=row.id,
        name=row.name,
        filename=meta.get("filename"),
        sha256=row.sha256,
        upload_sha256=row.source_sha256,
        size_bytes=row.size,
        source_format=meta.get("source_format", row.format),
        count=row.count,
        shape=list(row.shape),
        classes=[int(label) for label in row.classes],
        class_names=list(meta.get("class_names") or [str(label) for label in row.classes]),
        class_counts=list(meta.get("class_counts") or []),
        created_at=row.created_at,
    )


def _store_dataset(
    session: Session,
    store: ArtifactStore,
    principal: Principal,
    intake: DatasetIntake,
    name: str,
    filename: str,
    upload_sha256: str,
) -> Dataset:
    check_upload(session, principal.tenant_id, intake.path.stat().st_size)
    blob = store.put_file(intake.path)
    register_artifact(session, blob, "dataset")
    row = Dataset(
        tenant_id=principal.tenant_id,
        name=name,
        sha256=blob.sha256,
        size=blob.size,
        source_sha256=upload_sha256,
        format="npz",
        count=intake.count,
        shape=intake.shape,
        classes=intake.labels,
        meta={
            "filename": filename,
            "source_format": intake.source_format,
            "class_names": intake.class_names,
            "class_counts": intake.class_counts,
        },
    )
    session.add(row)
    session.commit()
    return row


@router.post(
    "",
    operation_id="createDataset",
    summary="Upload a dataset",
    status_code=201,
    response_model=DatasetOut,
    openapi_extra=_UPLOAD_BODY,
    responses=problem_responses(400, 401, 413, 415, 422, 507),
)
async def create_dataset(
    request: Request,
    response: Response,
    principal: PrincipalDep,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
) -> DatasetOut:
    """Validate the images and labels at once (array headers before data, safe zip member names, entry,
    size and pixel limits) and store them. Whether they fit a model is checked when a job uses both."""
    tmp = upload_dir(settings)
    await end_transaction(session)
    async with receive_multipart(
        request,
        tmp,
        file_fields={"file": DATASET_SUFFIXES},
        text_fields={"name"},
        max_file_bytes=settings.max_upload_bytes,
    ) as form:
        upload = form.files["file"]
        name = upload_name(form.fields.get("name"), upload.filename)
        with scratch_file(tmp, "dataset", ".npz") as converted:
            intake = await run_in_threadpool(check_dataset_file, upload.path, converted)
            row = await run_in_threadpool(
                _store_dataset,
                session,
                store,
                principal,
                intake,
                name,
                upload.filename,
                upload.sha256,
            )
    response.headers["Location"] = f"/v1/datasets/{row.id}"
    return dataset_out(row)


@router.get(
    "",
    operation_id="listDatasets",
    summary="List datasets",
    response_model=DatasetPage,
    responses=problem_responses(401, 422),
)
def list_datasets(
    principal: PrincipalDep,
    session: SessionDep,
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
) -> DatasetPage:
    """The caller's datasets, newest first."""
    rows, next_cursor = owned_page(session, Dataset, principal, limit, cursor)
    return DatasetPage(items=[dataset_out(row) for row in rows], next_cursor=next_cursor)


@router.get(
    "/{dataset_id}",
    operation_id="getDataset",
    summary="Get a dataset",
    response_model=DatasetOut,
    responses=problem_responses(401, 404),
)
def get_dataset(
    dataset_id: str,
    principal: PrincipalDep,
    session: SessionDep,
) -> DatasetOut:
    """A dataset's metadata (never its bytes)."""
    return dataset_out(owned(session, Dataset, dataset_id, principal, "dataset"))


@router.delete(
    "/{dataset_id}",
    operation_id="deleteDataset",
    summary="Delete a dataset",
    status_code=204,
    response_class=Response,
    responses=problem_responses(401, 404, 409),
)
def delete_dataset(
    dataset_id: str, principal: PrincipalDep, session: SessionDep, store: StoreDep
) -> Response:
    """Delete the dataset and its stored file (unless shared). 409 while a queued or running job uses it."""
    delete_unused(session, store, Dataset, dataset_id, principal, "dataset")
    return Response(status_code=204)
