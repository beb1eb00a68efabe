"""`/v1/models`: upload (validated at once and stored as safetensors), list, read, delete."""

from __future__ import annotations

import json

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError
from sqlalchemy.orm import Session

from argd.api.auth import Principal
from argd.api.deps import PrincipalDep, SessionDep, SettingsDep, StoreDep
from argd.api.errors import Problem, describe_validation_errors, problem_responses
from argd.api.pagination import DEFAULT_LIMIT, CursorQuery, LimitQuery
from argd.api.routes.common import (
    delete_unused,
    multipart_body,
    owned,
    owned_page,
    upload_name,
)
from argd.api.schemas import ModelOut, ModelPage
from argd.api.uploads import end_transaction, receive_multipart
from argd.api.validation import ModelIntake, check_model_file
from argd.core.spec import ModelSpec
from argd.jobs.quotas import check_upload
from argd.persistence.artifacts import ArtifactStore, register_artifact
from argd.persistence.models import Model
from argd.persistence.tempfiles import scratch_file, upload_dir

router = APIRouter(prefix="/v1/models", tags=["models"])

MODEL_SUFFIXES = (".safetensors", ".pt", ".pth", ".tar")

_UPLOAD_BODY = multipart_body(
    {
        "file": {
            "type": "string",
            "format": "binary",
            "description": "Weights: .safetensors, or a torch.save state dict (.pt/.pth/.tar, also wrapped "
            "as {'state_dict': ...}); read with weights_only=True and converted to safetensors",
        },
        "spec": {
            "type": "string",
            "description": "JSON of the model spec (see the ModelSpec schema), e.g. "
            '{"architecture": "wrn-16-1", "num_classes": 10, "in_channels": 3, "image_size": 32}',
            "contentMediaType": "application/json",
            "contentSchema": {"$ref": "#/components/schemas/ModelSpec"},
        },
        "name": {"type": "string", "maxLength": 255, "description": "Optional label"},
    },
    ["file", "spec"],
)


def model_out(row: Model) -> ModelOut:
    return ModelOut(
        id=row.id,
        name=row.name,
        filename=(row.meta or {}).get("filename"),
        sha256=row.sha256,
        upload_sha256=row.source_sha256,
        size_bytes=row.size,
        parameters=row.parameters,
        spec=ModelSpec.model_validate(row.spec),
        created_at=row.created_at,
    )


def parse_spec(text: str | None) -> ModelSpec:
    """The `spec` form field as a ModelSpec; a 422 problem naming what is wrong otherwise."""
    if text is None:
        raise Problem(422, "invalid_spec", "The form field 'spec' (JSON of the model spec) is required")
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise Problem(422, "invalid_spec", f"The form field 'spec' is not valid JSON: {exc}") from exc
    try:
        return ModelSpec.model_validate(raw)
    except ValidationError as exc:
        errors = [
            {"loc": ["spec", *e["loc"]], "msg": e["msg"], "type": e["type"]}
            for e in exc.errors(include_url=False, include_input=False)
        ]
        raise Problem(
            422,
            "invalid_spec",
            "The model spec is invalid: " + describe_validation_errors(errors),
            errors=errors,
        ) from exc


def _store_model(
    session: Session,
    store: ArtifactStore,
    principal: Principal,
    intake: ModelIntake,
    spec: ModelSpec,
    name: str,
    filename: str,
    upload_sha256: str,
) -> Model:
    check_upload(session, principal.tenant_id, intake.path.stat().st_size)
    blob = store.put_file(intake.path)
    register_artifact(session, blob, "model")
    row = Model(
        tenant_id=principal.tenant_id,
        name=name,
        sha256=blob.sha256,
        size=blob.size,
        source_sha256=upload_sha256,
        spec=spec.model_dump(mode="json"),
        parameters=intake.parameters,
        meta={"filename": filename},
    )
    session.add(row)
    session.commit()
    return row


@router.post(
    "",
    operation_id="createModel",
    summary="Upload a model",
    status_code=201,
    response_model=ModelOut,
    openapi_extra=_UPLOAD_BODY,
    responses=problem_responses(400, 401, 413, 415, 422, 507),
)
async def create_model(
    request: Request,
    response: Response,
    principal: PrincipalDep,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
) -> ModelOut:
    """Validate the weights against the spec's architecture at once (strict keys and shapes, finite values,
    one dummy forward pass) and store them as safetensors. A 422 lists missing, unexpected and mismatched
    keys. The upload streams to disk; bodies over the size limit are refused with 413 as soon as known."""
    tmp = upload_dir(settings)
    await end_transaction(session)
    async with receive_multipart(
        request,
        tmp,
        file_fields={"file": MODEL_SUFFIXES},
        text_fields={"spec", "name"},
        max_file_bytes=settings.max_upload_bytes,
    ) as form:
        spec = parse_spec(form.fields.get("spec"))
        upload = form.files["file"]
        name = upload_name(form.fields.get("name"), upload.filename)
        with scratch_file(tmp, "model", ".safetensors") as converted:
            intake = await run_in_threadpool(
                check_model_file, upload.path, spec, converted, max_tensors=settings.max_tensors
            )
            row = await run_in_threadpool(
                _store_model, session, store, principal, intake, spec, name, upload.filename, upload.sha256
            )
    response.headers["Location"] = f"/v1/models/{row.id}"
    return model_out(row)


@router.get(
    "",
    operation_id="listModels",
    summary="List models",
    response_model=ModelPage,
    responses=problem_responses(401, 422),
)
def list_models(
    principal: PrincipalDep,
    session: SessionDep,
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
) -> ModelPage:
    """The caller's models, newest first."""
    rows, next_cursor = owned_page(session, Model, principal, limit, cursor)
    return ModelPage(items=[model_out(row) for row in rows], next_cursor=next_cursor)


@router.get(
    "/{model_id}",
    operation_id="getModel",
    summary="Get a model",
    response_model=ModelOut,
    responses=problem_responses(401, 404),
)
def get_model(
    model_id: str,
    principal: PrincipalDep,
    session: SessionDep,
) -> ModelOut:
    """A model's metadata (never its bytes)."""
    return model_out(owned(session, Model, model_id, principal, "model"))


@router.delete(
    "/{model_id}",
    operation_id="deleteModel",
    summary="Delete a model",
    status_code=204,
    response_class=Response,
    responses=problem_responses(401, 404, 409),
)
def delete_model(model_id: str, principal: PrincipalDep, session: SessionDep, store: StoreDep) -> Response:
    """Delete the model and its stored weights (unless another model holds the same bytes).
    409 while a queued or running job uses it."""
    delete_unused(session, store, Model, model_id, principal, "model")
    return Response(status_code=204)
