"""`/v1/jobs`: create (idempotent), read with progress and history, list, cancel, delete, download, report,
and follow as Server-Sent Events (`argd.api.events`).

Thin: each route parses the request, calls `argd.jobs.service` and shapes the answer with
`argd.jobs.views`; the service's refusals become problem documents in `argd.api.errors`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials
from sqlalchemy.orm import Session

from argd.api.auth import bearer_scheme
from argd.api.conditional import NOT_MODIFIED, IfNoneMatch, etag_matches, json_with_etag, not_modified
from argd.api.deps import PrincipalDep, QueueDep, SessionDep, SettingsDep, StoreDep, session_factory
from argd.api.errors import Problem, problem_body, problem_responses
from argd.api.events import EVENT_STREAM, job_stream, read_snapshot
from argd.api.pagination import DEFAULT_LIMIT, CursorQuery, LimitQuery
from argd.api.routes.common import owned_page
from argd.api.schemas import JobPage
from argd.jobs import service
from argd.jobs.schemas import JobCreate, JobOut, StatusName
from argd.jobs.status import JobStatus
from argd.jobs.views import job_etag, job_out, job_summary
from argd.persistence import jobs as job_state
from argd.persistence.models import Job

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


def _job_response(session: Session, job: Job, status: int) -> JSONResponse:
    body = job_out(job, job_state.job_events(session, job.id))
    return JSONResponse(
        body.model_dump(mode="json"), status_code=status, headers={"Location": f"/v1/jobs/{job.id}"}
    )


@router.post(
    "",
    operation_id="createJob",
    summary="Create a cleanse job",
    status_code=202,
    response_model=JobOut,
    responses={
        200: {"model": JobOut, "description": "Replay of an earlier request with the same Idempotency-Key"},
        **problem_responses(400, 401, 404, 413, 422, 503),
    },
)
def create_job(
    body: JobCreate,
    principal: PrincipalDep,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    queue: QueueDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description="Repeating a request with the same key and body returns the same job (200) instead "
            "of creating another; the same key with another body is a 422",
        ),
    ] = None,
) -> JSONResponse:
    """Queue a cleanse of `model_id` with the clean subset; answers 202 with the job and its Location.

    Every dataset must fit the model (channels, image size, labels below num_classes). The job row is
    committed before the job is sent to the queue, so a worker always finds it."""
    submission = service.create(
        session,
        store,
        settings,
        queue,
        tenant_id=principal.tenant_id,
        body=body,
        idempotency_key=idempotency_key,
    )
    return _job_response(session, submission.job, 200 if submission.replayed else 202)


@router.get(
    "",
    operation_id="listJobs",
    summary="List jobs",
    response_model=JobPage,
    responses={**NOT_MODIFIED, **problem_responses(401, 422)},
)
def list_jobs(
    principal: PrincipalDep,
    session: SessionDep,
    if_none_match: IfNoneMatch = None,
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
    status: Annotated[StatusName | None, Query(description="Only jobs in this status")] = None,
) -> Response:
    """The caller's jobs, newest first, without their per-epoch history; an ETag of the page (304 with
    If-None-Match while the page is unchanged)."""
    only = [Job.status == status] if status is not None else []
    rows, next_cursor = owned_page(session, Job, principal, limit, cursor, *only)
    page = JobPage(items=[job_summary(row) for row in rows], next_cursor=next_cursor)
    return json_with_etag(page.model_dump_json().encode(), if_none_match)


@router.get(
    "/{job_id}",
    operation_id="getJob",
    summary="Get a job",
    response_model=JobOut,
    responses={**NOT_MODIFIED, **problem_responses(401, 404)},
)
def get_job(
    job_id: str, principal: PrincipalDep, session: SessionDep, if_none_match: IfNoneMatch = None
) -> Response:
    """Status, phase, progress, metrics (before / teacher / after, DER, fidelity), history and error.

    The answer carries an ETag; sending it back in If-None-Match answers 304 while the job is unchanged,
    and that check reads the job row and one index entry, not the history."""
    job = service.owned_job(session, principal.tenant_id, job_id)
    if if_none_match:
        etag = job_etag(job, job_state.history_marker(session, job.id))
        if etag_matches(if_none_match, etag):
            return not_modified(etag)
    events = job_state.job_events(session, job.id)
    etag = job_etag(job, (len(events), max((event.id for event in events), default=0)))
    body = job_out(job, events).model_dump_json()
    return Response(body, media_type="application/json", headers={"ETag": etag})


@router.post(
    "/{job_id}/cancel",
    operation_id="cancelJob",
    summary="Cancel a job",
    response_model=JobOut,
    responses={
        202: {
            "model": JobOut,
            "description": "Running: the worker stops at its next step (cancel_requested)",
        },
        **problem_responses(401, 404, 409),
    },
)
def cancel_job(job_id: str, principal: PrincipalDep, session: SessionDep, queue: QueueDep) -> JSONResponse:
    """A queued job is canceled at once (200); a running one is asked to stop (202, still running until
    its worker honours the request). A finished job answers 409."""
    job = service.cancel(session, queue, tenant_id=principal.tenant_id, job_id=job_id)
    return _job_response(session, job, 200 if job.status == JobStatus.CANCELED else 202)


@router.delete(
    "/{job_id}",
    operation_id="deleteJob",
    summary="Delete a finished job",
    status_code=204,
    response_class=Response,
    responses=problem_responses(401, 404, 409),
)
def delete_job(job_id: str, principal: PrincipalDep, session: SessionDep, store: StoreDep) -> Response:
    """Delete a finished job with its history and its result files (unless shared). 409 while it is queued
    or running: cancel it first."""
    service.delete(session, store, tenant_id=principal.tenant_id, job_id=job_id)
    return Response(status_code=204)


def _finished_artifact(job: Job, sha: str | None, what: str) -> str:
    if job.status != JobStatus.SUCCEEDED or sha is None:
        raise Problem(
            409,
            "job_not_succeeded",
            f"The job is {job.status}; its {what} exists once it has succeeded",
            details={"status": job.status},
        )
    return sha


@router.get(
    "/{job_id}/model",
    operation_id="downloadJobModel",
    summary="Download the cleansed model",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The cleansed weights (.safetensors)",
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        },
        307: {
            "description": "With the S3 store and `s3_presign_downloads` on: a redirect (`Location`) to a "
            "short-lived presigned URL of the object store"
        },
        **problem_responses(401, 404, 409),
    },
)
def download_job_model(
    job_id: str, principal: PrincipalDep, session: SessionDep, store: StoreDep, settings: SettingsDep
) -> Response:
    """The cleansed student's weights, streamed (or a redirect to a presigned URL); 409 unless the job
    succeeded."""
    job = service.owned_job(session, principal.tenant_id, job_id)
    sha = _finished_artifact(job, job.result_model_sha256, "cleansed model")
    filename = f"{job.id}.safetensors"
    presign = getattr(store, "presigned_url", None)
    if settings.s3_presign_downloads and presign is not None:
        return RedirectResponse(
            presign(sha, filename), status_code=307, headers={"Cache-Control": "no-store"}
        )
    size = store.size(sha)
    handle = store.open(sha)

    def chunks() -> Iterator[bytes]:
        with handle:
            yield from iter(lambda: handle.read(1 << 20), b"")

    return StreamingResponse(
        chunks(),
        media_type="application/octet-stream",
        headers={
            "Content-Length": str(size),
            "Content-Disposition": f'attachment; filename="{filename}"',
            "ETag": f'"{sha}"',
        },
    )


@router.get(
    "/{job_id}/report",
    operation_id="getJobReport",
    summary="Get the job's report",
    response_model=dict[str, Any],
    responses=problem_responses(401, 404, 409),
)
def get_job_report(
    job_id: str, principal: PrincipalDep, session: SessionDep, store: StoreDep
) -> JSONResponse:
    """The JSON report: metrics, every parameter, seed, software versions, input and output sha256."""
    job = service.owned_job(session, principal.tenant_id, job_id)
    sha = _finished_artifact(job, job.report_sha256, "report")
    with store.open(sha) as handle:
        report = json.load(handle)
    return JSONResponse(report)


@router.get(
    "/{job_id}/events",
    operation_id="streamJobEvents",
    summary="Follow a job as Server-Sent Events",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "An event stream (`text/event-stream`). `event: job` frames carry the job exactly "
            "as `GET /v1/jobs/{id}` answers it, sent when it changes (the first frame at once); `event: "
            "end` (data `{status}`) follows a final status and closes the stream; `event: problem` (a "
            "problem-details body) closes it when the key is revoked or the job deleted meanwhile. Comment "
            "lines keep an idle stream open. Send the key in the Authorization header (read the stream "
            "with fetch(), not EventSource, in a browser).",
            "content": {EVENT_STREAM: {"schema": {"type": "string"}}},
        },
        **problem_responses(401, 404),
    },
)
def stream_job_events(
    job_id: str,
    request: Request,
    principal: PrincipalDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
    session: SessionDep,
    settings: SettingsDep,
) -> StreamingResponse:
    """Live progress without polling: one frame per change of the job, until it finishes."""
    service.owned_job(session, principal.tenant_id, job_id)  # 404 before the stream starts
    api_key = credentials.credentials if credentials is not None else ""  # set: the principal came from it
    read = partial(read_snapshot, session_factory(request), settings, api_key, principal.tenant_id, job_id)
    stream = job_stream(read, partial(problem_body, request))
    return StreamingResponse(
        stream,
        media_type=EVENT_STREAM,
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
