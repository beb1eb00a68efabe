"""Settings: embedded defaults, environment overrides and the checks that keep the queue safe."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from argd.persistence.settings import Settings, decode_webhook_secret
from argd.persistence.store_settings import s3_location


def test_defaults_live_under_the_data_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert settings.database_url == f"sqlite:///{tmp_path}/argd.sqlite3"
    assert settings.broker_url == "filesystem://"
    options = settings.celery_transport_options()
    assert options["data_folder_in"] == options["data_folder_out"] == str(tmp_path / "broker" / "queue")
    assert settings.queue == "gpu"


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ARGD_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("ARGD_DATABASE_URL", "postgresql+psycopg://u@db/argd")
    monkeypatch.setenv("ARGD_BROKER_URL", "redis://redis:6379/0")
    monkeypatch.setenv("ARGD_BROKER_TRANSPORT_OPTIONS", '{"global_keyprefix": "x:"}')
    settings = Settings()
    assert settings.data_dir == tmp_path
    assert settings.database_url.startswith("postgresql")
    assert settings.celery_transport_options() == {
        "visibility_timeout": settings.visibility_timeout_s,
        "global_keyprefix": "x:",
    }


def test_visibility_timeout_must_exceed_the_job_time_limit() -> None:
    with pytest.raises(ValidationError, match=r"visibility_timeout_s .* must exceed job_time_limit_s"):
        Settings(job_soft_time_limit_s=50, job_time_limit_s=100, visibility_timeout_s=100)
    with pytest.raises(ValidationError, match="must be below job_time_limit_s"):
        Settings(job_soft_time_limit_s=100, job_time_limit_s=100, visibility_timeout_s=200)


def test_webhook_secret_is_checked_or_generated_once(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="must start with 'whsec_'"):
        Settings(webhook_secret="plain")
    settings = Settings(data_dir=tmp_path)
    key = settings.master_webhook_secret()
    assert len(key) == 32 and Settings(data_dir=tmp_path).master_webhook_secret() == key
    assert (tmp_path / "webhook_secret").stat().st_mode & 0o077 == 0
    assert decode_webhook_secret((tmp_path / "webhook_secret").read_text()) == key


def test_artifact_url_is_checked_and_splits_into_bucket_and_prefix() -> None:
    assert s3_location("s3://bucket/a/b/") == ("bucket", "a/b/")
    assert s3_location("s3://bucket") == ("bucket", "")
    assert not Settings().uses_s3_store and Settings(artifact_url="s3://b/p").uses_s3_store
    for bad in ("http://bucket/x", "s3:///x", "s3://b/x?versionId=1", "bucket"):
        with pytest.raises(ValueError, match="artifact_url"):
            Settings(artifact_url=bad)
