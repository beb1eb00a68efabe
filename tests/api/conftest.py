"""API test setup: an in-process app (TestClient) and a live uvicorn server, both on the throw-away Postgres.

The in-process app sends jobs to a queue no worker consumes, so jobs it creates stay `queued` (the live
server and the session worker use the real `gpu` queue). Each test gets a fresh tenant, so counts and
listings only see what that test made.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from argd.api.app import create_app
from argd.persistence.db import get_sessionmaker
from argd.persistence.models import Dataset, Job, Model, Tenant
from argd.persistence.settings import Settings
from tests.fixtures.database import *  # noqa: F403
from tests.fixtures.mlflow_server import *  # noqa: F403
from tests.fixtures.s3 import *  # noqa: F403
from tests.fixtures.server import *  # noqa: F403
from tests.fixtures.server import make_api_key
from tests.fixtures.worker import *  # noqa: F403

#: Upload limit of the in-process app.
APP_MAX_UPLOAD_BYTES = 4 * 1024 * 1024
UNCONSUMED_QUEUE = "api-tests-unconsumed"


@pytest.fixture(scope="session")
def app_settings(service_settings: Settings) -> Settings:
    return service_settings.model_copy(
        update={"queue": UNCONSUMED_QUEUE, "max_upload_bytes": APP_MAX_UPLOAD_BYTES}
    )


@pytest.fixture(scope="session")
def app(app_settings: Settings) -> FastAPI:
    return create_app(app_settings)


class TenantAccount:
    """A tenant made for one test: its name and key, and counts of what it owns."""

    def __init__(self, settings: Settings, name: str):
        self.settings = settings
        self.name = name
        self.key = make_api_key(settings, name)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def counts(self) -> dict[str, int]:
        session = get_sessionmaker(self.settings)()
        try:
            tenant_id = session.scalar(select(Tenant.id).where(Tenant.name == self.name))
            return {
                entity.__tablename__: int(
                    session.scalar(
                        select(func.count()).select_from(entity).where(entity.tenant_id == tenant_id)
                    )
                    or 0
                )
                for entity in (Model, Dataset, Job)
            }
        finally:
            session.close()


@pytest.fixture
def tenant(app_settings: Settings) -> TenantAccount:
    return TenantAccount(app_settings, f"tenant-{uuid.uuid4().hex[:10]}")


@pytest.fixture
def other_tenant(app_settings: Settings) -> TenantAccount:
    return TenantAccount(app_settings, f"other-{uuid.uuid4().hex[:10]}")


@pytest.fixture
def client(app: FastAPI, tenant: TenantAccount) -> Iterator[TestClient]:
    """In-process client authenticated as `tenant`; server errors come back as responses, not raised."""
    with TestClient(app, raise_server_exceptions=False, headers=tenant.headers) as test_client:
        yield test_client


@pytest.fixture
def anonymous(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def stored_files(settings: Settings) -> set[Path]:
    """Every file in the artifact store and the upload scratch folder."""
    roots = [settings.artifacts_dir / "sha256", settings.data_dir / "tmp" / "uploads"]
    return {path for root in roots if root.exists() for path in root.rglob("*") if path.is_file()}
