"""Job state transitions: the allowed ones happen once, the illegal ones are refused, lost jobs come back."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from argd.persistence import jobs
from argd.persistence.artifacts import LocalArtifactStore
from argd.persistence.models import Job, utcnow
from tests.persistence.helpers import Inputs, make_inputs, make_job

pytestmark = pytest.mark.service


@pytest.fixture
def store(tmp_path: Path) -> LocalArtifactStore:
    return LocalArtifactStore(tmp_path / "artifacts")


@pytest.fixture
def inputs(db_session: Session, store: LocalArtifactStore) -> Inputs:
    made = make_inputs(db_session, store)
    db_session.commit()
    return made


def _claim(session: Session, job_id: str, worker: str = "host:1", **kw: float) -> jobs.Claim:
    claim = jobs.claim_job(
        session,
        job_id,
        worker=worker,
        stale_after_s=kw.get("stale_after_s", 60),
        max_attempts=int(kw.get("max_attempts", 3)),
    )
    session.commit()
    return claim


def _age_heartbeat(session: Session, job_id: str, seconds: float) -> None:
    session.execute(
        update(Job).where(Job.id == job_id).values(heartbeat_at=utcnow() - timedelta(seconds=seconds))
    )
    session.commit()


def test_a_job_runs_once_and_finishes_once(
    db_session: Session, inputs: Inputs, store: LocalArtifactStore
) -> None:
    job = make_job(db_session, inputs)
    assert (job.status, job.attempts, job.epochs, job.method) == ("queued", 0, 3, "argd")

    claim = _claim(db_session, job.id)
    assert (claim.outcome, claim.attempt, claim.resumed) == ("claimed", 1, False)
    assert claim.job is not None and claim.job.status == "running" and claim.job.started_at is not None
    assert _claim(db_session, job.id, worker="other:2").outcome == "busy"  # a duplicate message

    assert jobs.update_progress(
        db_session, job.id, 1, phase="distill", epoch=1, epochs=3, fraction=0.4, eta_s=12.0
    )
    jobs.record_epoch(
        db_session, job.id, 1, phase="distill", epoch=1, losses={"ce": 0.5}, metrics={"acc": 0.9}
    )
    model = store.put_stream([b"cleansed"])
    report = store.put_stream([b"{}"])
    done = jobs.mark_succeeded(
        db_session, store, job.id, 1, metrics={"after": {"acc": 0.9}}, model=model, report=report
    )
    db_session.commit()
    assert (done.status, done.fraction, done.result_model_sha256) == ("succeeded", 1.0, model.sha256)
    assert done.finished_at is not None and done.finished_at >= done.started_at
    assert [(e.phase, e.epoch, e.losses) for e in jobs.job_events(db_session, job.id)] == [
        ("distill", 1, {"ce": 0.5})
    ]

    with pytest.raises(jobs.IllegalTransition, match="is succeeded; it cannot become failed"):
        jobs.mark_failed(db_session, store, job.id, 1, code="internal", message="late")
    with pytest.raises(jobs.IllegalTransition, match="already finished"):
        jobs.request_cancel(db_session, job.id)
    assert _claim(db_session, job.id).outcome == "finished"


def test_illegal_transitions_are_refused(
    db_session: Session, inputs: Inputs, store: LocalArtifactStore
) -> None:
    job = make_job(db_session, inputs)
    blob = store.put_stream([b"x"])
    with pytest.raises(jobs.IllegalTransition, match="is queued; it cannot become succeeded"):
        jobs.mark_succeeded(db_session, store, job.id, 0, metrics={}, model=blob, report=blob)
    db_session.rollback()
    with pytest.raises(jobs.IllegalTransition, match="cannot become deleted"):
        jobs.delete_job(db_session, store, job.id)
    with pytest.raises(ValueError, match="unknown error code"):
        jobs.mark_failed(db_session, store, job.id, 0, code="oops", message="x")
    with pytest.raises(jobs.JobNotFound):
        jobs.request_cancel(db_session, "no-such-job")
    assert db_session.get(Job, job.id).status == "queued"  # type: ignore[union-attr]


def test_superseded_attempt_cannot_write(
    db_session: Session, inputs: Inputs, store: LocalArtifactStore
) -> None:
    job = make_job(db_session, inputs)
    assert _claim(db_session, job.id, stale_after_s=5).attempt == 1
    _age_heartbeat(db_session, job.id, 60)
    takeover = _claim(db_session, job.id, worker="host:2", stale_after_s=5)
    assert (takeover.outcome, takeover.attempt, takeover.resumed) == ("claimed", 2, True)
    # The first attempt's process comes back to life: everything it writes is refused.
    assert jobs.heartbeat(db_session, job.id, 1) is None
    assert not jobs.update_progress(
        db_session, job.id, 1, phase="distill", epoch=9, epochs=9, fraction=1, eta_s=0
    )
    with pytest.raises(jobs.IllegalTransition, match="superseded by attempt 2"):
        jobs.mark_failed(db_session, store, job.id, 1, code="internal", message="x")
    db_session.rollback()
    assert jobs.heartbeat(db_session, job.id, 2) is False


def test_lost_attempt_past_the_time_limit_is_not_run_again(db_session: Session, inputs: Inputs) -> None:
    # The hard time limit killed the attempt's process and Celery requeued the message anyway.
    job = make_job(db_session, inputs)
    _claim(db_session, job.id)
    db_session.execute(
        update(Job).where(Job.id == job.id).values(attempt_started_at=utcnow() - timedelta(hours=2))
    )
    _age_heartbeat(db_session, job.id, 60)
    claim = jobs.claim_job(
        db_session, job.id, worker="host:3", stale_after_s=10, max_attempts=3, time_limit_s=3600
    )
    db_session.commit()
    assert claim.outcome == "timed_out" and claim.job is not None
    assert (claim.job.status, claim.job.error_code, claim.job.attempts) == ("failed", "timed_out", 1)
    assert claim.job.error_message == "The job ran past the time limit of 3600 s and was stopped."


def test_cancel_queued_is_immediate_and_running_is_flagged(db_session: Session, inputs: Inputs) -> None:
    queued = make_job(db_session, inputs)
    canceled = jobs.request_cancel(db_session, queued.id)
    db_session.commit()
    assert canceled.status == "canceled" and canceled.finished_at is not None
    assert _claim(db_session, queued.id).outcome == "finished"  # its message arrives later: dropped

    running = make_job(db_session, inputs)
    _claim(db_session, running.id)
    flagged = jobs.request_cancel(db_session, running.id)
    db_session.commit()
    assert (flagged.status, flagged.cancel_requested) == ("running", True)
    assert jobs.heartbeat(db_session, running.id, 1) is True  # the worker learns it with its next beat
    done = jobs.mark_canceled(db_session, None, running.id, 1)
    assert done.status == "canceled"


def test_recovery_requeues_fails_and_cancels_lost_jobs(db_session: Session, inputs: Inputs) -> None:
    lost = make_job(db_session, inputs)
    exhausted = make_job(db_session, inputs)
    overtime = make_job(db_session, inputs)
    alive = make_job(db_session, inputs)
    cancel = make_job(db_session, inputs)
    for job in (lost, exhausted, overtime, alive, cancel):
        _claim(db_session, job.id)
    db_session.execute(update(Job).where(Job.id == exhausted.id).values(attempts=3))
    db_session.execute(
        update(Job).where(Job.id == overtime.id).values(attempt_started_at=utcnow() - timedelta(hours=2))
    )
    db_session.execute(update(Job).where(Job.id == cancel.id).values(cancel_requested=True))
    for job in (lost, exhausted, overtime, cancel):
        _age_heartbeat(db_session, job.id, 30)

    result = jobs.requeue_stale_jobs(db_session, None, stale_after_s=10, max_attempts=3, time_limit_s=3600)
    db_session.commit()
    assert result.requeued == [lost.id]
    assert sorted(result.failed) == sorted([exhausted.id, overtime.id])
    assert result.canceled == [cancel.id]

    def state(job: Job) -> tuple[str, str | None]:
        row = db_session.get(Job, job.id, populate_existing=True)
        assert row is not None
        return row.status, row.error_code

    assert state(lost) == ("queued", None)
    assert state(exhausted) == ("failed", "worker_lost")
    assert state(overtime) == ("failed", "timed_out")
    assert state(alive) == ("running", None)
    assert state(cancel) == ("canceled", None)
    # A second pass (another worker's) finds nothing left to do.
    again = jobs.requeue_stale_jobs(db_session, None, stale_after_s=10, max_attempts=3, time_limit_s=3600)
    assert again == jobs.Recovery()
    resumed = _claim(db_session, lost.id)
    assert (resumed.outcome, resumed.attempt, resumed.resumed) == ("claimed", 2, True)


def test_checkpoints_replace_each_other_and_go_with_the_job(
    db_session: Session, inputs: Inputs, store: LocalArtifactStore
) -> None:
    job = make_job(db_session, inputs)
    _claim(db_session, job.id)
    first = store.put_stream([b"epoch 1"])
    jobs.set_checkpoint(db_session, store, job.id, 1, first)
    db_session.commit()
    second = store.put_stream([b"epoch 2"])
    jobs.set_checkpoint(db_session, store, job.id, 1, second)
    db_session.commit()
    assert not store.exists(first.sha256) and store.exists(second.sha256)
    jobs.mark_failed(db_session, store, job.id, 1, code="out_of_memory", message="out of memory")
    db_session.commit()
    assert not store.exists(second.sha256)


def test_idempotency_key_replays_and_conflicts(db_session: Session, inputs: Inputs) -> None:
    job = make_job(db_session, inputs, idempotency_key="k-1", request_hash="a" * 64)
    again, created = jobs.create_job(
        db_session,
        tenant_id=inputs.tenant_id,
        model_id=inputs.model_id,
        clean_dataset_id=inputs.dataset_id,
        params={"epochs": 3},
        idempotency_key="k-1",
        request_hash="a" * 64,
    )
    assert (again.id, created) == (job.id, False)
    with pytest.raises(jobs.IdempotencyConflict, match="different request"):
        jobs.create_job(
            db_session,
            tenant_id=inputs.tenant_id,
            model_id=inputs.model_id,
            clean_dataset_id=inputs.dataset_id,
            params={"epochs": 4},
            idempotency_key="k-1",
            request_hash="b" * 64,
        )
    assert [j.id for j in db_session.scalars(select(Job).where(Job.tenant_id == inputs.tenant_id))] == [
        job.id
    ]
    assert jobs.jobs_using(db_session, model_id=inputs.model_id) == [job]
    assert jobs.jobs_using(db_session, dataset_id="other") == []
