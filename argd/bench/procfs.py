"""What the service benchmarks read from Linux's /proc: a process tree, its memory, and a sampler thread."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Sequence
from pathlib import Path


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (uvicorn's supervisor and its worker processes), from /proc."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{current}/task"):
                with contextlib.suppress(OSError):
                    queue.extend(
                        int(c) for c in Path(f"/proc/{current}/task/{task}/children").read_text().split()
                    )
    return found


def read_memory(pid: int) -> dict[str, int]:
    """VmRSS (resident now) and VmHWM (resident peak) of one process in bytes; {} once it has exited."""
    values: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, amount, _unit = line.split()
                values[key.rstrip(":")] = int(amount) * 1024
    except OSError:
        return {}
    return values


def reset_peak_rss(pids: Sequence[int]) -> bool:
    """Reset the kernel's peak-RSS mark of each process (`clear_refs` 5); False where it is not permitted."""
    ok = True
    for pid in pids:
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        except OSError:
            ok = False
    return ok


def _tree_bytes(root: Path) -> int:
    total = 0
    with contextlib.suppress(OSError):
        for entry in os.scandir(root):
            with contextlib.suppress(OSError):
                total += _tree_bytes(Path(entry.path)) if entry.is_dir() else entry.stat().st_size
    return total


class MemorySampler(threading.Thread):
    """Samples the summed RSS of a process tree and the bytes in a folder every `interval_s` until stopped."""

    def __init__(self, pid: int, interval_s: float, watch_dir: Path):
        super().__init__(daemon=True, name="rss-sampler")
        self.pid = pid
        self.interval_s = interval_s
        self.watch_dir = watch_dir
        self.samples = 0
        self.peak_rss = 0
        self.peak_dir_bytes = 0
        self._halt = threading.Event()

    def sample(self) -> int:
        rss = sum(read_memory(p).get("VmRSS", 0) for p in process_tree(self.pid))
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_dir_bytes = max(self.peak_dir_bytes, _tree_bytes(self.watch_dir))
        self.samples += 1
        return rss

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.interval_s)

    def stop(self) -> None:
        self._halt.set()
        self.join()
        self.sample()
