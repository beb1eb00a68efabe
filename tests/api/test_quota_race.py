"""The stored-bytes quota under concurrency: check-then-store is atomic, so uploads never overshoot it.

Concurrent real uploads go to the live uvicorn server on Postgres; the interleaving itself is pinned down on
Postgres and on SQLite with two real sessions: while one upload sits between its check and its commit,
another one's check waits, and then counts the first one's bytes.
"""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from argd.jobs.errors import QuotaExceeded
from argd.jobs.quotas import check_upload
from argd.persistence import migrate
from argd.persistence.artifacts import register_artifact
from argd.persistence.db import get_sessionmaker
from argd.persistence.keys import get_or_create_tenant
from argd.persistence.models import Dataset
from argd.persistence.quotas import set_quotas, stored_bytes
from argd.persistence.settings import Settings
from argd.persistence.stores import get_store
from tests.api import payloads
from tests.api.conftest import TenantAccount
from tests.fixtures.server import LiveServer

UPLOADS = 8


def _dataset(seed: int) -> bytes:
    x, y = payloads.images(64, seed=seed)
    return payloads.npz_bytes(x, y)


def test_concurrent_uploads_never_exceed_the_stored_bytes_quota(
    api_server: LiveServer, app_settings: Settings, tenant: TenantAccount
) -> None:
    with api_server.client(tenant.key) as client:
        first = client.post("/v1/datasets", files={"file": ("d0.npz", _dataset(0))})
    assert first.status_code == 201, first.text
    size = first.json()["size_bytes"]  # every upload below stores this many bytes (same shapes)
    with get_sessionmaker(app_settings)() as session:
        set_quotas(session, tenant.name, {"max_stored_bytes": 3 * size + size // 2})
        session.commit()

    start = threading.Barrier(UPLOADS)

    def upload(seed: int) -> httpx.Response:
        body = _dataset(seed)
        with api_server.client(tenant.key) as client:
            start.wait()
            return client.post("/v1/datasets", files={"file": (f"d{seed}.npz", body)})

    with ThreadPoolExecutor(UPLOADS) as pool:
        answers = list(pool.map(upload, range(1, UPLOADS + 1)))

    codes = sorted(answer.status_code for answer in answers)
    assert codes == [201, 201] + [413] * (UPLOADS - 2), [a.text for a in answers if a.status_code >= 500]
    for answer in answers:
        if answer.status_code == 413:
            assert answer.json()["details"]["quota"] == "max_stored_bytes"
    with get_sessionmaker(app_settings)() as session:
        tenant_id = session.scalar(select(Dataset.tenant_id).where(Dataset.id == first.json()["id"]))
        assert tenant_id is not None
        assert stored_bytes(session, tenant_id) == 3 * size <= 3 * size + size // 2
        assert session.scalar(select(func.count(Dataset.id)).where(Dataset.tenant_id == tenant_id)) == 3


@pytest.fixture(params=["postgres", "sqlite"])
def quota_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    if request.param == "postgres":
        settings: Settings = request.getfixturevalue("app_settings")
        return settings
    settings = Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path}/argd.sqlite3")
    migrate.upgrade(settings)
    return settings


def test_a_second_check_waits_for_the_first_upload_and_counts_it(
    quota_settings: Settings, tmp_path: Path
) -> None:
    store = get_store(quota_settings)
    path = tmp_path / "d.npz"
    path.write_bytes(_dataset(0))
    size = path.stat().st_size
    make_session = get_sessionmaker(quota_settings)
    with make_session() as session:
        tenant = get_or_create_tenant(session, f"race-{uuid.uuid4().hex[:8]}")
        tenant_id, name = tenant.id, tenant.name
        set_quotas(session, name, {"max_stored_bytes": size + size // 2})
        session.commit()

    outcome: list[str] = []

    def second_upload() -> None:
        with make_session() as other:
            try:
                check_upload(other, tenant_id, size)
            except QuotaExceeded as exc:
                outcome.append(exc.quota)
            else:
                outcome.append("passed")
            other.rollback()

    with make_session() as first:
        check_upload(first, tenant_id, size)  # passes, and holds the tenant until commit
        waiting = threading.Thread(target=second_upload)
        waiting.start()
        waiting.join(timeout=1.0)
        assert waiting.is_alive() and outcome == []  # the second check waits, it does not race
        blob = store.put_file(path)
        register_artifact(first, blob, "dataset")
        first.add(
            Dataset(
                tenant_id=tenant_id,
                name="d.npz",
                sha256=blob.sha256,
                size=blob.size,
                format="npz",
                count=64,
                shape=[16, 16],
                classes=[0, 1, 2, 3],
            )
        )
        first.commit()
    waiting.join(timeout=30)
    assert outcome == ["max_stored_bytes"]  # it saw the first upload's bytes
