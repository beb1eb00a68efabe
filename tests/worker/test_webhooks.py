"""Webhooks: URL policy, Standard Webhooks signatures, real deliveries with retries and records, and the
body's job object being the API's job, key for key."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from argd.api.app import create_app
from argd.jobs.webhooks import (
    WebhookUrlError,
    sign,
    tenant_webhook_secret,
    validate_webhook_url,
    verify,
)
from argd.persistence import jobs, keys
from argd.persistence.db import session_scope
from argd.persistence.models import Tenant
from argd.persistence.settings import Settings
from argd.worker.dispatch import enqueue_job, notify_finished
from argd.worker.webhooks import post_signed
from tests.fixtures.receiver import Answer, Receiver, receiving
from tests.fixtures.worker import WorkerProcess
from tests.worker.helpers import finished, submit, upload_inputs, wait_for

STRICT = Settings(webhook_secret="whsec_" + "c2VjcmV0LXNlY3JldC1zZWNyZXQ=")
LOOPBACK_OK = Settings(webhook_allow_http_loopback=True)


def test_signature_matches_the_standard_webhooks_test_vector() -> None:
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    assert sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == (
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )


def test_verify_accepts_the_signed_body_only() -> None:
    import time

    secret = tenant_webhook_secret(STRICT, "tenant-a")
    now = int(time.time())
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(now),
        "webhook-signature": sign(secret, "msg_1", now, b"{}"),
    }
    assert verify(secret, headers, b"{}")
    assert not verify(secret, headers, b'{"x":1}')
    assert not verify(tenant_webhook_secret(STRICT, "tenant-b"), headers, b"{}")  # tenants cannot forge
    old = {**headers, "webhook-timestamp": str(now - 3600)}
    old["webhook-signature"] = sign(secret, "msg_1", now - 3600, b"{}")
    assert not verify(secret, old, b"{}")  # replayed long after


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://example.com/hook", "must use https"),
        ("ftp://example.com/hook", "must use https"),
        ("https://10.0.0.5/hook", "private or reserved"),
        ("https://192.168.1.1/hook", "private or reserved"),
        ("https://169.254.169.254/latest/meta-data", "private or reserved"),
        ("https://[::1]/hook", "loopback"),
        ("https://[::ffff:10.0.0.1]/hook", "private or reserved"),
        ("https://127.0.0.1/hook", "loopback"),
        ("https://localhost/hook", "loopback name"),
        ("https://db.internal/hook", "local-network name"),
        ("https://user:pw@example.com/hook", "credentials"),
        ("https:///hook", "no host"),
    ],
)
def test_private_and_plain_http_targets_are_refused(url: str, reason: str) -> None:
    with pytest.raises(WebhookUrlError, match=reason):
        validate_webhook_url(url, STRICT)


def test_settings_relax_the_policy_for_tests_and_private_deployments() -> None:
    assert validate_webhook_url("https://example.com/hook?x=1", STRICT) == "https://example.com/hook?x=1"
    assert validate_webhook_url("http://127.0.0.1:8080/hook", LOOPBACK_OK)
    assert validate_webhook_url("http://localhost:8080/hook", LOOPBACK_OK)
    with pytest.raises(WebhookUrlError, match="private or reserved"):
        validate_webhook_url("https://10.0.0.5/hook", LOOPBACK_OK)  # loopback only, not the private ranges
    with pytest.raises(WebhookUrlError, match="must use https"):
        validate_webhook_url("http://10.0.0.5/hook", Settings(webhook_allow_private=True))
    assert validate_webhook_url("https://10.0.0.5/hook", Settings(webhook_allow_private=True))


def test_delivery_rechecks_the_target_and_sends_nothing_to_a_forbidden_one() -> None:
    result = post_signed(
        "https://127.0.0.1:9/hook",
        b"{}",
        message_id="msg_x",
        secret=tenant_webhook_secret(STRICT, "t"),
        settings=STRICT,
    )
    assert not result.ok and not result.retryable and result.status_code is None
    assert result.error is not None and "loopback" in result.error


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """Fails the first request with a 500, then answers 204."""
    with receiving([Answer(500), Answer(204)]) as server:
        yield server


def _deliveries(settings: Settings, job_id: str) -> list[tuple[int, int | None, bool]]:
    with session_scope(settings) as session:
        return [(d.attempt, d.status_code, d.succeeded) for d in jobs.webhook_deliveries(session, job_id)]


@pytest.mark.service
def test_webhook_is_signed_retried_and_recorded(
    service_settings: Settings, worker: WorkerProcess, receiver: Receiver, tmp_path: Path
) -> None:
    inputs = upload_inputs(service_settings, tmp_path, images=32)
    url = validate_webhook_url(receiver.url, service_settings)
    job_id = submit(service_settings, inputs, {"epochs": 1}, webhook_url=url)
    enqueue_job(job_id, service_settings)
    wait_for(
        service_settings, job_id, lambda j: j.webhook_status in ("delivered", "failed"), 60, "the webhook"
    )

    assert _deliveries(service_settings, job_id) == [(1, 500, False), (2, 204, True)]
    assert len(receiver.requests) == 2
    secret = tenant_webhook_secret(service_settings, inputs.tenant_id)
    (first_headers, first_body), (headers, body) = ((r.headers, r.body) for r in receiver.requests)
    assert verify(secret, headers, body)
    assert first_headers["webhook-id"] == headers["webhook-id"] and first_body == body  # one message, retried
    assert headers["webhook-signature"].startswith("v1,")
    event = json.loads(body)
    assert event["type"] == "job.succeeded"
    assert event["data"]["id"] == job_id and event["data"]["status"] == "succeeded"
    assert event["data"]["metrics"]["after"]["acc"] is not None

    # A queued job canceled through the API's path: the API commits, then asks for the webhook.
    receiver.answers = [Answer(204)]
    canceled_id = submit(service_settings, inputs, {"epochs": 1}, webhook_url=url)
    with session_scope(service_settings) as session:
        jobs.request_cancel(session, canceled_id)
    notify_finished(canceled_id, service_settings)
    notify_finished(canceled_id, service_settings)  # asked twice, sent once
    job = wait_for(
        service_settings, canceled_id, lambda j: j.webhook_status == "delivered", 30, "the webhook"
    )
    assert job.status == "canceled"
    assert json.loads(receiver.requests[-1].body)["type"] == "job.canceled"
    assert _deliveries(service_settings, canceled_id) == [(1, 204, True)]


@pytest.mark.service
def test_private_target_is_refused_at_delivery(
    service_settings: Settings, worker: WorkerProcess, tmp_path: Path
) -> None:
    inputs = upload_inputs(service_settings, tmp_path, images=32)
    # Written straight to the database, past the API's check: the worker checks again before sending.
    job_id = submit(
        service_settings, inputs, {"epochs": 1}, target_label=9, webhook_url="https://10.20.30.40/h"
    )
    enqueue_job(job_id, service_settings)
    job = wait_for(service_settings, job_id, lambda j: j.webhook_status == "failed", 60, "the refusal")
    assert finished(job) and job.error_code == "invalid_input"
    with session_scope(service_settings) as session:
        (delivery,) = jobs.webhook_deliveries(session, job_id)
    assert delivery.event_type == "job.failed" and delivery.status_code is None and not delivery.succeeded
    assert delivery.error is not None and "private or reserved" in delivery.error


@pytest.mark.service
def test_webhook_job_is_the_apis_job_key_for_key(
    service_settings: Settings, worker: WorkerProcess, receiver: Receiver, tmp_path: Path
) -> None:
    receiver.answers = [Answer(204)]
    inputs = upload_inputs(service_settings, tmp_path, images=32)
    job_id = submit(service_settings, inputs, {"epochs": 1}, webhook_url=receiver.url)
    enqueue_job(job_id, service_settings)
    wait_for(service_settings, job_id, lambda j: j.webhook_status == "delivered", 60, "the webhook")
    with session_scope(service_settings) as session:
        tenant = session.get(Tenant, inputs.tenant_id)
        assert tenant is not None
        api_key = keys.create_key(session, tenant.name, service_settings)

    with TestClient(create_app(service_settings)) as client:
        answer = client.get(f"/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {api_key}"})
    assert answer.status_code == 200
    polled = answer.json()
    pushed = json.loads(receiver.requests[0].body)["data"]

    assert pushed.keys() == polled.keys()
    for key in polled:
        assert pushed[key] == polled[key], key
    assert polled["status"] == "succeeded" and polled["history"] and polled["result_sha256"]


@pytest.mark.parametrize("where", ["receiver", "metadata"])
def test_a_redirect_is_never_followed(receiver: Receiver, where: str) -> None:
    """A receiver that redirects (to another local endpoint, or to the cloud metadata address) gets a
    failed, retried delivery; the redirect's target is never called."""
    location = receiver.url if where == "receiver" else "http://169.254.169.254/latest/meta-data/"
    with receiving([Answer(307, location=location)]) as redirector:
        secret = tenant_webhook_secret(LOOPBACK_OK, "t")
        result = post_signed(redirector.url, b"{}", message_id="msg_r", secret=secret, settings=LOOPBACK_OK)
    assert len(redirector.requests) == 1
    assert not result.ok and result.status_code == 307 and result.retryable
    assert receiver.requests == []
