"""Which artifact store a process uses: the one place that knows both back ends.

Apart from `argd.persistence.artifacts` (the interface and the local folder) so that the S3 back end, which
builds on that module, is imported only here and only when configured (boto3 is an optional extra).
"""

from __future__ import annotations

from argd.persistence.artifacts import ArtifactStore, LocalArtifactStore
from argd.persistence.settings import Settings, get_settings


def get_store(settings: Settings | None = None) -> ArtifactStore:
    """The configured artifact store: S3 when `artifact_url` is set, else the data directory's folder."""
    settings = settings or get_settings()
    if settings.uses_s3_store:
        from argd.persistence.s3store import S3ArtifactStore

        return S3ArtifactStore(settings)
    return LocalArtifactStore(settings.artifacts_dir)
