"""The artifact store: content-addressed files (uploads, checkpoints, results) and their database rows.

Bytes are streamed in chunks and hashed on the way, so nothing is read whole into memory; a file's name is the
sha256 of its bytes, so storing the same bytes twice keeps one copy. The store interface (`ArtifactStore`) is
the narrow one an object store can also offer: stage an upload, commit it under its hash, read it back as a
stream or into a local file, delete it. `LocalArtifactStore` keeps files under `<data_dir>/artifacts`;
`argd.persistence.s3store.S3ArtifactStore` keeps them in a bucket (`artifact_url = s3://...`).

Which files are still needed is the database's business: models, datasets and job results reference
`artifacts.sha256` by foreign key, and `release_artifacts` deletes the rows no longer referenced and, once the
transaction has committed, their files.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from sqlalchemy import event, exists, select
from sqlalchemy.orm import Session

from argd.persistence.models import Artifact, Dataset, Job, Model
from argd.persistence.tempfiles import STAGING_SUFFIX, staging_dir

CHUNK_SIZE = 1024 * 1024
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


STORAGE_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
STORAGE_FULL_MESSAGE = "The artifact store is full; nothing was stored. The operators must free space."


_STORAGE_FULL_TEXTS = tuple(os.strerror(number) for number in STORAGE_FULL_ERRNOS)


def is_storage_full(exc: BaseException) -> bool:
    """Whether a write failed because the disk (or a quota of the file system) is full.

    Libraries do not always raise the OSError: `torch.save` raises a RuntimeError with the OSError as its
    context, and safetensors' Rust writer keeps only the OS's message. So the whole chain is searched for
    the errno, and for the operating system's text of it.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in STORAGE_FULL_ERRNOS:
            return True
        if any(text in str(current) for text in _STORAGE_FULL_TEXTS):
            return True
        current = current.__cause__ or current.__context__
    return False


class ArtifactTooLarge(ValueError):
    """An upload went past the size limit; the partial file has been removed."""

    def __init__(self, limit: int):
        super().__init__(f"file exceeds the limit of {limit} bytes")
        self.limit = limit


class ArtifactNotFound(FileNotFoundError):
    """No stored file has this sha256."""


class StoreUnavailable(RuntimeError):
    """The artifact store cannot be used (bucket missing, credentials refused, endpoint down): the message
    names the cause for operators. `transient`: the endpoint did not answer, throttled or failed (5xx), so a
    later attempt may succeed; a missing bucket or refused credentials stay so until an operator acts."""

    def __init__(self, message: str, *, transient: bool = False):
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class Blob:
    """What a stored file is known by: its hash and its size."""

    sha256: str
    size: int


def check_sha256(sha256: str) -> str:
    """`sha256` if it is 64 lowercase hex digits (it becomes a file name), else ValueError."""
    if not _SHA256.match(sha256):
        raise ValueError(f"not a sha256 hex digest: {sha256!r}")
    return sha256


class StagedUpload(Protocol):
    """An upload being written: `write` chunks, then `commit` (store it) or `abort` (drop it).

    `path` is a local file holding the bytes written so far, so a caller can validate an upload before it
    commits it.
    """

    path: Path

    def write(self, chunk: bytes) -> None: ...
    def finish(self) -> Blob: ...
    def commit(self) -> Blob: ...
    def abort(self) -> None: ...


class ArtifactStore(Protocol):
    """Where artifact bytes live; keyed only by sha256."""

    def stage(self, max_bytes: int | None = None) -> StagedUpload: ...
    def put_stream(self, chunks: Iterable[bytes], max_bytes: int | None = None) -> Blob: ...
    def put_file(self, path: Path) -> Blob: ...
    def exists(self, sha256: str) -> bool: ...
    def open(self, sha256: str) -> BinaryIO: ...
    def iter_chunks(self, sha256: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]: ...
    def fetch(self, sha256: str, dest: Path) -> Path: ...
    def delete(self, sha256: str) -> None: ...
    def size(self, sha256: str) -> int: ...
    def check(self) -> None: ...


class _StagingTarget(Protocol):
    """What a staged upload needs of its store: a local root (staging folder) and the commit step."""

    root: Path

    def _adopt(self, staged: Path, sha256: str) -> None: ...


class LocalStagedUpload:
    """A temporary file in the store's staging folder, hashed as it is written."""

    def __init__(self, store: _StagingTarget, max_bytes: int | None):
        self._store = store
        self._max = max_bytes
        self._hash = hashlib.sha256()
        self.size = 0
        self.path = staging_dir(store.root) / f"{uuid.uuid4().hex}{STAGING_SUFFIX}"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: BinaryIO | None = open(self.path, "wb")  # noqa: SIM115 - closed in finish/abort
        self._blob: Blob | None = None

    def write(self, chunk: bytes) -> None:
        if self._file is None:
            raise RuntimeError("upload already finished")
        self.size += len(chunk)
        if self._max is not None and self.size > self._max:
            self.abort()
            raise ArtifactTooLarge(self._max)
        self._hash.update(chunk)
        self._file.write(chunk)

    def finish(self) -> Blob:
        """Close the file and return its hash and size (the file stays staged at `path`)."""
        if self._blob is None:
            if self._file is None:
                raise RuntimeError("upload was aborted")
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
            self._blob = Blob(self._hash.hexdigest(), self.size)
        return self._blob

    def commit(self) -> Blob:
        """Move the staged file under its hash (dropping it if those bytes are stored already)."""
        blob = self.finish()
        self._store._adopt(self.path, blob.sha256)
        return blob

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> LocalStagedUpload:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        # Nothing committed by the end of the block is dropped.
        if exc_type is not None or self.path.exists():
            self.abort()


class StoreBase:
    """What the local and the S3 store share: uploads staged in a local file under `root` and committed by
    the store's `_adopt` (a rename into place, or an upload to the bucket), and chunked reads from `open`."""

    root: Path

    def _adopt(self, staged: Path, sha256: str) -> None:
        raise NotImplementedError

    def open(self, sha256: str) -> BinaryIO:
        raise NotImplementedError

    def iter_chunks(self, sha256: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        with self.open(sha256) as handle:
            yield from iter(lambda: handle.read(chunk_size), b"")

    def stage(self, max_bytes: int | None = None) -> LocalStagedUpload:
        return LocalStagedUpload(self, max_bytes)

    def put_stream(self, chunks: Iterable[bytes], max_bytes: int | None = None) -> Blob:
        """Store a stream of chunks; ArtifactTooLarge past `max_bytes`."""
        with self.stage(max_bytes) as upload:
            for chunk in chunks:
                upload.write(chunk)
            return upload.commit()


class LocalArtifactStore(StoreBase):
    """Files under `root/sha256/ab/cd/<sha256>`, written through a staging folder and renamed into place."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path_of(self, sha256: str) -> Path:
        """Where the file with this hash lives (whether or not it exists)."""
        check_sha256(sha256)
        return self.root / "sha256" / sha256[:2] / sha256[2:4] / sha256

    def put_file(self, path: Path) -> Blob:
        """Store a copy of a local file (read in chunks)."""
        with open(path, "rb") as handle:
            return self.put_stream(iter(lambda: handle.read(CHUNK_SIZE), b""))

    def _adopt(self, staged: Path, sha256: str) -> None:
        target = self.path_of(sha256)
        if target.exists():
            staged.unlink(missing_ok=True)
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(staged, 0o444)
        os.replace(staged, target)

    def exists(self, sha256: str) -> bool:
        return self.path_of(sha256).is_file()

    def open(self, sha256: str) -> BinaryIO:
        """The stored file opened for reading; ArtifactNotFound if there is none."""
        try:
            return open(self.path_of(sha256), "rb")
        except FileNotFoundError as exc:
            raise ArtifactNotFound(f"no stored artifact {sha256}") from exc

    def fetch(self, sha256: str, dest: Path) -> Path:
        """Copy the stored file to `dest` (atomically: a partial copy never appears under that name)."""
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with self.open(sha256) as src, tempfile.NamedTemporaryFile(dir=dest.parent, delete=False) as tmp:
            shutil.copyfileobj(src, tmp, CHUNK_SIZE)
        os.replace(tmp.name, dest)
        return dest

    def delete(self, sha256: str) -> None:
        self.path_of(sha256).unlink(missing_ok=True)

    def size(self, sha256: str) -> int:
        try:
            return self.path_of(sha256).stat().st_size
        except FileNotFoundError as exc:
            raise ArtifactNotFound(f"no stored artifact {sha256}") from exc

    def check(self) -> None:
        """StoreUnavailable unless the folder exists and is writable."""
        if not self.root.is_dir() or not os.access(self.root, os.W_OK):
            raise StoreUnavailable(f"the artifact folder {self.root} is missing or not writable")


def register_artifact(session: Session, blob: Blob, kind: str) -> Artifact:
    """The row for a stored blob, created if this is the first time these bytes are stored."""
    row = session.get(Artifact, blob.sha256)
    if row is None:
        row = Artifact(sha256=blob.sha256, size=blob.size, kind=kind)
        session.add(row)
        session.flush()
    return row


def is_referenced(session: Session, sha256: str) -> bool:
    """Whether any model, dataset or job still points at this artifact."""
    checks = [
        exists().where(Model.sha256 == sha256),
        exists().where(Dataset.sha256 == sha256),
        exists().where(Job.result_model_sha256 == sha256),
        exists().where(Job.report_sha256 == sha256),
        exists().where(Job.checkpoint_sha256 == sha256),
    ]
    return any(session.scalar(select(check)) for check in checks)


def release_artifacts(session: Session, store: ArtifactStore, shas: Iterable[str | None]) -> list[str]:
    """Delete the rows of those artifacts nothing references any more; their files go after the commit.

    Call it after removing or repointing the rows that referenced them, in the same transaction. A rollback
    keeps every file. Returns the hashes whose rows were deleted.
    """
    released: list[str] = []
    session.flush()
    for sha in dict.fromkeys(s for s in shas if s):
        if is_referenced(session, sha):
            continue
        row = session.get(Artifact, sha)
        if row is not None:
            session.delete(row)
        released.append(sha)
    if released:
        session.flush()

        def _delete_files(committed: Session) -> None:
            for sha in released:
                # The same bytes may have been stored again since; keep the file if a row is back.
                if committed.bind is not None:
                    with Session(committed.bind) as check:
                        if check.get(Artifact, sha) is not None:
                            continue
                store.delete(sha)

        event.listen(session, "after_commit", _delete_files, once=True)
    return released
