"""The artifact store hashes while it streams, stores equal bytes once and forgets only unreferenced files."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from argd.persistence.artifacts import (
    ArtifactNotFound,
    ArtifactTooLarge,
    LocalArtifactStore,
    register_artifact,
    release_artifacts,
)
from argd.persistence.keys import get_or_create_tenant
from argd.persistence.models import Artifact, Model


def _chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def test_stream_is_hashed_on_the_way_and_read_back(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    data = os.urandom(3 * 1024 * 1024 + 17)
    blob = store.put_stream(_chunks(data, 65536))
    assert blob.sha256 == hashlib.sha256(data).hexdigest()
    assert blob.size == len(data)
    assert b"".join(store.iter_chunks(blob.sha256, 100_000)) == data
    fetched = store.fetch(blob.sha256, tmp_path / "out" / "copy.bin")
    assert fetched.read_bytes() == data
    assert list((tmp_path / "tmp").iterdir()) == []  # nothing left staged


def test_equal_bytes_are_stored_once(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    first = store.put_stream([b"same ", b"bytes"])
    second = store.put_stream([b"same bytes"])
    source = tmp_path / "source.bin"
    source.write_bytes(b"same bytes")
    third = store.put_file(source)
    assert first == second == third
    stored = [p for p in (tmp_path / "sha256").rglob("*") if p.is_file()]
    assert stored == [store.path_of(first.sha256)]


def test_upload_over_the_limit_is_refused_and_removed(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    with pytest.raises(ArtifactTooLarge, match="limit of 10 bytes"):
        store.put_stream([b"12345", b"67890", b"x"], max_bytes=10)
    assert list((tmp_path / "tmp").iterdir()) == []
    assert not (tmp_path / "sha256").exists()


def test_staged_upload_can_be_validated_before_commit(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    with store.stage() as upload:
        upload.write(b"not a model")
        blob = upload.finish()
        assert upload.path.read_bytes() == b"not a model"  # validators read the staged file
        upload.abort()  # validation failed
    assert not store.exists(blob.sha256)
    with pytest.raises(ArtifactNotFound):
        store.open(blob.sha256)


def test_bad_hash_never_becomes_a_path(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    with pytest.raises(ValueError, match="not a sha256"):
        store.path_of("../../etc/passwd")


def _model(session: Session, tenant_id: str, sha: str, size: int) -> Model:
    row = Model(tenant_id=tenant_id, name="m", sha256=sha, size=size, spec={"architecture": "small-cnn"})
    session.add(row)
    session.flush()
    return row


@pytest.mark.service
def test_release_deletes_file_only_after_commit_and_only_when_unreferenced(
    db_session: Session, tmp_path: Path
) -> None:
    store = LocalArtifactStore(tmp_path)
    tenant = get_or_create_tenant(db_session, "artifact-tenant")
    blob = store.put_stream([b"weights"])
    register_artifact(db_session, blob, "model")
    first = _model(db_session, tenant.id, blob.sha256, blob.size)
    second = _model(db_session, tenant.id, blob.sha256, blob.size)
    db_session.commit()

    db_session.delete(first)
    assert release_artifacts(db_session, store, [blob.sha256]) == []  # the second model still uses it
    db_session.commit()
    assert store.exists(blob.sha256)

    db_session.delete(second)
    assert release_artifacts(db_session, store, [blob.sha256]) == [blob.sha256]
    assert store.exists(blob.sha256), "the file must survive until the transaction commits"
    db_session.rollback()
    assert store.exists(blob.sha256) and db_session.get(Artifact, blob.sha256) is not None

    second = db_session.get(Model, second.id)
    db_session.delete(second)
    release_artifacts(db_session, store, [blob.sha256])
    db_session.commit()
    assert not store.exists(blob.sha256)
    assert db_session.get(Artifact, blob.sha256) is None
