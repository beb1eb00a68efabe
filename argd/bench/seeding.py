"""Seeding the latency benchmark's database: tenants with keys, inputs, and jobs in a realistic state mix."""

from __future__ import annotations

import hashlib
import random
from datetime import UTC, datetime, timedelta
from typing import Any

from argd.core.params import CleanseParams
from argd.persistence import keys
from argd.persistence.db import get_sessionmaker
from argd.persistence.models import Artifact, Dataset, Job, JobEvent, Model
from argd.persistence.settings import Settings


def _fake_sha(*parts: object) -> str:
    return hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()


def _job_rows(
    rng: random.Random, tenant_id: str, inputs: dict[str, str], params: dict[str, Any], now: datetime
) -> tuple[Job, list[JobEvent]]:
    """One job in a realistic state mix, with the events a worker would have recorded for it."""
    teacher_epochs, epochs = int(params["teacher_epochs"]), int(params["epochs"])
    status = rng.choices(
        ["succeeded", "running", "queued", "failed", "canceled"], weights=[70, 10, 10, 7, 3]
    )[0]
    created = now - timedelta(seconds=rng.uniform(60, 30 * 86400))
    job = Job(
        tenant_id=tenant_id,
        model_id=inputs["model"],
        clean_dataset_id=inputs["clean"],
        test_dataset_id=inputs["test"],
        method="argd",
        params=params,
        status=status,
        epochs=epochs,
        created_at=created,
        updated_at=created,
    )
    total = teacher_epochs + epochs
    if status in ("succeeded", "queued"):
        done = total if status == "succeeded" else 0
    else:  # stopped part-way; cancelled jobs usually early
        done = rng.randint(0, 4) if status == "canceled" else rng.randint(1, total - 1)
    if status != "queued":
        job.attempts = 1
        job.started_at = created + timedelta(seconds=rng.uniform(1, 30))
        job.worker = "bench-host:4242"
    if status == "running":
        job.phase = "teacher" if done < teacher_epochs else "distill"
        job.epoch = done if done < teacher_epochs else done - teacher_epochs
        job.epochs = teacher_epochs if done < teacher_epochs else epochs
        job.fraction = done / total
        job.eta_s = rng.uniform(10, 600)
        job.heartbeat_at = now
    elif status == "succeeded":
        job.phase, job.epoch, job.fraction = "evaluate", epochs, 1.0
        acc, asr = rng.uniform(0.85, 0.93), rng.uniform(0.9, 1.0)
        job.metrics = {
            "before": {"acc": acc, "asr": asr, "ra": rng.uniform(0.0, 0.1)},
            "teacher": {"acc": acc - 0.01, "asr": asr * 0.8, "ra": rng.uniform(0.1, 0.3)},
            "after": {"acc": acc - 0.02, "asr": rng.uniform(0.0, 0.05), "ra": rng.uniform(0.7, 0.9)},
            "der": rng.uniform(0.9, 0.99),
            "fidelity": rng.uniform(0.8, 0.95),
        }
        job.result_model_sha256 = inputs["result"]
    elif status == "failed":
        job.error_code, job.error_message = "out_of_memory", "The GPU ran out of memory; lower batch_size."
    if status in ("succeeded", "failed", "canceled"):
        job.finished_at = created + timedelta(seconds=rng.uniform(120, 3600))
    events = []
    for index in range(done):
        phase, epoch = (
            ("teacher", index + 1) if index < teacher_epochs else ("distill", index - teacher_epochs + 1)
        )
        losses = {name: rng.uniform(0.01, 2.0) for name in ("ce", "node", "edge", "emb", "total")}
        events.append(
            JobEvent(
                attempt=1,
                phase=phase,
                epoch=epoch,
                losses=losses,
                metrics={"lr": 0.01, "val_acc": rng.uniform(0.8, 0.9), "seconds": rng.uniform(5, 60)},
                created_at=created + timedelta(seconds=30 * (index + 1)),
            )
        )
    job.events = events
    return job, events


def seed_jobs(settings: Settings, *, tenants: int, jobs: int, seed: int = 0) -> dict[str, Any]:
    """Tenants with one API key, one model and two datasets each, and `jobs` jobs spread over them.

    Returns {"keys": {tenant: key}, "jobs": {tenant: [job ids]}, "events": n}.
    """
    rng = random.Random(seed)
    params = CleanseParams().model_dump(mode="json")
    now = datetime.now(UTC)
    session = get_sessionmaker(settings)()
    api_keys: dict[str, str] = {}
    job_ids: dict[str, list[str]] = {}
    events = 0
    try:
        tenant_ids: dict[str, str] = {}
        inputs: dict[str, dict[str, str]] = {}
        for t in range(tenants):
            name = f"bench-tenant-{t}"
            api_keys[name] = keys.create_key(session, name, settings)
            tenant = keys.get_or_create_tenant(session, name)
            tenant_ids[name] = tenant.id
            shas = {kind: _fake_sha(seed, t, kind) for kind in ("model", "clean", "test", "result")}
            session.add_all(
                Artifact(
                    sha256=sha, size=1_000_000, kind="model" if kind in ("model", "result") else "dataset"
                )
                for kind, sha in shas.items()
            )
            spec = {"architecture": "wrn-16-1", "num_classes": 10, "in_channels": 3, "image_size": 32}
            model = Model(tenant_id=tenant.id, name="wrn.pt", sha256=shas["model"], size=1_000_000, spec=spec)
            clean, test = (
                Dataset(
                    tenant_id=tenant.id, name=f"{kind}.npz", sha256=shas[kind], size=1_000_000, count=2500,
                    shape=[3, 32, 32], classes=list(range(10)),
                )
                for kind in ("clean", "test")
            )  # fmt: skip
            session.add_all([model, clean, test])
            session.flush()
            inputs[name] = {"model": model.id, "clean": clean.id, "test": test.id, "result": shas["result"]}
            job_ids[name] = []
        names = list(api_keys)
        for start in range(0, jobs, 500):  # flush in batches: bounded session size, batched INSERTs
            batch = []
            for index in range(start, min(start + 500, jobs)):
                name = names[index % tenants]
                job, job_events = _job_rows(rng, tenant_ids[name], inputs[name], params, now)
                session.add(job)
                batch.append((name, job))
                events += len(job_events)
            session.flush()
            for name, job in batch:
                job_ids[name].append(job.id)
            session.expunge_all()
        session.commit()
    finally:
        session.close()
    return {"keys": api_keys, "jobs": job_ids, "events": events}
