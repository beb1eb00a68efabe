"""The S3 artifact store against a real S3-compatible server (moto in server mode, over HTTP).

Objects are named by sha256, uploads above the part size go multipart, downloads stream, a presigned URL
serves the bytes, deletion removes the object, and each way the store can be broken (bucket missing,
credentials refused, endpoint down) fails with a `StoreUnavailable` that names the cause. The workers'
input cache serves repeated fetches locally and stays under its cap.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import httpx
import pytest

from argd.devserver import free_port
from argd.persistence.artifacts import ArtifactNotFound, ArtifactTooLarge, StoreUnavailable
from argd.persistence.s3store import PART_BYTES, S3ArtifactStore
from argd.persistence.settings import Settings
from argd.persistence.stores import get_store
from argd.worker.cache import InputCache
from tests.fixtures.s3 import S3Server, s3_configured, start_s3_server

pytestmark = pytest.mark.service


@pytest.fixture
def store(s3_settings: Settings) -> S3ArtifactStore:
    store = get_store(s3_settings)
    assert isinstance(store, S3ArtifactStore)
    return store


def _file(tmp: Path, size: int) -> tuple[Path, str]:
    path = tmp / f"{uuid.uuid4().hex}.bin"
    data = os.urandom(size)
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def test_a_file_is_stored_under_its_sha256_with_multipart_and_streams_back(
    store: S3ArtifactStore, s3_server: S3Server, tmp_path: Path
) -> None:
    path, sha = _file(tmp_path, PART_BYTES + 1024 * 1024)  # over the part size: a multipart upload
    blob = store.put_file(path)
    assert (blob.sha256, blob.size) == (sha, path.stat().st_size)
    key = f"{store.prefix}sha256/{sha[:2]}/{sha[2:4]}/{sha}"
    assert key in s3_server.keys(store.prefix)
    head = s3_server.client().head_object(Bucket=s3_server.bucket, Key=key)
    assert head["ETag"].strip('"').endswith("-2"), "the upload was not multipart"
    assert store.exists(sha) and store.size(sha) == blob.size
    assert store.put_file(path) == blob  # the same bytes again: one object
    streamed = hashlib.sha256()
    for chunk in store.iter_chunks(sha):
        assert len(chunk) <= 1024 * 1024
        streamed.update(chunk)
    assert streamed.hexdigest() == sha
    fetched = store.fetch(sha, tmp_path / "out" / "copy.bin")
    assert fetched.read_bytes() == path.read_bytes()
    assert not [p for p in fetched.parent.iterdir() if p.name != "copy.bin"], "a temporary file was left"
    store.delete(sha)
    assert not store.exists(sha) and key not in s3_server.keys(store.prefix)
    with pytest.raises(ArtifactNotFound):
        store.open(sha)
    with pytest.raises(ArtifactNotFound):
        store.fetch(sha, tmp_path / "gone.bin")


def test_streams_are_staged_locally_and_a_too_large_one_leaves_nothing(
    store: S3ArtifactStore, s3_server: S3Server
) -> None:
    blob = store.put_stream([b"abc", b"def"])
    assert blob.sha256 == hashlib.sha256(b"abcdef").hexdigest()
    with store.open(blob.sha256) as handle:
        assert handle.read() == b"abcdef"
    before = s3_server.keys(store.prefix)
    with pytest.raises(ArtifactTooLarge):
        store.put_stream([b"x" * 700, b"y" * 700], max_bytes=1024)
    assert s3_server.keys(store.prefix) == before
    assert not list((store.root / "tmp").glob("*.part")), "a staged file was left behind"


def test_a_presigned_url_serves_the_object(store: S3ArtifactStore, tmp_path: Path) -> None:
    path, sha = _file(tmp_path, 4096)
    store.put_file(path)
    url = store.presigned_url(sha, "result.safetensors")
    assert "Signature=" in url or "X-Amz-Signature=" in url
    answer = httpx.get(url, timeout=10)
    assert answer.status_code == 200 and answer.content == path.read_bytes()
    assert 'filename="result.safetensors"' in answer.headers["content-disposition"]


def test_a_missing_bucket_is_named(s3_settings: Settings, s3_server: S3Server, tmp_path: Path) -> None:
    settings = s3_settings.model_copy(update={"artifact_url": "s3://no-such-bucket-argd/x"})
    with pytest.raises(StoreUnavailable, match="bucket 'no-such-bucket-argd' does not exist") as failure:
        get_store(settings).check()
    assert not failure.value.transient, "a missing bucket does not come back by retrying"
    with pytest.raises(StoreUnavailable, match="does not exist"):
        get_store(settings).put_stream([b"data"])
    # An object request's bare 404 would read as "no such artifact": the store asks about the bucket.
    with pytest.raises(StoreUnavailable, match="does not exist"):
        get_store(settings).fetch("0" * 64, tmp_path / "x")


def test_refused_credentials_are_named(
    s3_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> None:
    server = start_s3_server(tmp_path_factory.mktemp("moto-auth"), auth=True)
    try:
        settings = s3_configured(s3_settings, server, "x")
        with pytest.raises(StoreUnavailable, match="refused the credentials") as failure:
            get_store(settings).check()
        assert not failure.value.transient
    finally:
        server.stop()


def test_an_endpoint_that_is_down_is_named(s3_settings: Settings) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    settings = s3_settings.model_copy(update={"s3_endpoint_url": dead, "s3_max_attempts": 1})
    with pytest.raises(StoreUnavailable, match=f"cannot reach the S3 endpoint {dead}") as failure:
        get_store(settings).check()
    assert failure.value.transient, "an endpoint that does not answer may come back"


def test_the_input_cache_serves_repeats_locally_and_keeps_under_its_cap(
    store: S3ArtifactStore, tmp_path: Path
) -> None:
    files = [_file(tmp_path, 3000) for _ in range(3)]
    for path, _ in files:
        store.put_file(path)
    cache = InputCache(store, tmp_path / "cache", max_bytes=7000)  # room for two of the three
    (a, sha_a), (b, sha_b), (c, sha_c) = files
    cache.fetch(sha_a, tmp_path / "job1" / "a")
    cache.fetch(sha_b, tmp_path / "job1" / "b")
    assert (cache.hits, cache.misses) == (0, 2)
    got = cache.fetch(sha_a, tmp_path / "job2" / "a")  # a repeat: from disk, and now the most recent
    assert got.read_bytes() == a.read_bytes() and cache.hits == 1
    os.utime(tmp_path / "cache" / sha_b, (1, 1))  # b is the least recently used
    cache.fetch(sha_c, tmp_path / "job3" / "c", keep=[sha_c])
    cached = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert cached == sorted([sha_a, sha_c]), "the least recently used file was not the one evicted"
    assert sum(p.stat().st_size for p in (tmp_path / "cache").iterdir()) <= 7000
    assert (tmp_path / "job1" / "b").read_bytes() == b.read_bytes(), "eviction broke a job's copy"
    assert (tmp_path / "job3" / "c").read_bytes() == c.read_bytes()
