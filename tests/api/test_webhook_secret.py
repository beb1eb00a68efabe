"""Each tenant reads the secret that signs its webhooks, and only its own."""

from __future__ import annotations

import base64
import time

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from argd.jobs.webhooks import sign, tenant_webhook_secret, verify
from argd.persistence.db import get_sessionmaker
from argd.persistence.models import Tenant
from argd.persistence.settings import Settings
from tests.api.conftest import TenantAccount

pytestmark = pytest.mark.service


def tenant_id_of(account: TenantAccount) -> str:
    with get_sessionmaker(account.settings)() as session:
        return session.scalar(select(Tenant.id).where(Tenant.name == account.name))


def test_secret_verifies_what_the_worker_signs(
    client: TestClient, tenant: TenantAccount, other_tenant: TenantAccount, app_settings: Settings
) -> None:
    first = client.get("/v1/webhooks/secret")
    assert first.status_code == 200, first.text
    secret = first.json()["secret"]
    assert secret.startswith("whsec_") and len(base64.b64decode(secret.removeprefix("whsec_"))) >= 24
    assert client.get("/v1/webhooks/secret").json()["secret"] == secret

    # A delivery signed the way the worker signs this tenant's webhooks verifies with the served secret.
    body, now = b'{"type":"job.succeeded"}', int(time.time())
    signing_key = tenant_webhook_secret(app_settings, tenant_id_of(tenant))
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(now),
        "webhook-signature": sign(signing_key, "msg_1", now, body),
    }
    assert verify(secret, headers, body)

    other = client.get("/v1/webhooks/secret", headers=other_tenant.headers)
    assert other.status_code == 200
    assert other.json()["secret"] != secret
    assert not verify(other.json()["secret"], headers, body)


def test_secret_needs_a_key(anonymous: TestClient) -> None:
    assert anonymous.get("/v1/webhooks/secret").status_code == 401
