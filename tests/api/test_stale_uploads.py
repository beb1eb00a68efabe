"""A restarted API removes the temporary upload files its killed predecessor left, and nothing else."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from fastapi.testclient import TestClient

from argd.api.app import create_app
from argd.persistence.artifacts import LocalArtifactStore
from argd.persistence.settings import Settings
from argd.persistence.tempfiles import UPLOAD_PREFIX, scratch_file, upload_dir

TWO_HOURS = 2 * 3600.0


def _age(path: Path) -> Path:
    when = time.time() - TWO_HOURS
    os.utime(path, (when, when))
    return path


def test_startup_sweeps_what_a_crashed_api_left(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, database_url="sqlite://", broker_url="memory://")
    uploads = upload_dir(settings)
    uploads.mkdir(parents=True)
    store = LocalArtifactStore(settings.artifacts_dir)

    # What an API killed mid-upload leaves: a streamed part, a converted file, a staged artifact.
    with tempfile.NamedTemporaryFile(dir=uploads, prefix=UPLOAD_PREFIX, suffix=".pt", delete=False) as part:
        part.write(b"half a model")
    old_part = _age(Path(part.name))
    staged = store.stage()
    staged.write(b"half a checkpoint")
    staged.finish()
    old_staged = _age(staged.path)
    fresh = store.stage()  # an upload another API process is receiving right now
    fresh.write(b"in progress")
    unrelated = uploads / "operator-notes.txt"
    unrelated.write_text("keep me")
    _age(unrelated)

    with scratch_file(uploads, "model", ".safetensors") as converted:
        converted.write_bytes(b"converted")
        _age(converted)

        app = create_app(settings)
        # Building the app touches no files; only starting it does.
        assert old_part.exists() and old_staged.exists() and converted.exists()
        with TestClient(app) as client:
            assert client.get("/healthz").status_code == 200
            assert not old_part.exists()
            assert not old_staged.exists()
            assert not converted.exists()
            assert fresh.path.exists()
            assert unrelated.read_text() == "keep me"

    fresh.write(b" and more")
    assert fresh.commit().size == len(b"in progress and more")
