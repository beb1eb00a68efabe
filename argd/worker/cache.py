"""A worker's local cache of job inputs fetched from an object store, under a size cap.

Jobs on one worker often reuse the same model and datasets (a sweep of parameters over one upload), and a
fetch from S3 costs seconds to minutes; with the local folder store there is nothing to gain, so the cache
wraps only remote stores. Files are named by sha256, so a cached file is never stale. After each fetch the
least recently used files go until the cache fits `cache_max_bytes`; the files of the job at hand are kept
even if they alone exceed the cap (they are linked into its work folder, which then holds the bytes).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path

from argd.persistence.artifacts import ArtifactStore, check_sha256
from argd.persistence.settings import Settings

log = logging.getLogger(__name__)


class InputCache:
    """`fetch(sha, dest)` like the store's, served from `root` when the file is there already."""

    def __init__(self, store: ArtifactStore, root: Path, max_bytes: int):
        self.store, self.root, self.max_bytes = store, Path(root), max_bytes
        self.hits = self.misses = 0

    def _path(self, sha256: str) -> Path:
        return self.root / check_sha256(sha256)

    def fetch(self, sha256: str, dest: Path, keep: Iterable[str] = ()) -> Path:
        """Place the artifact at `dest` (a hard link into the cache, or a copy across file systems)."""
        if self.max_bytes <= 0:
            return self.store.fetch(sha256, dest)
        cached = self._path(sha256)
        if cached.is_file():
            self.hits += 1
            os.utime(cached)  # recently used: evicted last
        else:
            self.misses += 1
            self.root.mkdir(parents=True, exist_ok=True)
            self.store.fetch(sha256, cached)
            self.evict(keep={sha256, *keep})
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.unlink(missing_ok=True)
        try:
            os.link(cached, dest)
        except OSError:
            shutil.copyfile(cached, dest)
        return dest

    def evict(self, keep: Iterable[str] = ()) -> list[str]:
        """Remove least recently used files until the cache fits its cap; returns the evicted hashes."""
        kept = set(keep)
        entries = []
        for path in self.root.iterdir():
            if path.name.startswith("."):
                continue  # a fetch in progress (the store's temporary name)
            with contextlib.suppress(FileNotFoundError):
                st = path.stat()
                entries.append((st.st_mtime, st.st_size, path))
        total = sum(size for _, size, _ in entries)
        evicted: list[str] = []
        for _, size, path in sorted(entries):
            if total <= self.max_bytes:
                break
            if path.name in kept:
                continue
            path.unlink(missing_ok=True)
            total -= size
            evicted.append(path.name)
        if evicted:
            log.info(
                "input cache %s: evicted %d files to stay under %d bytes",
                self.root,
                len(evicted),
                self.max_bytes,
            )
        return evicted


def input_fetcher(
    settings: Settings, store: ArtifactStore, keep: Iterable[str]
) -> Callable[[str, Path], Path]:
    """How a job fetches its inputs: through the cache for a remote store, straight from a local one."""
    if not settings.uses_s3_store or settings.cache_max_bytes <= 0:
        return store.fetch
    cache = InputCache(store, settings.input_cache_dir, settings.cache_max_bytes)
    return partial(cache.fetch, keep=tuple(keep))
