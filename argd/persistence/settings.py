"""Service settings: one pydantic-settings class read from `ARGD_*` environment variables.

Every process of the service (API, worker, CLI, migrations) reads the same class, so a deployment is
described by one set of variables. With no variables at all everything lives under one data directory: a
SQLite file, the artifact folder and a broker made of plain folders (kombu's filesystem transport), which is
what `argd serve` runs on. Setting `ARGD_DATABASE_URL` and `ARGD_BROKER_URL` switches the same code to
Postgres and Redis.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from argd.persistence.store_settings import ArtifactStoreSettings

WEBHOOK_SECRET_PREFIX = "whsec_"


class Settings(ArtifactStoreSettings):
    """Configuration of the API, the workers and the command line (environment prefix `ARGD_`).

    The artifact store's settings (local folder or S3, the workers' input cache) come from the base class.
    """

    model_config = SettingsConfigDict(env_prefix="ARGD_", extra="ignore", validate_default=True)

    data_dir: Path = Field(
        Path("./argd-data"),
        description="Folder holding the artifact store, the default SQLite database, the default broker "
        "folders and the generated webhook secret",
    )
    database_url: str = Field(
        "",
        description="SQLAlchemy URL of the database, e.g. postgresql+psycopg://user:pw@host/argd; "
        "empty: a SQLite file <data_dir>/argd.sqlite3",
    )
    broker_url: str = Field(
        "",
        description="Celery broker URL, e.g. redis://host:6379/0; empty: kombu's filesystem transport in "
        "<data_dir>/broker (no server needed, one machine only)",
    )
    broker_transport_options: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra kombu transport options (JSON), merged over the computed ones (visibility "
        'timeout, folders), e.g. {"global_keyprefix": "argd:"} to share a Redis database',
    )
    queue: str = Field("gpu", min_length=1, max_length=64, description="Celery queue the cleanse jobs go to")

    max_upload_bytes: int = Field(
        2 * 1024**3, ge=1024, description="Largest accepted upload (model or dataset)"
    )
    max_tensors: int = Field(10_000, ge=1, description="Most tensors accepted in an uploaded state dict")
    stale_upload_after_s: float = Field(
        3600.0,
        ge=600,
        description="Temporary upload files (in <data_dir>/tmp/uploads and the artifact store's tmp folder) "
        "older than this many seconds are deleted at API startup and on the workers' recovery timer: a "
        "process killed mid-upload left them. An upload in progress keeps writing to its file, so its mtime "
        "stays fresh; keep this above the longest pause in an upload, validation included. At least 600; "
        "the sweep cannot be turned off",
    )

    job_soft_time_limit_s: int = Field(
        6 * 3600, ge=1, description="Seconds after which a job attempt is stopped and fails with 'timed_out'"
    )
    job_time_limit_s: int = Field(
        6 * 3600 + 300,
        ge=1,
        description="Hard limit: the worker process running an attempt is killed after this many seconds",
    )
    visibility_timeout_s: int = Field(
        7 * 3600,
        ge=1,
        description="Redis visibility timeout: an unacknowledged job message is redelivered after this long; "
        "must exceed job_time_limit_s",
    )
    max_attempts: int = Field(
        3, ge=1, le=100, description="Attempts of a job (its worker died or was lost) before it fails"
    )
    progress_interval_s: float = Field(
        2.0,
        gt=0,
        description="Least seconds between two progress writes of a running job (epoch ends always write)",
    )
    heartbeat_interval_s: float = Field(
        1.0, gt=0, description="How often a running job's worker beats and reads the job's cancel flag"
    )
    stale_after_s: float = Field(
        120.0,
        gt=0,
        description="A running job whose heartbeat is older than this is taken to have lost its worker",
    )
    recovery_interval_s: float = Field(
        30.0, gt=0, description="How often each worker looks for jobs whose worker was lost, to requeue them"
    )

    webhook_secret: SecretStr | None = Field(
        None,
        description="Master secret ('whsec_' + base64) from which each tenant's webhook signing secret is "
        "derived; unset: generated once and kept in <data_dir>/webhook_secret (set it when workers run on "
        "several hosts)",
    )
    webhook_allow_private: bool = Field(
        False, description="Allow webhook targets in private, loopback, link-local or reserved address ranges"
    )
    webhook_allow_http_loopback: bool = Field(
        False, description="Allow plain-http webhooks to loopback addresses (for tests and local development)"
    )
    webhook_max_attempts: int = Field(6, ge=1, le=50, description="Delivery attempts of one webhook event")
    webhook_backoff_s: float = Field(
        5.0, gt=0, description="Delay before the second delivery attempt; doubles with each further attempt"
    )
    webhook_timeout_s: float = Field(10.0, gt=0, description="Timeout of one webhook HTTP request")

    device: str = Field("auto", description="Torch device of the workers: auto, cpu, cuda or cuda:N")
    worker_concurrency: int = Field(
        1, ge=1, le=64, description="Jobs run at once by one worker (one per GPU)"
    )
    torch_threads: int | None = Field(
        None, ge=1, le=256, description="CPU threads of torch in workers (unset: torch's)"
    )
    api_key_pepper: SecretStr = Field(
        SecretStr(""), description="Secret mixed into API-key hashes; changing it invalidates every key"
    )
    auth_failure_limit: int = Field(
        20, ge=1, le=100_000, description="Invalid API keys from one client address before it gets 429"
    )
    auth_failure_window_s: float = Field(
        60.0, gt=0, le=86_400, description="Window over which invalid keys from one client are counted"
    )
    cors_origins: list[str] = Field(
        default_factory=list, description="Origins allowed to call the API from a browser (JSON list)"
    )

    # Integrations (README, "MLflow" and "Prometheus"): off unless the operator sets them.
    mlflow_tracking_uri: str = Field(
        "",
        max_length=2048,
        description="MLflow tracking server (http(s)://host:port) that jobs with an `mlflow` block export "
        "to; empty: such jobs are refused with 422. Credentials come from MLflow's own MLFLOW_TRACKING_* "
        "variables in the workers' environment",
    )
    mlflow_timeout_s: float = Field(
        30.0, gt=0, le=600, description="Timeout of one request to the MLflow server (each is tried twice)"
    )
    metrics_token: SecretStr | None = Field(
        None,
        description="Operator token for GET /metrics on the API port (Authorization: Bearer <token>); "
        "unset: /metrics on the API port answers 404",
    )
    metrics_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Serve the Prometheus metrics on this separate port as well (no token; bind it where "
        "only the scraper reaches); unset: no separate port",
    )
    metrics_host: str = Field("0.0.0.0", description="Address the separate metrics port binds to")

    @field_validator("data_dir")
    @classmethod
    def _absolute_data_dir(cls, value: Path) -> Path:
        return value.expanduser().absolute()

    @field_validator("metrics_token")
    @classmethod
    def _check_metrics_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        if len(value.get_secret_value()) < 16:
            raise ValueError("metrics_token must be at least 16 characters")
        return value

    @field_validator("mlflow_tracking_uri")
    @classmethod
    def _check_mlflow_uri(cls, value: str) -> str:
        value = value.strip()
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("mlflow_tracking_uri must be an http:// or https:// URL of an MLflow server")
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _check_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value():
            decode_webhook_secret(value.get_secret_value())
            return value
        return None

    @model_validator(mode="after")
    def _fill_defaults_and_check_limits(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'argd.sqlite3'}"
        if not self.broker_url:
            self.broker_url = "filesystem://"
        if self.job_soft_time_limit_s >= self.job_time_limit_s:
            raise ValueError(
                f"job_soft_time_limit_s ({self.job_soft_time_limit_s}) must be below job_time_limit_s "
                f"({self.job_time_limit_s}) so that a job can record its timeout before it is killed"
            )
        if self.visibility_timeout_s <= self.job_time_limit_s:
            raise ValueError(
                f"visibility_timeout_s ({self.visibility_timeout_s}) must exceed job_time_limit_s "
                f"({self.job_time_limit_s}), or Redis redelivers jobs that are still running"
            )
        if self.stale_after_s <= 2 * self.heartbeat_interval_s:
            raise ValueError("stale_after_s must be more than twice heartbeat_interval_s")
        return self

    @property
    def uses_filesystem_broker(self) -> bool:
        return self.broker_url.startswith("filesystem:")

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "artifacts"

    @property
    def input_cache_dir(self) -> Path:
        """The workers' cache of inputs fetched from an object store."""
        return self.cache_dir or self.data_dir / "cache"

    @property
    def work_dir(self) -> Path:
        """Scratch space of the workers (inputs fetched from the store, the live checkpoint)."""
        return self.data_dir / "work"

    def celery_transport_options(self) -> dict[str, Any]:
        """Kombu transport options: folders for the filesystem broker, the visibility timeout otherwise."""
        options: dict[str, Any]
        if self.uses_filesystem_broker:
            root = self.data_dir / "broker"
            options = {
                "data_folder_in": str(root / "queue"),
                "data_folder_out": str(root / "queue"),
                "control_folder": str(root / "control"),
                "processed_folder": str(root / "processed"),
                "polling_interval": 0.5,
            }
        else:
            options = {"visibility_timeout": self.visibility_timeout_s}
        options.update(self.broker_transport_options)
        return options

    def ensure_dirs(self) -> None:
        """Create the data directory and, for the embedded broker, its folders."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.uses_filesystem_broker:
            options = self.celery_transport_options()
            for key in ("data_folder_in", "data_folder_out", "control_folder", "processed_folder"):
                Path(options[key]).mkdir(parents=True, exist_ok=True)

    def to_env(self, fields: Iterable[str] | None = None) -> dict[str, str]:
        """These settings as the `ARGD_*` variables that make another process read the same values.

        Lists and dicts are JSON, booleans `true`/`false`, secrets in clear; unset (None) values are left
        out. `fields` limits it to those settings (by attribute name).
        """
        values = self.model_dump(include=set(fields) if fields is not None else None)
        env: dict[str, str] = {}
        for name, value in values.items():
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, dict | list):
                text = json.dumps(value)
            else:
                text = str(value)
            env[f"ARGD_{name.upper()}"] = text
        return env

    def master_webhook_secret(self) -> bytes:
        """The master signing key: from settings, else generated once and kept in the data directory."""
        if self.webhook_secret is not None:
            return decode_webhook_secret(self.webhook_secret.get_secret_value())
        path = self.data_dir / "webhook_secret"
        if not path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            text = WEBHOOK_SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass  # another process created it first; read theirs
            else:
                with os.fdopen(fd, "w") as handle:
                    handle.write(text)
        return decode_webhook_secret(path.read_text().strip())


def decode_webhook_secret(text: str) -> bytes:
    """The key bytes of a 'whsec_<base64>' secret, or a ValueError that says what is wrong with it."""
    if not text.startswith(WEBHOOK_SECRET_PREFIX):
        raise ValueError("webhook secret must start with 'whsec_' followed by base64")
    try:
        key = base64.b64decode(text[len(WEBHOOK_SECRET_PREFIX) :], validate=True)
    except ValueError as exc:
        raise ValueError("webhook secret is not valid base64 after 'whsec_'") from exc
    if len(key) < 16:
        raise ValueError("webhook secret must hold at least 16 bytes")
    return key


_current: Settings | None = None


def get_settings() -> Settings:
    """The process-wide settings: those installed by `use_settings`, else read from the environment once."""
    global _current
    if _current is None:
        _current = Settings()
    return _current


def use_settings(settings: Settings | None) -> None:
    """Install `settings` as the process-wide settings (None: read the environment again on next use).

    `argd worker` and `argd serve` call this with the settings they built, so that worker pool processes
    forked later see the same values.
    """
    global _current
    _current = settings
