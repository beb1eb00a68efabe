"""Settings of the artifact store's back end and of the workers' input cache (part of `Settings`).

Kept apart from `argd.persistence.settings` so that the object-store options read as one block; `Settings`
inherits them, so they are `ARGD_*` variables like every other setting. Empty `artifact_url` keeps the
local folder under the data directory; `s3://bucket/prefix` moves every artifact to S3-compatible object
storage, and then the data directory holds only per-host scratch files (staging, the input cache, the
workers' work folders), so API and worker hosts share no volume.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings


class ArtifactStoreSettings(BaseSettings):
    """Where artifacts live (local folder or S3) and how workers cache their inputs."""

    artifact_url: str = Field(
        "",
        description="Where artifacts are stored: empty for the folder <data_dir>/artifacts, or "
        "s3://bucket/prefix for S3-compatible object storage (needs the extra argd[s3])",
    )
    s3_endpoint_url: str = Field(
        "", description="Endpoint of the S3-compatible server (e.g. http://minio:9000); empty: AWS S3"
    )
    s3_region: str = Field("", description="Region of the bucket; empty: boto3's (AWS_DEFAULT_REGION)")
    s3_access_key_id: str = Field(
        "", description="Access key id; empty: boto3's credential chain (AWS_ACCESS_KEY_ID, profiles, roles)"
    )
    s3_secret_access_key: SecretStr = Field(
        SecretStr(""), description="Secret access key, with s3_access_key_id; empty: boto3's credential chain"
    )
    s3_max_attempts: int = Field(
        5,
        ge=1,
        le=20,
        description="Attempts of one S3 request on connection errors, throttling and 5xx (backoff between)",
    )
    s3_presign_downloads: bool = Field(
        False,
        description="Answer result downloads with a redirect (307) to a short-lived presigned URL instead of "
        "streaming the bytes through the API (clients must reach the S3 endpoint)",
    )
    s3_presign_ttl_s: int = Field(
        300, ge=10, le=7 * 86_400, description="Lifetime of a presigned download URL in seconds"
    )
    cache_dir: Path | None = Field(
        None,
        description="Where workers cache the inputs of their jobs fetched from S3; unset: <data_dir>/cache",
    )
    cache_max_bytes: int = Field(
        20 * 1024**3,
        ge=0,
        description="Size cap of the workers' input cache; least recently used files go first (0: no cache)",
    )

    @field_validator("artifact_url")
    @classmethod
    def _check_artifact_url(cls, value: str) -> str:
        if value:
            s3_location(value)  # raises with the reason
        return value

    @field_validator("cache_dir")
    @classmethod
    def _absolute_cache_dir(cls, value: Path | None) -> Path | None:
        return value.expanduser().absolute() if value is not None else None

    @property
    def uses_s3_store(self) -> bool:
        return bool(self.artifact_url)


def s3_location(url: str) -> tuple[str, str]:
    """(bucket, key prefix ending in '/' or empty) of an `s3://bucket/prefix` URL; ValueError otherwise."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"artifact_url must look like s3://bucket/prefix, not {url!r}")
    if parts.query or parts.fragment:
        raise ValueError("artifact_url takes no query or fragment")
    prefix = parts.path.strip("/")
    return parts.netloc, f"{prefix}/" if prefix else ""
