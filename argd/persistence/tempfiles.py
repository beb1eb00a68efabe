"""Temporary upload files: where they live, how they are named, and the sweep of those a crash left behind.

Two folders hold files that exist only while an upload is in progress:

- `<data_dir>/tmp/uploads`: the API streams each multipart file part to `upload-<random><suffix>` and writes
  converted uploads to `<kind>-<uuid hex><suffix>` (`scratch_file`, below);
- `<artifacts>/tmp`: the artifact store stages each file as `<uuid hex>.part` before renaming it into place.

The code that creates them deletes them on every normal path, but a process killed mid-upload (SIGKILL, the
OOM killer, a lost container) cannot. `sweep_stale_temp_files` removes such leftovers once they are older
than `Settings.stale_upload_after_s`: an upload in progress keeps writing to its file, so its mtime stays
fresh and an age threshold tells the two apart without any locking between processes. The API sweeps at
startup (so a restarted API cleans up after its predecessor) and workers sweep on their recovery timer.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import stat
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from argd.persistence.settings import Settings

log = logging.getLogger(__name__)

#: Prefix of the files the API streams multipart file parts to (`tempfile` adds random characters).
UPLOAD_PREFIX = "upload-"
#: Suffix of the files the artifact store stages uploads in.
STAGING_SUFFIX = ".part"

# Only these names are ever removed; anything else in the folders is left alone.
_UPLOAD_NAMES = re.compile(
    re.escape(UPLOAD_PREFIX) + r"[a-z0-9_]+\.[a-z0-9]+"  # tempfile.NamedTemporaryFile in argd.api.uploads
    r"|[a-z]+-[0-9a-f]{32}\.[a-z0-9]+"  # scratch_file below
)
_STAGING_NAMES = re.compile(r"[0-9a-f]{32}" + re.escape(STAGING_SUFFIX))


def upload_dir(settings: Settings) -> Path:
    """Where uploads stream to: inside the data directory, on the artifact store's filesystem."""
    return settings.data_dir / "tmp" / "uploads"


@contextlib.contextmanager
def scratch_file(folder: Path, kind: str, suffix: str) -> Iterator[Path]:
    """A fresh `<kind>-<uuid hex><suffix>` path in `folder` for a converted upload, removed afterwards
    whether or not it was written. Lowercase `kind` and `suffix` keep the name within the sweep's pattern."""
    path = folder / f"{kind}-{uuid.uuid4().hex}{suffix}"
    try:
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def staging_dir(artifacts_root: Path) -> Path:
    """The artifact store's staging folder (same filesystem as the store, so commits are renames)."""
    return Path(artifacts_root) / "tmp"


def remove_stale_files(
    folder: Path, pattern: re.Pattern[str], max_age_s: float, now: float | None = None
) -> int:
    """Delete the regular files in `folder` (not below it) whose name fully matches `pattern` and whose mtime
    is more than `max_age_s` seconds before `now`; returns how many were deleted.

    Symlinks are skipped (never followed out of the folder), as are sub-folders and other non-regular
    entries. A file that vanishes meanwhile (its upload finished, another process swept it) is not an error;
    an entry or folder that cannot be read or removed is logged and skipped, so a sweep never raises OSError.
    """
    now = time.time() if now is None else now
    removed = 0
    try:
        entries = os.scandir(folder)
    except FileNotFoundError:
        return 0
    except OSError as exc:
        log.warning("cannot list %s to remove stale temporary files: %s", folder, exc)
        return 0
    with entries:
        for entry in entries:
            if not pattern.fullmatch(entry.name):
                continue
            try:
                info = entry.stat(follow_symlinks=False)
                if not stat.S_ISREG(info.st_mode) or now - info.st_mtime <= max_age_s:
                    continue
                os.unlink(entry.path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning("cannot remove stale temporary file %s: %s", entry.path, exc)
                continue
            removed += 1
    if removed:
        log.warning("removed %d stale temporary file(s) left by interrupted uploads in %s", removed, folder)
    return removed


def sweep_stale_temp_files(settings: Settings, now: float | None = None) -> int:
    """Remove upload and staging temp files older than `settings.stale_upload_after_s`; returns the count."""
    max_age_s = settings.stale_upload_after_s
    return remove_stale_files(upload_dir(settings), _UPLOAD_NAMES, max_age_s, now) + remove_stale_files(
        staging_dir(settings.artifacts_dir), _STAGING_NAMES, max_age_s, now
    )
