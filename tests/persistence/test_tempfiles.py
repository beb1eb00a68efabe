"""The stale-upload sweep deletes only old temp files of the project's own names, in its own two folders."""

from __future__ import annotations

import os
import re
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest
from pydantic import ValidationError

from argd.persistence.artifacts import LocalArtifactStore
from argd.persistence.settings import Settings
from argd.persistence.tempfiles import (
    STAGING_SUFFIX,
    UPLOAD_PREFIX,
    remove_stale_files,
    staging_dir,
    sweep_stale_temp_files,
    upload_dir,
)

HOUR = 3600.0


def _settings(data_dir: Path, **update: object) -> Settings:
    return Settings(data_dir=data_dir, database_url="sqlite://", broker_url="memory://", **update)


def _age(path: Path, seconds: float) -> Path:
    """Set the mtime (of a link itself, not its target) `seconds` into the past."""
    when = time.time() - seconds
    os.utime(path, (when, when), follow_symlinks=False)
    return path


def _upload_temp(folder: Path, suffix: str = ".safetensors") -> Path:
    """A file named the way argd.api.uploads names the multipart parts it streams to disk."""
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder, prefix=UPLOAD_PREFIX, suffix=suffix, delete=False) as handle:
        handle.write(b"half an upload")
    return Path(handle.name)


def _abandoned_staging(store: LocalArtifactStore) -> Path:
    """A staged artifact whose process died before it committed (finish leaves the file staged)."""
    staged = store.stage()
    staged.write(b"partial bytes")
    staged.finish()
    return staged.path


def test_old_temp_files_of_both_kinds_go_and_everything_else_stays(tmp_path: Path) -> None:
    settings = _settings(tmp_path / "data")
    uploads = upload_dir(settings)
    store = LocalArtifactStore(settings.artifacts_dir)
    staging = staging_dir(settings.artifacts_dir)

    old_upload = _age(_upload_temp(uploads), 2 * HOUR)
    old_scratch = uploads / f"dataset-{uuid.uuid4().hex}.npz"
    old_scratch.write_bytes(b"converted")
    _age(old_scratch, 2 * HOUR)
    old_staged = _age(_abandoned_staging(store), 2 * HOUR)
    assert old_staged.parent == staging and old_staged.name.endswith(STAGING_SUFFIX)

    fresh_upload = _upload_temp(uploads, ".npz")
    fresh_staged = _abandoned_staging(store)

    # Old entries the sweep must not touch: other names, a staging name in the wrong folder, symlinks with
    # matching names (pointing out of the folder), a matching sub-folder and what it holds, a stored artifact.
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes(b"not ours")
    _age(outside, 2 * HOUR)
    kept = [
        uploads / "notes.txt",
        uploads / f"{uuid.uuid4().hex}{STAGING_SUFFIX}",
        uploads / "upload-abc.safetensors.bak",
        staging / "keep.bin",
        staging / f"upload-{uuid.uuid4().hex[:8]}.npz",
    ]
    for path in kept:
        path.write_bytes(b"unrelated")
        _age(path, 2 * HOUR)
    links = [uploads / "upload-linked01.safetensors", staging / f"{uuid.uuid4().hex}{STAGING_SUFFIX}"]
    for link in links:
        link.symlink_to(outside)
        _age(link, 2 * HOUR)
    subfolder = uploads / "upload-subdir01.npz"
    subfolder.mkdir()
    inner = _age(_upload_temp(subfolder, ".npz"), 2 * HOUR)
    _age(subfolder, 2 * HOUR)
    stored = store.path_of(store.put_stream([b"stored bytes"]).sha256)
    _age(stored, 2 * HOUR)

    assert sweep_stale_temp_files(settings) == 3

    for gone in (old_upload, old_scratch, old_staged):
        assert not gone.exists(), gone
    for present in (fresh_upload, fresh_staged, *kept, outside, subfolder, inner, stored):
        assert present.exists(), present
    for link in links:
        assert link.is_symlink(), link
    assert outside.read_bytes() == b"not ours"
    assert sweep_stale_temp_files(settings) == 0


def test_the_age_threshold_comes_from_the_settings(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    upload = _age(_upload_temp(upload_dir(settings)), 0.5 * HOUR)
    staged = _age(_abandoned_staging(LocalArtifactStore(settings.artifacts_dir)), 0.5 * HOUR)

    assert sweep_stale_temp_files(settings) == 0  # default: an hour
    assert upload.exists() and staged.exists()

    assert sweep_stale_temp_files(_settings(tmp_path, stale_upload_after_s=900)) == 2
    assert not upload.exists() and not staged.exists()


def test_setting_default_lower_bound_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ARGD_STALE_UPLOAD_AFTER_S", raising=False)
    assert Settings().stale_upload_after_s == HOUR
    with pytest.raises(ValidationError, match="stale_upload_after_s"):
        Settings(stale_upload_after_s=0)
    with pytest.raises(ValidationError, match="stale_upload_after_s"):
        Settings(stale_upload_after_s=599)
    monkeypatch.setenv("ARGD_STALE_UPLOAD_AFTER_S", "900")
    assert Settings().stale_upload_after_s == 900


def test_missing_folders_and_odd_names_are_not_errors(tmp_path: Path) -> None:
    assert sweep_stale_temp_files(_settings(tmp_path / "never-created")) == 0
    assert not (tmp_path / "never-created" / "tmp").exists()

    settings = _settings(tmp_path)
    uploads = upload_dir(settings)
    uploads.mkdir(parents=True)
    odd = os.path.join(os.fsencode(uploads), b"upload-\xff\xfe.npz")  # not valid UTF-8
    with open(odd, "wb") as handle:
        handle.write(b"x")
    when = time.time() - 2 * HOUR
    os.utime(odd, (when, when))
    assert sweep_stale_temp_files(settings) == 0
    assert os.path.exists(odd)


def test_files_vanishing_during_a_sweep_are_not_errors(tmp_path: Path) -> None:
    """Two sweeps race over the same folder: each file is removed once and neither sweep fails."""
    settings = _settings(tmp_path)
    folder = staging_dir(settings.artifacts_dir)
    folder.mkdir(parents=True)
    count = 3000
    for _ in range(count):
        path = folder / f"{uuid.uuid4().hex}{STAGING_SUFFIX}"
        path.touch()
        _age(path, 2 * HOUR)
    start = threading.Barrier(2)
    results: list[int] = []
    errors: list[BaseException] = []

    def sweep() -> None:
        start.wait()
        try:
            results.append(sweep_stale_temp_files(settings))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=sweep) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sum(results) == count
    assert list(folder.iterdir()) == []


def test_only_the_given_folder_is_swept(tmp_path: Path) -> None:
    """`remove_stale_files` works on one folder with one pattern, whatever the settings."""
    (tmp_path / "a.part").write_bytes(b"x")
    (tmp_path / "b.keep").write_bytes(b"x")
    for name in ("a.part", "b.keep"):
        _age(tmp_path / name, 10)
    assert remove_stale_files(tmp_path, re.compile(r"[a-z]\.part"), 5) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.keep"]
