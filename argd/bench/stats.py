"""Small statistics and facts the benchmark reports share: percentiles, the machine, the time, the files."""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between the closest ranks."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], got {q}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def machine_info() -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "cpus": os.cpu_count(),
        "load_average": [round(v, 2) for v in load] if load else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def write_result(result: dict[str, Any], out_dir: Path, name: str, markdown: str) -> Path:
    """Write `<name>.json` and `<name>.md` into `out_dir`; returns the JSON path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / f"{name}.md").write_text(markdown + "\n")
    return path


def publish(result: dict[str, Any], markdown: str, name: str, out_dir: Path | None) -> None:
    """Print a benchmark's Markdown and JSON; with `out_dir`, also write `<name>.json` and `<name>.md`."""
    print(markdown)
    print()
    print(json.dumps(result, indent=2))
    if out_dir is not None:
        path = write_result(result, out_dir, name, markdown)
        print(f"wrote {path} and {path.with_suffix('.md')}", file=sys.stderr)
