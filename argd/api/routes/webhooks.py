"""The tenant's webhook signing secret, so receivers can verify the Standard Webhooks signatures we send."""

from __future__ import annotations

from fastapi import APIRouter

from argd.api.deps import PrincipalDep, SettingsDep
from argd.api.errors import problem_responses
from argd.api.schemas import WebhookSecret
from argd.jobs.webhooks import tenant_webhook_secret

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


@router.get(
    "/secret",
    operation_id="getWebhookSecret",
    response_model=WebhookSecret,
    responses=problem_responses(401),
    summary="The secret that signs this tenant's webhooks (whsec_ form, for Standard Webhooks verifiers)",
)
def get_webhook_secret(principal: PrincipalDep, settings: SettingsDep) -> WebhookSecret:
    secret = tenant_webhook_secret(settings, principal.tenant_id)
    return WebhookSecret(secret=secret)
