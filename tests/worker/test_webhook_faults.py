"""Faults at the webhook receiver: slower than the delivery timeout, answering 500, or down.

Real jobs on the session worker deliver to a real HTTP receiver on loopback. The session settings
(`tests.fixtures.database`) make the policy fast: 3 attempts, 0.2 s backoff doubling per attempt, a 2 s
request timeout. Each test checks the delivery records (attempt, status, error, outcome), what the receiver
got (one message, the same id and body on every attempt), the backoff between attempts, and that the job
itself is untouched: still `succeeded`, one attempt, the same history and result, never run again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from argd.persistence import jobs
from argd.persistence.db import session_scope
from argd.persistence.models import Job, WebhookDelivery
from argd.persistence.settings import Settings
from argd.worker.dispatch import enqueue_job
from argd.worker.webhooks import backoff_s
from tests.fixtures.receiver import Answer, receiving, refusing_url
from tests.fixtures.worker import WorkerProcess
from tests.worker.helpers import Uploaded, submit, upload_inputs, wait_for

pytestmark = pytest.mark.service


@dataclass(frozen=True)
class JobSnapshot:
    status: str
    attempts: int
    finished_at: object
    result: tuple[str | None, str | None]
    events: tuple[tuple[int, str, int], ...]


def _snapshot(settings: Settings, job_id: str) -> JobSnapshot:
    with session_scope(settings) as session:
        job = session.get(Job, job_id)
        assert job is not None
        events = tuple((e.id, e.phase, e.epoch) for e in jobs.job_events(session, job_id))
        return JobSnapshot(
            job.status, job.attempts, job.finished_at, (job.result_model_sha256, job.report_sha256), events
        )


def _deliveries(settings: Settings, job_id: str) -> list[WebhookDelivery]:
    with session_scope(settings) as session:
        rows = jobs.webhook_deliveries(session, job_id)
        session.expunge_all()
        return rows


def _run_with_webhook(settings: Settings, inputs: Uploaded, url: str) -> tuple[str, JobSnapshot]:
    """Submit a one-epoch job with the webhook, wait until it has succeeded and its delivery has ended."""
    job_id = submit(settings, inputs, {"epochs": 1}, webhook_url=url)
    enqueue_job(job_id, settings)
    wait_for(settings, job_id, lambda j: j.status == "succeeded", 90, "the job")
    before = _snapshot(settings, job_id)
    wait_for(settings, job_id, lambda j: j.webhook_status in ("delivered", "failed"), 60, "the webhook")
    return job_id, before


def _assert_job_untouched(settings: Settings, job_id: str, before: JobSnapshot) -> None:
    after = _snapshot(settings, job_id)
    assert after == before
    assert after.status == "succeeded" and after.attempts == 1 and after.result[0] is not None
    epochs = [(phase, epoch) for _, phase, epoch in after.events]
    assert len(epochs) == len(set(epochs))  # each epoch once: nothing ran again


def test_a_slow_then_failing_receiver_is_retried_until_it_answers(
    service_settings: Settings, worker: WorkerProcess, tmp_path: Path
) -> None:
    timeout = service_settings.webhook_timeout_s
    slow = Answer(204, delay_s=timeout + 1.5)  # answers, but only after the delivery gave up
    inputs = upload_inputs(service_settings, tmp_path, images=32)
    with receiving([slow, Answer(500), Answer(204)]) as receiver:
        job_id, before = _run_with_webhook(service_settings, inputs, receiver.url)
        deliveries = _deliveries(service_settings, job_id)
        requests = list(receiver.requests)

    assert [(d.attempt, d.status_code, d.succeeded) for d in deliveries] == [
        (1, None, False),
        (2, 500, False),
        (3, 204, True),
    ]
    assert deliveries[0].error is not None and "Timeout" in deliveries[0].error
    assert deliveries[0].duration_ms is not None and deliveries[0].duration_ms >= timeout * 1000 * 0.9
    assert deliveries[1].error == "HTTP 500"
    assert {(d.event_type, d.message_id) for d in deliveries} == {
        ("job.succeeded", f"msg_{job_id}_job.succeeded")
    }
    # One message, retried: the same id and body each time, each attempt after its backoff.
    assert len(requests) == 3
    assert len({(r.headers["webhook-id"], r.body) for r in requests}) == 1
    for attempt in (1, 2):
        gap = requests[attempt].at - requests[attempt - 1].at
        assert gap >= backoff_s(attempt, service_settings), (attempt, gap)
    wait_for(service_settings, job_id, lambda j: j.webhook_status == "delivered", 1, "the outcome")
    _assert_job_untouched(service_settings, job_id, before)


@pytest.mark.parametrize("fault", ["down", "500"])
def test_a_receiver_that_stays_down_or_failing_fails_the_delivery_not_the_job(
    service_settings: Settings, worker: WorkerProcess, tmp_path: Path, fault: str
) -> None:
    inputs = upload_inputs(service_settings, tmp_path, images=32)
    attempts = service_settings.webhook_max_attempts
    if fault == "down":
        with refusing_url() as url:
            job_id, before = _run_with_webhook(service_settings, inputs, url)
            time.sleep(2 * backoff_s(attempts, service_settings))  # no attempt past the last
    else:
        with receiving([Answer(500)]) as receiver:
            job_id, before = _run_with_webhook(service_settings, inputs, receiver.url)
            time.sleep(2 * backoff_s(attempts, service_settings))
            assert len(receiver.requests) == attempts

    deliveries = _deliveries(service_settings, job_id)
    assert [d.attempt for d in deliveries] == list(range(1, attempts + 1))
    assert not any(d.succeeded for d in deliveries)
    if fault == "down":
        assert all(d.status_code is None and "ConnectError" in (d.error or "") for d in deliveries)
    else:
        assert all(d.status_code == 500 and d.error == "HTTP 500" for d in deliveries)
    wait_for(service_settings, job_id, lambda j: j.webhook_status == "failed", 1, "the outcome")
    _assert_job_untouched(service_settings, job_id, before)
