"""argparse types shared by every command line of the project (`argd ...`, `argd bench ...`).

Each turns one option's text into a value or raises `argparse.ArgumentTypeError` with a short reason, so a
bad option fails before any work starts and every command says it the same way.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def existing_file(value: str) -> Path:
    """A path that must be a readable file, checked before any work starts."""
    path = Path(value).expanduser()
    if not path.exists():
        raise argparse.ArgumentTypeError(f"no such file: {value}")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"not a file: {value}")
    return path


def float_list(value: str) -> list[float]:
    """`0.286` or `0.49,0.48,0.45` (commas or spaces)."""
    parts = [p for p in value.replace(",", " ").split() if p]
    try:
        numbers = [float(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {value!r}") from None
    if not numbers:
        raise argparse.ArgumentTypeError("expected at least one number")
    return numbers


def positive_int(value: str) -> int:
    """A whole number above zero."""
    number = int(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return number


def positive_float(value: str) -> float:
    """A number above zero."""
    number = float(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return number


def fraction(value: str) -> float:
    """A number in (0, 1]."""
    number = float(value)
    if not 0.0 < number <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return number


def csv_list(value: str) -> list[str]:
    """`a,b,c` as lower-case names, at least one."""
    items = [v.strip().lower() for v in value.split(",") if v.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def whole_number_list(value: str) -> list[int]:
    """An argparse type: comma-separated whole numbers >= 0 (e.g. seeds)."""
    try:
        items = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {value!r}") from None
    if not items or any(v < 0 for v in items):
        raise argparse.ArgumentTypeError("expected comma-separated whole numbers >= 0")
    return items
