"""The artifact store on S3-compatible object storage (AWS S3, MinIO, Ceph RGW, GCS in S3 mode).

Same interface and naming as `LocalArtifactStore`: an object's key is `<prefix>sha256/ab/cd/<sha256>` of
its bytes. A file is hashed first (one streaming read of the local file), then uploaded under its final
key with boto3's managed transfer, which switches to multipart above `PART_BYTES` and keeps at most
`CONCURRENCY` parts in memory, so memory stays flat whatever the size. An object appears only once its
upload is complete, so a reader never sees half an artifact and no temporary key needs cleaning up. Streams
of unknown hash (`put_stream`, `stage`) are staged in a local file under the data directory first, hashed
on the way, exactly as the local store stages them, then committed by uploading.

Every failure of the object store surfaces as `StoreUnavailable` with a cause meant for operators (bucket
missing, credentials refused, endpoint unreachable); transient ones (connection errors, throttling, 5xx)
are retried inside boto3 first (`s3_max_attempts`, exponential backoff).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, cast

from argd.persistence.artifacts import (
    CHUNK_SIZE,
    ArtifactNotFound,
    Blob,
    StoreBase,
    StoreUnavailable,
    check_sha256,
)
from argd.persistence.settings import Settings
from argd.persistence.store_settings import s3_location

PART_BYTES = 16 * 1024 * 1024
CONCURRENCY = 4
IO_QUEUE_CHUNKS = 16
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 60.0

_MISSING = {"404", "NoSuchKey", "NotFound"}
_CREDENTIALS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "ExpiredToken"}


def _cause(exc: BaseException, bucket: str, endpoint: str) -> str:
    """An operator's reading of a boto3/botocore failure (never the secret, never a stack trace)."""
    from botocore.exceptions import (
        ClientError,
        ConnectionClosedError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        ReadTimeoutError,
    )

    where = endpoint or "AWS S3"
    if isinstance(exc, EndpointConnectionError | ConnectTimeoutError | ConnectionClosedError):
        return f"cannot reach the S3 endpoint {where}"
    if isinstance(exc, ReadTimeoutError):
        return f"the S3 endpoint {where} timed out"
    if isinstance(exc, NoCredentialsError):
        return "no S3 credentials (set ARGD_S3_ACCESS_KEY_ID/ARGD_S3_SECRET_ACCESS_KEY or AWS_* variables)"
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code == "NoSuchBucket":
            return f"the bucket {bucket!r} does not exist"
        if code in _CREDENTIALS:
            return f"S3 refused the credentials for bucket {bucket!r} ({code})"
        return f"S3 error {code or 'unknown'} on bucket {bucket!r}"
    return f"S3 request failed ({exc.__class__.__name__})"


def _is_transient(exc: BaseException) -> bool:
    """Whether trying again later may help: no answer, a timeout, throttling or a server error."""
    from botocore.exceptions import ClientError, ConnectionError, HTTPClientError, ReadTimeoutError

    if isinstance(exc, ConnectionError | HTTPClientError | ReadTimeoutError):
        return True
    if isinstance(exc, ClientError):
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        return status >= 500 or _error_code(exc) in ("SlowDown", "Throttling", "RequestTimeout")
    return False


def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


class S3ArtifactStore(StoreBase):
    """Artifacts as objects in one bucket under a key prefix; staging and scratch on local disk."""

    def __init__(self, settings: Settings):
        try:
            import boto3
            from boto3.s3.transfer import TransferConfig
            from botocore.config import Config
        except ImportError as exc:  # pragma: no cover - depends on the installed extras
            raise RuntimeError("artifact_url is s3://... but boto3 is missing: install argd[s3]") from exc
        self.bucket, self.prefix = s3_location(settings.artifact_url)
        self.endpoint = settings.s3_endpoint_url
        # Local staging folder: the sweep of stale upload files (argd.persistence.tempfiles) covers it.
        self.root = settings.artifacts_dir
        self.root.mkdir(parents=True, exist_ok=True)
        self.presign_ttl_s = settings.s3_presign_ttl_s
        config = Config(
            retries={"mode": "standard", "max_attempts": settings.s3_max_attempts},
            connect_timeout=CONNECT_TIMEOUT_S,
            read_timeout=READ_TIMEOUT_S,
            # Path-style addressing works with every S3-compatible server (no wildcard DNS needed).
            s3={"addressing_style": "path"} if self.endpoint else {},
        )
        credentials: dict[str, Any] = {}
        if settings.s3_access_key_id:
            credentials = {
                "aws_access_key_id": settings.s3_access_key_id,
                "aws_secret_access_key": settings.s3_secret_access_key.get_secret_value(),
            }
        self.client = boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint or None,
            region_name=settings.s3_region or None,
            config=config,
            **credentials,
        )
        self.transfer = TransferConfig(
            multipart_threshold=PART_BYTES,
            multipart_chunksize=PART_BYTES,
            max_concurrency=CONCURRENCY,
            io_chunksize=CHUNK_SIZE,
            # Downloaded chunks wait here for the disk: a short queue bounds memory when the disk is slow.
            max_io_queue=IO_QUEUE_CHUNKS,
        )

    def key_of(self, sha256: str) -> str:
        check_sha256(sha256)
        return f"{self.prefix}sha256/{sha256[:2]}/{sha256[2:4]}/{sha256}"

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """Turn boto3's errors into StoreUnavailable with a cause."""
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except (BotoCoreError, ClientError) as exc:
            cause = _cause(exc, self.bucket, self.endpoint)
            raise StoreUnavailable(cause, transient=_is_transient(exc)) from exc
        except S3UploadFailedError as exc:  # the managed upload wraps the client's error
            inner = exc.__context__ or exc
            cause = _cause(inner, self.bucket, self.endpoint)
            raise StoreUnavailable(cause, transient=_is_transient(inner)) from inner

    def check(self) -> None:
        """Raise StoreUnavailable naming the cause unless the bucket answers to these credentials."""
        from botocore.exceptions import ClientError

        try:
            with self._errors():
                self.client.head_bucket(Bucket=self.bucket)
        except StoreUnavailable as exc:
            # HEAD answers carry no error body: a bare 404 is the bucket, a bare 403 the credentials.
            code = _error_code(exc.__cause__) if isinstance(exc.__cause__, ClientError) else ""
            if code in ("404", "NoSuchBucket"):
                raise StoreUnavailable(f"the bucket {self.bucket!r} does not exist") from exc.__cause__
            raise

    # --- writing ----------------------------------------------------------------------------------------

    def put_file(self, path: Path) -> Blob:
        """Upload a local file under its sha256 (skipped when those bytes are stored already)."""
        digest = hashlib.sha256()
        size = 0
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(CHUNK_SIZE), b""):
                digest.update(chunk)
                size += len(chunk)
        blob = Blob(digest.hexdigest(), size)
        if not self.exists(blob.sha256):
            with self._errors():
                self.client.upload_file(
                    str(path), self.bucket, self.key_of(blob.sha256), Config=self.transfer
                )
        return blob

    def _adopt(self, staged: Path, sha256: str) -> None:
        """Commit of a staged upload (`LocalStagedUpload.commit`): upload it, then drop the local file."""
        try:
            if not self.exists(sha256):
                with self._errors():
                    self.client.upload_file(
                        str(staged), self.bucket, self.key_of(sha256), Config=self.transfer
                    )
        finally:
            staged.unlink(missing_ok=True)

    # --- reading ----------------------------------------------------------------------------------------

    def _not_found(self, sha256: str) -> ArtifactNotFound:
        """The error for a 404 on an object that should be there: StoreUnavailable (raised) if the bucket
        itself is gone, which an object request's bare 404 does not tell apart."""
        self.check()
        return ArtifactNotFound(f"no stored artifact {sha256}")

    def _object(self, request: Any, sha256: str) -> dict[str, Any] | None:
        """`request` (the client's head_object or get_object) on the object of `sha256`; None when there is
        no such object (other failures raise StoreUnavailable)."""
        from botocore.exceptions import ClientError

        try:
            with self._errors():
                return cast(dict[str, Any], request(Bucket=self.bucket, Key=self.key_of(sha256)))
        except StoreUnavailable as exc:
            if isinstance(exc.__cause__, ClientError) and _error_code(exc.__cause__) in _MISSING:
                return None
            raise

    def exists(self, sha256: str) -> bool:
        return self._object(self.client.head_object, sha256) is not None

    def size(self, sha256: str) -> int:
        """The stored object's size in bytes; ArtifactNotFound if there is none."""
        head = self._object(self.client.head_object, sha256)
        if head is None:
            raise self._not_found(sha256)
        return int(head["ContentLength"])

    def open(self, sha256: str) -> BinaryIO:
        """The object's body as a stream (read it in chunks; close it when done)."""
        answer = self._object(self.client.get_object, sha256)
        if answer is None:
            raise self._not_found(sha256)
        return cast(BinaryIO, _Body(answer["Body"], self))

    def fetch(self, sha256: str, dest: Path) -> Path:
        """Download to `dest` (ranged parts in parallel, into a temporary name renamed at the end)."""
        from botocore.exceptions import ClientError

        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".fetch-")
        os.close(fd)
        try:
            with self._errors():
                self.client.download_file(self.bucket, self.key_of(sha256), tmp, Config=self.transfer)
            os.replace(tmp, dest)
        except StoreUnavailable as exc:
            Path(tmp).unlink(missing_ok=True)
            if isinstance(exc.__cause__, ClientError) and _error_code(exc.__cause__) in _MISSING:
                raise self._not_found(sha256) from None
            raise
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return dest

    def presigned_url(self, sha256: str, filename: str) -> str:
        """A GET URL for the object, valid `s3_presign_ttl_s` seconds, that downloads as `filename`."""
        with self._errors():
            return str(
                self.client.generate_presigned_url(
                    "get_object",
                    Params={
                        "Bucket": self.bucket,
                        "Key": self.key_of(sha256),
                        "ResponseContentDisposition": f'attachment; filename="{filename}"',
                    },
                    ExpiresIn=self.presign_ttl_s,
                )
            )

    def delete(self, sha256: str) -> None:
        with self._errors():
            self.client.delete_object(Bucket=self.bucket, Key=self.key_of(sha256))


class _Body:
    """A streamed object body with the read/close/context-manager surface callers use on files."""

    def __init__(self, body: Any, store: S3ArtifactStore):
        self._body, self._store = body, store

    def read(self, size: int = -1) -> bytes:
        with self._store._errors():
            return bytes(self._body.read(None if size < 0 else size))

    def close(self) -> None:
        self._body.close()

    def __enter__(self) -> _Body:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
