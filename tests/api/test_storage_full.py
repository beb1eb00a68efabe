"""A full artifact store: uploads get 507 `storage_full` and leave no partial file; a job whose results
cannot be written fails with the code `storage_full`. The store sits on a 2 MiB tmpfs (needs root to
mount; skipped otherwise)."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from argd.api.app import create_app
from argd.persistence.artifacts import STORAGE_FULL_MESSAGE
from argd.persistence.settings import Settings
from argd.worker.runner import classify_failure
from tests.api import payloads
from tests.api.conftest import TenantAccount, stored_files
from tests.fixtures.disk import small_tmpfs

pytestmark = pytest.mark.service


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "disk", "2m") as mount:
        yield mount


def test_an_upload_to_a_full_store_is_507_and_leaves_nothing(
    small_disk: Path, app_settings: Settings, tenant: TenantAccount
) -> None:
    settings = app_settings.model_copy(update={"data_dir": small_disk / "data"})
    with TestClient(create_app(settings), raise_server_exceptions=False, headers=tenant.headers) as client:
        small = client.post(
            "/v1/datasets", files={"file": ("s.npz", payloads.npz_bytes(*payloads.images(8)))}
        )
        assert small.status_code == 201, small.text  # the store works while there is room
        rng = np.random.default_rng(0)
        x = rng.integers(0, 256, (12_000, 16, 16), dtype=np.uint8)  # ~3 MB, incompressible
        big = client.post(
            "/v1/datasets", files={"file": ("b.npz", payloads.npz_bytes(x, np.zeros(12_000, np.int64)))}
        )
        assert big.status_code == 507, big.text
        body = big.json()
        assert body["code"] == "storage_full" and body["detail"] == STORAGE_FULL_MESSAGE
    leftovers = set(stored_files(settings))
    assert len(leftovers) == 1  # the first dataset only: no partial upload, no staged artifact
    assert tenant.counts()["datasets"] == 1


def test_a_job_that_cannot_write_fails_with_storage_full(app_settings: Settings) -> None:
    for number in (errno.ENOSPC, errno.EDQUOT):
        assert classify_failure(OSError(number, "No space left on device"), app_settings) == (
            "storage_full",
            STORAGE_FULL_MESSAGE,
        )
    assert classify_failure(OSError(errno.EACCES, "denied"), app_settings)[0] == "internal"  # type: ignore[index]
